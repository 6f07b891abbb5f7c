"""Suite-wide pytest configuration: markers, the CI no-skip rule and shared fixtures.

- Markers `interop`, `netns` and `sim` are registered here (and in pyproject.toml) and are
  added automatically to every test under tests/interop, tests/netns, tests/sim and
  tests/systemd, so `pytest -m "not netns and not systemd"` runs the fast layers alone.
- When the environment variable `CI` is set (to anything but "", "0", "false" or "no"), a
  skipped test or a skipped module is reported as a failure: `make test` installs every
  peer tool, so in CI a skip can only mean a broken set-up (testing.md: zero skips in CI).
  Expected failures (`xfail`) are not skips and are left alone.
- Fixtures: `pki` (session-wide throwaway PKI, see tests/pki.py), `procs` (a ProcessGroup
  whose processes are stopped by PID after the test; their logs are attached to a failing
  test's report), `udp_port` (a free port on 127.0.0.1) and `root` (skips unless euid 0).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.pki import Pki, make_pki
from tests.util import ProcessGroup, free_udp_port

# Property tests check behaviour, never speed: no per-example deadline on a shared,
# noisy 2-core machine (testing.md: never assert a time).
settings.register_profile(
    "dtlsvpn", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("dtlsvpn")

MARKERS = {
    "interop": "talks to real OpenSSL / GnuTLS processes (seconds)",
    "netns": "builds network namespaces and runs the real daemon (root, seconds to a minute)",
    "sim": "drives the sans-I/O core over the simulated link (deterministic)",
    "systemd": "boots a real systemd in private namespaces and tests the unit (root, ~15 s)",
}

_TESTS_DIR = Path(__file__).resolve().parent


def running_in_ci() -> bool:
    """True when the `CI` environment variable asks for the no-skip rule."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _ci_failure_text(longrepr: object) -> str:
    return (
        f"skipped while CI={os.environ.get('CI')!r}; CI must run every test "
        f"(run `make deps` / check the environment): {_skip_reason(longrepr)}"
    )


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            layer = item.path.resolve().relative_to(_TESTS_DIR).parts[0]
        except ValueError:
            continue
        if layer in MARKERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and running_in_ci():
        report.outcome = "failed"
        report.longrepr = _ci_failure_text(report.longrepr)
    if report.failed and report.when == "call":
        procs = getattr(item, "funcargs", {}).get("procs")
        if isinstance(procs, ProcessGroup) and procs.procs:
            report.sections.append(("processes", procs.describe()))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and running_in_ci():
        report.outcome = "failed"
        report.longrepr = _ci_failure_text(report.longrepr)
    return report


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway PKI (files and loaded objects) shared by the whole session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Start helper processes with `procs.start(argv)`; all are stopped by PID afterwards."""
    group = ProcessGroup(tmp_path / "procs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def udp_port() -> int:
    """A UDP port that was free on 127.0.0.1 a moment ago."""
    return free_udp_port()


@pytest.fixture
def root() -> None:
    """Skip (a failure in CI) unless running as root: namespaces and TUN need it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces / TUN): run `sudo make test`")
