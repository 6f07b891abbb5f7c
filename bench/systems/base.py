"""What every measured system provides, and what the bench gives it to start with.

A :class:`System` knows its programs, its version string and how to bring its tunnel
up between the two namespaces of :mod:`bench.netns`; ``start`` returns a
:class:`Tunnel` (the addresses to measure through, the interfaces, the processes
whose CPU counts) or raises :class:`~bench.procs.BenchError` with the reason, which
the report shows in place of figures.  Each system owns one tunnel subnet inside
100.64.0.0/10 and one UDP port, so all of them can be up at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.netns import SERVER_UNDERLAY, Topology
from bench.procs import BenchError, Proc, Processes, poll, run

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Tunnel:
    """A tunnel that is up: measure from ``client`` ns towards ``server_ip``."""

    server_ip: str
    client_ip: str
    server_dev: str
    client_dev: str
    procs: list[Proc] = field(default_factory=list)
    note: str = ""

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def dead(self) -> list[str]:
        return [f"{p.name} exited ({p.popen.returncode}): {p.log_tail()}"
                for p in self.procs if not p.alive()]


@dataclass
class Pki:
    """A CA, a server certificate for the server's underlay address, a client one."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, who: str) -> Path:
        return self.dir / f"bench-{who}.crt"

    def key(self, who: str) -> Path:
        return self.dir / f"bench-{who}.key"


@dataclass
class Context:
    """Everything a system needs to start: namespaces, a work directory, the registry."""

    topo: Topology
    work: Path
    procs: Processes
    limit: float  # seconds any process may live
    say: Callable[[str], None] = print
    python: str = sys.executable
    _pki: Pki | None = None

    def env(self, **extra: str) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return dict(os.environ, PYTHONPATH=f"{REPO}:{path}" if path else str(REPO), **extra)

    def dtlsvpn(self, *args: str) -> list[str]:
        return [self.python, "-m", "dtlsvpn", *args]

    def pki(self) -> Pki:
        """Made once per run with ``dtlsvpn gencert`` (ECDSA P-256)."""
        if self._pki is None:
            pki = Pki(self.work / "pki")
            run(self.dtlsvpn("gencert", "ca", "--name", "bench CA", "--out-dir", str(pki.dir)),
                env=self.env())
            run(self.dtlsvpn("gencert", "server", "--name", "bench-server", "--ip",
                             SERVER_UNDERLAY, "--ca-dir", str(pki.dir), "--out-dir",
                             str(pki.dir)), env=self.env())
            run(self.dtlsvpn("gencert", "client", "--name", "bench-client", "--ca-dir",
                             str(pki.dir), "--out-dir", str(pki.dir)), env=self.env())
            self._pki = pki
        return self._pki

    def subdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(mode=0o755, exist_ok=True)
        return path


class System:
    """One VPN (or the bare link) as the bench runs it."""

    name = ""  # the BENCH_SYSTEMS key
    label = ""  # as shown in the table
    programs: tuple[str, ...] = ()
    is_peer = True  # a competitor (not dtlsvpn itself, not the bare link)

    def version(self) -> str:
        raise NotImplementedError

    def start(self, ctx: Context) -> Tunnel:
        raise NotImplementedError

    def finish(self, ctx: Context) -> dict[str, Any]:
        """What the system itself reports after the rounds (counters), before it stops."""
        return {}


def first_line(argv: list[str]) -> str:
    """The first non-empty output line of a version command, or why there is none."""
    try:
        res = run(argv, timeout=10, check=False)
    except BenchError as exc:
        return str(exc)
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


def wait_for_log(proc: Proc, needle: str, timeout: float) -> bool:
    """Poll ``proc``'s log for ``needle``; False if it exits or time runs out first."""
    def seen() -> bool:
        if proc.log is not None and proc.log.exists() and needle in proc.log.read_text(
                errors="replace"):
            return True
        return not proc.alive()

    return poll(seen, timeout, 0.1) and proc.log is not None and needle in proc.log.read_text(
        errors="replace")


def require_alive(proc: Proc, what: str) -> None:
    if not proc.alive():
        raise BenchError(f"{what} exited ({proc.popen.returncode}): {proc.log_tail()}")


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path
