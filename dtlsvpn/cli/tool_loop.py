"""The debug tools on the daemon's event loop: stdin as lines, stop signals, a clean exit.

``dtlsvpn dtls client|server`` (and ``dtlsvpn probe``, without stdin or signals) run on
:class:`dtlsvpn.daemon.loop.Loop`, like the daemon.  This module holds what an
interactive tool adds to it:

- :class:`CoreTimer`: one loop Timer that follows a sans-I/O object's ``get_timer()``
  (an Association or a ServerEndpoint) and calls its ``handle_timer(now)`` when due.
  The deadline is read again when the Timer fires: input handled earlier in the same
  iteration may have moved it.
- :class:`LineReader`: fd 0 (:func:`stdin_fd`) as a reader on the loop, cut into
  lines (each keeps its ``\\n``); a partial last line is delivered at EOF, and then the
  fd leaves the loop.  epoll refuses regular files and /dev/null (EPERM); such a stdin
  is always readable, so it is read one chunk per iteration from a timer instead.
- :func:`tool_loop`: a loop on which SIGINT and SIGTERM stop ``run()`` (the tool sees
  that it returned with no exit status set); SIGHUP keeps the disposition it had.  On
  the way out a termination signal whose default would kill the process is ignored, so
  that a second SIGTERM (coreutils ``timeout`` signals its child, then the child's
  process group) cannot turn the exit status into death by signal.

stdin stays in blocking mode (it may be shared with a terminal): it is read only when the
loop says it is readable, or when it is a file.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from dtlsvpn.daemon.loop import Loop, Timer, TimerCallback

CHUNK = 65536


class TimedCore(Protocol):
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


class CoreTimer:
    """``core.handle_timer(now)`` at ``core.get_timer()``, then ``after(now, wall)``."""

    def __init__(self, loop: Loop, core: TimedCore, after: TimerCallback) -> None:
        self.core = core
        self.after = after
        self._timer = loop.timer(self._on_due)

    def rearm(self) -> None:
        """Follow the core's deadline (call after every input to the core)."""
        self._timer.schedule(self.core.get_timer())

    def cancel(self) -> None:
        self._timer.cancel()

    def _on_due(self, now: float, wall: float) -> None:
        deadline = self.core.get_timer()
        if deadline is not None and deadline <= now:
            self.core.handle_timer(now)
        self.after(now, wall)


class LineReader:
    """``fd`` on ``loop``: ``on_lines(lines, now)`` per read, with ``eof`` set at the end.

    ``fd`` None is a reader already at its end (no stdin).
    """

    def __init__(self, loop: Loop, fd: int | None,
                 on_lines: Callable[[list[bytes], float], None]) -> None:
        self.loop = loop
        self.on_lines = on_lines
        self.fd = fd
        self.eof = self.fd is None
        self._buf = b""
        self._file_timer: Timer | None = None
        if self.fd is not None:
            self._attach(self.fd)

    def _attach(self, fd: int) -> None:
        try:
            self.loop.add(fd, self._on_readable)
        except PermissionError:  # a regular file or /dev/null
            self.loop.remove(fd)
            self._file_timer = self.loop.timer(self._on_file_due)
            self._file_timer.schedule(self.loop.now)

    def _on_readable(self, _mask: int, now: float, _wall: float) -> None:
        self._deliver(now)

    def _on_file_due(self, now: float, _wall: float) -> None:
        self._deliver(now)
        if not self.eof and self._file_timer is not None:
            # Just after ``now``: the next chunk waits for the next iteration.
            self._file_timer.schedule(math.nextafter(now, math.inf))

    def _deliver(self, now: float) -> None:
        lines = self._read()
        if self.eof and self.fd is not None:
            self.loop.remove(self.fd)
            self.fd = None
        self.on_lines(lines, now)

    def _read(self) -> list[bytes]:
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            rest, self._buf = self._buf, b""
            return [rest] if rest else []
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        return [line + b"\n" for line in lines]


def stdin_fd() -> int | None:
    """fd 0 as ``sys.stdin`` has it, or None when there is no usable stdin."""
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def tool_loop() -> Iterator[Loop]:
    """A :class:`Loop` for one tool run, on which SIGINT and SIGTERM stop ``run()``."""
    loop = Loop()
    installed = _install_stop_signals(loop)
    try:
        yield loop
    finally:
        loop.close(ignore_late_signals=installed)


def _install_stop_signals(loop: Loop) -> bool:
    hangup = signal.getsignal(signal.SIGHUP)
    try:
        loop.install_signals()
    except ValueError:  # not the main thread: no signal handling
        return False
    if hangup is not None:
        signal.signal(signal.SIGHUP, hangup)
    return True
