"""Process and network helpers for tests that run real programs (OpenSSL, GnuTLS, the daemon).

Rules these helpers enforce, so individual tests cannot forget them:
- every process runs under coreutils `timeout`, so a hung peer dies on its own;
- processes are stopped by their recorded PID, never by name (no pkill/killall);
- stdout and stderr go to files, so a chatty peer can never block on a full pipe and
  the logs survive for the failure message (`ProcessGroup.describe()`);
- waiting polls a condition with a deadline (`wait_until`), and so does checking that
  one stays true (`holds_for`); nothing sleeps for a fixed time.

`timeout` (without --foreground) makes itself the leader of a new process group, so the
recorded PID is also the group id: SIGTERM to it is forwarded to the whole group, and the
SIGKILL fallback goes to that group.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

#: Grace period `timeout` gives a process between SIGTERM and SIGKILL.
KILL_AFTER = 2.0


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port the OS considers free on `host` right now (bind to 0, read, close).

    Another process may take it before the caller binds it; interop tests run serially,
    and a peer that fails to bind shows up in its log.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def udp_port_bound(port: int, pid: int | str = "self") -> bool:
    """True when some UDP socket is bound to `port` in the network namespace of `pid`.

    Reads /proc/PID/net/udp and udp6, which show the namespace of that process, so this also
    works for a private namespace through the PID of any process inside it.
    """
    for table in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local = line.split()[1]  # "0100007F:1F90": address and port in hex
            if int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (returns True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def holds_for(predicate: Callable[[], bool], duration: float, interval: float = 0.05) -> bool:
    """Poll `predicate` for `duration` seconds: True if it held at every poll (and once
    more at the end), False as soon as it does not.  For "still true a while later"."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return predicate()


def require_tools(*names: str) -> None:
    """Skip the calling test (a failure in CI, see conftest) when a program is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        import pytest

        pytest.skip(f"missing programs: {', '.join(missing)} (`make deps` installs them)")


def run_in_private_netns(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped to run in a fresh network namespace whose loopback is up (needs root).

    Only loopback exists in there, so a peer that binds every address (gnutls-serv has no
    bind option) cannot be reached from outside; its client must run in the same namespace
    (one shell script as `argv`, or see `PrivateNetns`).
    """
    return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def bounded(argv: Sequence[str], timeout: float) -> list[str]:
    """`argv` under coreutils `timeout`: SIGTERM after `timeout` s, SIGKILL `KILL_AFTER` later."""
    return ["timeout", "--kill-after", f"{KILL_AFTER:g}s", f"{timeout:g}s", *argv]


