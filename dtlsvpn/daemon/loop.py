"""The daemon's event loop: epoll on raw non-blocking descriptors, one timer, signals.

Not asyncio (architecture.md rule 5): ``DatagramProtocol`` makes one ``recvfrom`` and
one callback per datagram and hides control messages.  Here each ready descriptor gets
one call per wake-up and drains itself in batches.

One iteration::

    deadline = owner.next_deadline()          # min over every timer, computed once
    events   = epoll.poll(deadline - now)
    now, wall = monotonic(), time()           # read once per iteration
    handlers for each ready fd (now, wall)
    owner.on_timer(now, wall) if the deadline passed
    owner.after_iteration(now)                # flush events and slow-path output
    signals: SIGTERM/SIGINT → stop, SIGHUP → owner.on_reload()

Signals arrive through ``signal.set_wakeup_fd`` on a self-pipe, so a signal wakes the
poll immediately and is handled between iterations, never inside a handler.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Protocol

Handler = Callable[[int, float, float], None]  # (epoll events, now, wall)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR


class LoopOwner(Protocol):
    def next_deadline(self) -> float | None: ...
    def on_timer(self, now: float, wall: float) -> None: ...
    def after_iteration(self, now: float) -> None: ...
    def on_reload(self, now: float) -> None: ...


class Loop:
    """epoll over registered fds, with a stop flag and signal dispatch."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._pending_signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, EPOLLIN)
        self._old_wakeup: int | None = None
        self._old_handlers: dict[int, object] = {}
        self.running = False
        self.now = time.monotonic()
        self.wall = time.time()

    def add(self, fd: int, handler: Handler, mask: int = EPOLLIN) -> None:
        self._handlers[fd] = handler
        self._ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    def install_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP are queued and handled between iterations."""
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending_signals.append(signum)

    def stop(self) -> None:
        self.running = False

    def run(self, owner: LoopOwner) -> None:
        self.running = True
        poll = self._ep.poll
        handlers = self._handlers
        wake = self._wake_r
        monotonic = time.monotonic
        walltime = time.time
        while self.running:
            deadline = owner.next_deadline()
            if deadline is None:
                timeout = -1.0
            else:
                timeout = max(0.0, deadline - self.now)
            try:
                events = poll(timeout)
            except InterruptedError:
                events = []
            now = self.now = monotonic()
            wall = self.wall = walltime()
            for fd, mask in events:
                if fd == wake:
                    self._drain_wakeup()
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    handler(mask, now, wall)
            if deadline is not None and now >= deadline:
                owner.on_timer(now, wall)
            owner.after_iteration(now)
            if self._pending_signals:
                self._dispatch_signals(owner, now)

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _dispatch_signals(self, owner: LoopOwner, now: float) -> None:
        pending, self._pending_signals = self._pending_signals, []
        for signum in pending:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.running = False
            elif signum == signal.SIGHUP:
                owner.on_reload(now)

    def close(self) -> None:
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
