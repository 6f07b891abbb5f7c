"""The tunnel's resolvers (daemon/dns.py): which back-end, which commands, the restore."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dtlsvpn.daemon.dns import Dns, split_entries


class Recorder:
    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.failing = failing

    def __call__(self, argv: Sequence[str], stdin: str | None) -> tuple[int, str]:
        self.calls.append((list(argv), stdin))
        return (1, "Failed to set DNS") if argv[0] in self.failing else (0, "")


def _which(*present: str) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_entries_split_into_servers_and_domains() -> None:
    assert split_entries(["100.64.0.1", "corp.test", "fd00::1"]) == (
        ["100.64.0.1", "fd00::1"], ["corp.test"])


def test_resolvectl_full_tunnel_routes_every_name_and_reverts() -> None:
    run = Recorder()
    dns = Dns("dvc0", ["100.64.0.1", "corp.test"], full_tunnel=True, run=run,
              which=_which("resolvectl", "resolvconf"))
    assert dns.apply() == "resolvectl"
    assert [argv for argv, _ in run.calls] == [["resolvectl", "dns", "dvc0", "100.64.0.1"],
                                               ["resolvectl", "domain", "dvc0", "~.",
                                                "corp.test"]]
    dns.restore()
    assert run.calls[-1][0] == ["resolvectl", "revert", "dvc0"]
    dns.restore()  # once only
    assert len(run.calls) == 3


def test_split_tunnel_sets_no_routing_domain() -> None:
    run = Recorder()
    dns = Dns("dvc0", ["100.64.0.1"], full_tunnel=False, run=run, which=_which("resolvectl"))
    assert dns.apply() == "resolvectl"
    assert [argv for argv, _ in run.calls] == [["resolvectl", "dns", "dvc0", "100.64.0.1"]]


def test_resolvectl_failing_falls_back_to_resolvconf() -> None:
    run = Recorder(failing=frozenset({"resolvectl"}))
    dns = Dns("dvc0", ["100.64.0.1", "fd00::1", "corp.test"], full_tunnel=True, run=run,
              which=_which("resolvectl", "resolvconf"))
    assert dns.apply() == "resolvconf"
    argv, stdin = run.calls[-1]
    assert argv == ["resolvconf", "-a", "dvc0", "-m", "0", "-x"]
    assert stdin == "nameserver 100.64.0.1\nnameserver fd00::1\nsearch corp.test\n"
    dns.restore()
    assert run.calls[-1][0] == ["resolvconf", "-d", "dvc0", "-f"]


def test_neither_back_end_is_one_error_and_no_restore() -> None:
    run = Recorder()
    dns = Dns("dvc0", ["100.64.0.1"], full_tunnel=True, run=run, which=_which())
    assert dns.apply() is None and run.calls == []
    dns.restore()
    assert run.calls == []


_SPAWNER = """
import signal, sys, time
from dtlsvpn.daemon.dns import run_command
caught = []
signal.signal(signal.SIGTERM, lambda *_: caught.append(1))  # (the daemon's loop does so)
print("ready", flush=True)
killed = spawned = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    status, _ = run_command(["true"], None)
    spawned += 1
    killed += status < 0
print(spawned, killed, len(caught), flush=True)
"""


def test_a_group_sigterm_during_the_spawn_does_not_kill_the_command() -> None:
    """A process in its own group spawns commands as the DNS restore does, while its
    whole group gets SIGTERM every millisecond (coreutils ``timeout`` sends it twice,
    the second while the restore is being spawned): no command may die of it, and the
    spawner itself still receives them.  Without the signals blocked around the spawn
    1 spawn in 6 to 1 in 120 died (the child is in the group until its ``setsid``)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _SPAWNER, "1.5"], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        limit = time.monotonic() + 20.0
        while proc.poll() is None and time.monotonic() < limit:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.001)
        spawned, killed, caught = map(int, proc.stdout.read().split())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert spawned > 50 and caught > 20, (spawned, caught)
    assert killed == 0, f"{killed} of {spawned} commands died of the group's SIGTERM"