def run_bounded(
    argv: Sequence[str], timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion under `timeout`, capturing text output."""
    return subprocess.run(
        bounded(argv, timeout),
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout + KILL_AFTER + 5,
    )


class Proc:
    """One started process: its PID, stdin pipe and log files."""

    def __init__(
        self, name: str, argv: list[str], popen: subprocess.Popen[bytes], stdout: Path,
        stderr: Path,
    ) -> None:
        self.name = name
        self.argv = argv
        self.popen = popen
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        """PID of the `timeout` wrapper, which is also the process group id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send(self, data: str | bytes) -> None:
        """Write to the process's stdin and flush."""
        assert self.popen.stdin is not None, f"{self.name}: stdin is not a pipe"
        self.popen.stdin.write(data.encode() if isinstance(data, str) else data)
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.close()

    def wait_for(self, needle: str, timeout: float = 10.0, stream: str = "stdout") -> bool:
        """Poll the log (`stdout`, `stderr` or `any`) until it contains `needle`.

        Returns False at the deadline, or as soon as the process has exited without it.
        """

        def text() -> str:
            if stream == "stdout":
                return self.stdout()
            if stream == "stderr":
                return self.stderr()
            return self.stdout() + self.stderr()

        def done() -> bool:
            return needle in text() or self.returncode is not None

        wait_until(done, timeout)
        return needle in text()

    def wait(self, timeout: float) -> int:
        """Wait for exit and return the exit status (124 means `timeout` fired)."""
        return self.popen.wait(timeout)

    def describe(self, tail: int = 4000) -> str:
        return (
            f"--- {self.name} (pid {self.pid}, rc {self.returncode}): {' '.join(self.argv)}\n"
            f"[stdout]\n{self.stdout()[-tail:]}\n[stderr]\n{self.stderr()[-tail:]}"
        )


class ProcessGroup:
    """Starts processes under `timeout`, logs them to `log_dir`, and stops them all by PID.

    Use as a context manager or call `stop_all()` from a fixture finaliser.
    """

    def __init__(self, log_dir: Path, default_timeout: float = 60.0) -> None:
        self.log_dir = log_dir
        self.default_timeout = default_timeout
        self.procs: list[Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin_pipe: bool = True,
    ) -> Proc:
        """Start `argv` under `timeout`; stdin is a pipe (kept open) unless `stdin_pipe=False`.

        Peers such as `openssl s_server` stop at stdin EOF, hence the open pipe by default.
        """
        name = name or f"{len(self.procs)}-{Path(argv[0]).name}"
        full = bounded(argv, self.default_timeout if timeout is None else timeout)
        stdout = self.log_dir / f"{name}.out"
        stderr = self.log_dir / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
            )
        proc = Proc(name, full, popen, stdout, stderr)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 3.0) -> int:
        """SIGTERM the process (by PID), then SIGKILL its group after `grace` seconds."""
        proc.close_stdin()
        leader = False
        with contextlib.suppress(ProcessLookupError):
            leader = os.getpgid(proc.pid) == proc.pid
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # The group we created for it: its children go too (a shell's
                # background jobs would otherwise outlive it).
                if leader:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    if leader:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(grace)
        if leader:
            # Leftover members of its group (children that ignored SIGTERM).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.popen.returncode

    def stop_all(self) -> None:
        """Stop every process started here, newest first."""
        for proc in reversed(self.procs):
            self.stop(proc)

    def describe(self) -> str:
        """Every process's command line, status and log tails, for assertion messages."""
        return "\n".join(proc.describe() for proc in self.procs)

    def private_netns(self, timeout: float | None = None) -> PrivateNetns:
        """A private network namespace (loopback up) that lives as long as this group."""
        return PrivateNetns(self, timeout)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


class PrivateNetns:
    """A network namespace with only loopback, held open by a sleeping process.

    Processes started through `start()` join it with `nsenter`, so a server and its client
    can be separate `Proc`s (with separate stdin and logs) and still see each other on
    127.0.0.1 while nothing outside can reach them. Needs root.
    """

    READY = "netns-ready"

    def __init__(self, group: ProcessGroup, timeout: float | None = None) -> None:
        self.group = group
        holder_argv = ["sh", "-c", f'echo "{self.READY} $$" && exec sleep infinity']
        self.holder = group.start(
            run_in_private_netns(holder_argv), name=f"netns-holder-{len(group.procs)}",
            timeout=timeout, stdin_pipe=False,
        )
        if not self.holder.wait_for(self.READY, timeout=10):
            raise RuntimeError(f"private namespace did not start\n{self.holder.describe()}")
        # The shell reports its own PID; it then execs sleep, which keeps that PID.
        line = next(ln for ln in self.holder.stdout().splitlines() if ln.startswith(self.READY))
        self.pid = int(line.split()[1])

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed to run inside this namespace."""
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv]

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin_pipe: bool = True,
    ) -> Proc:
        """Like `ProcessGroup.start`, inside this namespace."""
        return self.group.start(
            self.wrap(argv), name=name, timeout=timeout, env=env, stdin_pipe=stdin_pipe
        )

    def udp_port_bound(self, port: int) -> bool:
        return udp_port_bound(port, self.pid)

