"""Fixtures for the namespace tests (tests/conftest.py supplies `procs`, `pki`, `root`).

The `netns` marker is added to every test here by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.netns.harness import Daemon, Topology
from tests.util import ProcessGroup, require_tools


@pytest.fixture
def topo(root: None) -> Iterator[Topology]:
    require_tools("ip", "timeout")
    t = Topology()
    try:
        yield t
    finally:
        t.cleanup()


@pytest.fixture
def daemons(procs: ProcessGroup, tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:  # procs' own finaliser stops any left running, by PID
        d.close()
    # A real daemon contains what escapes a handler (daemon/loop.py) and goes on, so a
    # test could pass around a bug: its log line fails the test here instead.
    bugs = [f"{d.conf.name}: {line}" for d in started
            for line in d.proc.stderr().splitlines() if "internal error in" in line]
    if bugs:
        pytest.fail("a daemon contained an internal error:\n" + "\n".join(bugs[:5]))


@pytest.fixture
def run_daemon(
    procs: ProcessGroup, tmp_path: Path, daemons: list[Daemon]
) -> Callable[[str, Path, Path], Daemon]:
    def start(ns: str, conf: Path, status_socket: Path) -> Daemon:
        d = Daemon(procs, ns, conf, f"{conf.stem}-{len(daemons)}", status_socket, tmp_path)
        daemons.append(d)
        return d

    return start
