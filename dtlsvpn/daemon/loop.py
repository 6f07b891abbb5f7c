"""The one event loop: epoll on raw non-blocking descriptors, a deadline heap, signals.

Used by the daemon, ``dtlsvpn dtls client|server`` and ``dtlsvpn probe``.  Not asyncio
(architecture.md rule 5): ``DatagramProtocol`` makes one ``recvfrom`` and one callback
per datagram and hides control messages.  Here each ready descriptor gets one call per
wake-up and drains itself in batches.

One iteration (:meth:`Loop.run_once`)::

    timeout  = earliest live Timer (heap top) − now        never a scan over timers
    events   = epoll.poll(timeout)
    now, wall = clock(), wall_clock()                       read once per iteration
    handlers for each ready fd (mask, now, wall)
    due Timers fire in deadline order (callback(now, wall))
    deferred callbacks run once each (``defer``: slow-path flushes after a batch)
    signals: SIGTERM/SIGINT → stop, SIGHUP → the reload callback

Timers (:class:`Timer`) are handles in a heap with lazy invalidation: ``schedule``
pushes a new entry and bumps the handle's generation, so a stale entry is skipped when
it reaches the top; rescheduling to the same deadline pushes nothing, and
``bring_forward`` pushes only when the deadline comes sooner.  Work per
wake-up is therefore O(log n) in the number of timers that moved, never O(peers).

Errors (``contain=True``, the daemon's loop): an exception that escapes a handler, a
timer or a deferred callback is a bug, and one datagram or one peer must not take every
tunnel down with it (under systemd five crashes in two minutes stop the unit for good).
It is logged at ERROR with its traceback (the first, then at most one a minute with
the count since), counted (``on_error``: the daemon's ``internal_error`` drop), and the
loop goes on; what that call had not done yet for its batch is lost.  Tests and the
tools leave ``contain`` off, so there a bug still fails loudly.

Signals arrive through ``signal.set_wakeup_fd`` on a self-pipe, so a signal wakes the
poll immediately and is handled between iterations, never inside a handler.

The clocks are injectable (``clock``, ``wall_clock``) so tests can drive a loop on
fake time with :meth:`run_once` and a zero timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import select
import signal
import time
from collections.abc import Callable

Handler = Callable[[int, float, float], None]  # (epoll events, now, wall)
TimerCallback = Callable[[float, float], None]  # (now, wall)
ERROR_LOG_EVERY = 60.0  # seconds between two tracebacks of contained errors

log = logging.getLogger("dtlsvpn")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR


def _capped(timeout: float, max_wait: float) -> float:
    """The poll timeout (-1: none) capped at ``max_wait``."""
    return max_wait if timeout < 0.0 else min(timeout, max_wait)


class Timer:
    """A one-shot deadline owned by a :class:`Loop`; reschedule or cancel at will."""

    __slots__ = ("_callback", "_gen", "_loop", "when")

    def __init__(self, loop: Loop, callback: TimerCallback) -> None:
        self._loop = loop
        self._callback = callback
        self._gen = 0
        self.when: float | None = None

    def schedule(self, when: float | None) -> None:
        """Fire at ``when`` (monotonic seconds); None (or infinity) cancels."""
        if when is not None and not math.isfinite(when):
            when = None
        if when == self.when:
            return
        self._gen += 1
        self.when = when
        if when is not None:
            self._loop._push(when, self, self._gen)

    def cancel(self) -> None:
        self.schedule(None)

    def bring_forward(self, when: float | None) -> None:
        """Fire no later than ``when``: schedule it when it is sooner than the current
        deadline (or there is none); a later ``when`` leaves the sooner one, which then
        fires early, finds nothing due, and is re-armed by its owner.  For deadlines that
        mostly move later (an association's, after every datagram), so the heap does not
        fill with entries that are stale at once."""
        if when is not None and (self.when is None or when < self.when):
            self.schedule(when)

    def _fire(self, gen: int, now: float, wall: float) -> bool:
        if gen != self._gen or self.when is None:
            return False
        self.when = None
        self._callback(now, wall)
        return True


class Throttle:
    """When a repeated event may be logged: the first time, then once per ``every``
    seconds; ``since`` is how many were not logged since the last line."""

    __slots__ = ("every", "last", "since")

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.last: float | None = None
        self.since = 0

    def ready(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.every:
            self.since += 1
            return False
        self.last = now
        return True

    def take(self) -> int:
        """The count not logged (and reset it), for the line that goes out now."""
        n, self.since = self.since, 0
        return n


class Loop:
    """epoll over registered fds, a heap of timers, deferred callbacks, signals."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, contain: bool = False) -> None:
        self._ep = select.epoll()
        self._poll: Callable[[float], list[tuple[int, int]]] = self._ep.poll
        self._handlers: dict[int, Handler] = {}
        self._heap: list[tuple[float, int, Timer, int]] = []
        self._seq = 0
        self._deferred: dict[Callable[[float, float], None], None] = {}
        self._pending_signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, EPOLLIN)
        self._old_wakeup: int | None = None
        self._old_handlers: dict[int, object] = {}
        self._clock = clock
        self._wall_clock = wall_clock
        self.on_reload: Callable[[float], None] | None = None
        self.contain = contain
        self.on_error: Callable[[], None] | None = None  # a contained error was counted
        self.errors = 0
        self._error_log = Throttle(ERROR_LOG_EVERY)
        self.running = False
        self.now = clock()
        self.wall = wall_clock()

    # --- descriptors ---------------------------------------------------------------

    def add(self, fd: int, handler: Handler, mask: int = EPOLLIN) -> None:
        """Call ``handler`` when ``fd`` is ready; an fd epoll refuses leaves no trace."""
        self._ep.register(fd, mask)
        self._handlers[fd] = handler

    def modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    @property
    def epoll_fd(self) -> int:
        return self._ep.fileno()

    @property
    def poller(self) -> Callable[[float], list[tuple[int, int]]] | None:
        """What waits for the descriptors instead of ``epoll.poll`` (None: that): the
        compiled lane (``daemon/lane.py``), which must return what it would."""
        return None if self._poll == self._ep.poll else self._poll

    @poller.setter
    def poller(self, poll: Callable[[float], list[tuple[int, int]]] | None) -> None:
        self._poll = self._ep.poll if poll is None else poll

    @property
    def real_clock(self) -> bool:
        """The loop runs on the system's monotonic clock (not a test's fake one)."""
        return self._clock is time.monotonic

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    # --- time ----------------------------------------------------------------------

    def timer(self, callback: TimerCallback) -> Timer:
        """A new, unscheduled timer that calls ``callback(now, wall)`` when due."""
        return Timer(self, callback)

    def _push(self, when: float, timer: Timer, gen: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer, gen))

    def next_deadline(self) -> float | None:
        """The earliest live timer (stale heap entries are dropped on the way)."""
        heap = self._heap
        while heap:
            when, _, timer, gen = heap[0]
            if gen == timer._gen and timer.when is not None:
                return when
            heapq.heappop(heap)
        return None

    def defer(self, callback: Callable[[float, float], None]) -> None:
        """Run ``callback(now, wall)`` once at the end of this iteration (deduplicated)."""
        self._deferred[callback] = None

    def refresh_clock(self) -> float:
        self.now = self._clock()
        self.wall = self._wall_clock()
        return self.now

    # --- signals -------------------------------------------------------------------

    def install_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP are queued and handled between iterations."""
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending_signals.append(signum)

    # --- running -------------------------------------------------------------------

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        """Iterate until :meth:`stop` (or SIGTERM/SIGINT)."""
        self.running = True
        while self.running:
            self.run_once()

    def run_once(self, max_wait: float | None = None) -> int:
        """One iteration; ``max_wait`` caps the poll (0: don't block, for fake clocks).

        Returns how many handlers, timers and deferred callbacks ran (0: nothing was
        ready, so a fake clock may jump to :meth:`next_deadline`).

        Lean on purpose (every wake-up pays it, a lone packet's too): the heap top is
        checked inline, and the timers, deferred callbacks and signals are only
        entered when there is something for them."""
        heap = self._heap
        timeout = -1.0
        while heap:  # next_deadline(), inline
            when, _, timer, gen = heap[0]
            if gen == timer._gen and timer.when is not None:
                timeout = when - self.now
                if timeout < 0.0:
                    timeout = 0.0
                break
            heapq.heappop(heap)
        if max_wait is not None:  # fake clocks, the probe; the daemon's run() never
            timeout = _capped(timeout, max_wait)
        events = self._poll(timeout)  # EINTR is retried inside (PEP 475)
        now = self.now = self._clock()
        wall = self.wall = self._wall_clock()
        ran = self._handle(events, now, wall) if events else 0
        if heap and heap[0][0] <= now:
            ran += self._fire_timers(now, wall)
        if self._deferred:
            ran += self._run_deferred(now, wall)
        if self._pending_signals:
            self._dispatch_signals(now)
        return ran

    def _handle(self, events: list[tuple[int, int]], now: float, wall: float) -> int:
        handlers = self._handlers
        ran = 0
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is not None:
                try:
                    handler(mask, now, wall)
                except Exception:
                    self._failed(handler, now)
                ran += 1
            elif fd == self._wake_r:
                self._drain_wakeup()
        return ran

    def _run_deferred(self, now: float, wall: float) -> int:
        ran = 0
        while self._deferred:
            deferred, self._deferred = self._deferred, {}
            for callback in deferred:
                try:
                    callback(now, wall)
                except Exception:
                    self._failed(callback, now)
                ran += 1
        return ran

    def _fire_timers(self, now: float, wall: float) -> int:
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, _, timer, gen = heapq.heappop(heap)
            try:
                fired += timer._fire(gen, now, wall)
            except Exception:
                self._failed(timer._callback, now)
                fired += 1
        return fired

    def _failed(self, callback: object, now: float) -> None:
        """An exception escaped ``callback`` (called from an ``except`` block): re-raise
        it, or with ``contain`` log, count and go on (see the module docstring)."""
        if not self.contain:
            raise  # (the exception being handled)
        self.errors += 1
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error()
        if not self._error_log.ready(now):
            return
        since = self._error_log.take()
        log.exception("internal error in %s (the loop goes on%s)",
                      getattr(callback, "__qualname__", repr(callback)),
                      f"; {since} more since the last report" if since else "")

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _dispatch_signals(self, now: float) -> None:
        pending, self._pending_signals = self._pending_signals, []
        for signum in pending:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.running = False
            elif signum == signal.SIGHUP and self.on_reload is not None:
                self.on_reload(now)

    def close(self, *, ignore_late_signals: bool = False) -> None:
        """Release the descriptors and give the signals back.

        ``ignore_late_signals``: a signal whose disposition was the default (death) is
        ignored from now on instead, in one step, so one that arrives while the process
        exits (``timeout`` forwards a SIGTERM its group already got) cannot kill it.
        """
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        for sig, old in self._old_handlers.items():
            if ignore_late_signals and old is signal.SIG_DFL:
                old = signal.SIG_IGN
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
