"""Processes the bench starts, and the CPU time they use.

Invariants: every process is started through a :class:`Processes` registry, under
``timeout`` (so even a bench killed with SIGKILL leaves nothing running past its
bound), and is stopped by its own PID: SIGTERM, a grace period, then SIGKILL.
Nothing here signals a process it did not start.

CPU time is utime + stime from ``/proc/PID/stat`` summed over a process and its
descendants (ocserv forks its workers; ``timeout`` and ``ip netns exec`` sit above
the daemon), in seconds of ``SC_CLK_TCK``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A step of the bench could not be done (a peer that fails to start, a tool error)."""


def run(argv: Sequence[str], *, timeout: float = 30, check: bool = True,
        input_text: str | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion, bounded by ``timeout`` seconds."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                             input=input_text, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)}: no answer in {timeout:g} s") from None
    except FileNotFoundError:
        raise BenchError(f"{argv[0]}: not installed") from None
    if check and res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
        raise BenchError(f"{' '.join(argv)}: exit {res.returncode}: {' / '.join(detail)}")
    return res


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Wait until ``predicate()`` holds, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class Proc:
    """One started process: its PID, the name it is shown under, its log file."""

    name: str
    popen: subprocess.Popen[str]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 6) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " / ".join(line.strip() for line in text[-lines:])


@dataclass
class Processes:
    """The registry of everything the bench started; ``stop_all`` ends them by PID."""

    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], *, limit: float, ns: str | None = None,
              log: Path | None = None, env: dict[str, str] | None = None,
              input_text: str | None = None, stdout: int | IO[str] | None = None
              ) -> Proc:
        """Start ``argv`` (inside namespace ``ns``) under ``timeout limit``; ``input_text``
        is written to its standard input, which is then closed."""
        full = ["timeout", "--signal=TERM", "--kill-after=5", f"{limit:.0f}"]
        if ns is not None:
            full += ["ip", "netns", "exec", ns]
        full += list(argv)
        out: int | IO[str] | None = stdout
        handle = None
        if out is None:
            if log is not None:
                handle = log.open("w")
                out = handle
            else:
                out = subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                full, stdin=subprocess.DEVNULL if input_text is None else subprocess.PIPE,
                stdout=out, stderr=subprocess.DEVNULL if out == subprocess.PIPE
                else subprocess.STDOUT, text=True, env=env,
                start_new_session=True)
        except FileNotFoundError:
            raise BenchError(f"{argv[0]}: not installed") from None
        finally:
            if handle is not None:
                handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        if input_text is not None and popen.stdin is not None:
            try:
                popen.stdin.write(input_text)
                popen.stdin.close()
            except BrokenPipeError:
                pass
        return proc

    def stop(self, proc: Proc, grace: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status.

        The whole tree is gone on return: a descendant that outlives the top process
        (re-parented, still exiting) is waited for, then killed, by its PID."""
        tree = descendants(proc.pid) if proc.alive() else []
        if proc.alive():
            _signal(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                for pid in reversed(descendants(proc.pid)):
                    _signal(pid, signal.SIGKILL)
                _signal(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(grace)
        _reap_stragglers(tree[1:], grace)
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _reap_stragglers(pids: list[int], grace: float) -> None:
    """Wait up to ``grace`` for ``pids`` to exit, then SIGKILL the ones still running."""
    deadline = time.monotonic() + grace
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if _running(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2:].split()


def _parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                out[int(entry)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime (seconds) of each live process in the trees rooted at ``pids``."""
    out: dict[int, float] = {}
    for root in pids:
        for pid in descendants(root):
            fields = _stat_fields(pid)
            if fields is not None:
                out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), idle and
    iowait excluded."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`cpu_seconds` samples (processes new since count whole)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())
