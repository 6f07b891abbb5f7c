"""Following the local network: when the path to the server changes, move at once.

A laptop's address changes under the daemon (the old address deleted, a new one added;
Wi-Fi → LTE: another interface, subnet and default route).  A connected UDP socket
keeps the source address it was given at ``connect`` even after that address is gone,
so nothing changes by itself: the sends fail (EADDRNOTAVAIL, ENETUNREACH, EINVAL...)
or leave from an address the server no longer hears.

Two signals say "look again": the kernel's link, address and route notifications
(``netlink.NetlinkMonitor``, a descriptor of the one loop) and a send that failed with
one of ``PATH_ERRNOS``.  A burst of them (an address change is several messages: the
address, its connected route, the default route) is debounced: the check runs
``DEBOUNCE`` after the last signal, and never later than ``DEBOUNCE_MAX`` after the
first, so it waits milliseconds, never seconds.

The check (``PathWatch.decide``) compares the source address the kernel would pick
towards the server now (``route_source``) with the one the socket has:

- no route: ``WAIT`` for the next change (the sends keep failing meanwhile);
- the tunnel is up and the source differs: ``REBIND``.  The client opens a fresh
  socket on the new route and at once sends an authenticated record (a heartbeat,
  ``RekeyingClient.probe_path``): with a connection ID (RFC 9146) the server follows
  the record to the new address with no handshake.  Without one the server cannot
  tell the new address is ours, so the client resumes with its ticket at once;
- the tunnel is not up (backing off, or mid-handshake) and the route's source changed
  or a route appeared: ``REDIAL`` now instead of waiting out the back-off;
- anything else: ``STAY``.

Nothing here reads a clock or touches a socket; ``Roamer`` is the loop glue.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from dtlsvpn.daemon.loop import Loop

log = logging.getLogger("dtlsvpn")

# Send errors that mean "the path from this socket is gone", not "the peer is gone".
PATH_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EINVAL, errno.EPERM,
                         errno.EHOSTUNREACH, errno.ENETDOWN})
DEBOUNCE = 0.02  # seconds of quiet after the last signal before the route is looked up
DEBOUNCE_MAX = 0.25  # ... but never later than this after the first signal of a burst
SEND_ERROR_QUIET = 1.0  # after a check, failed sends alone trigger no new one this long
FAMILY_GRACE = 1.0  # up, no route to the server's address: look again this much later


class Move(Enum):
    STAY = "stay"
    WAIT = "wait"
    REBIND = "rebind"
    REDIAL = "redial"


class PathWatch:
    """When to look at the route again, and what its answer means."""

    def __init__(self) -> None:
        self.due: float | None = None
        self._first: float | None = None
        self.source: str | None = None  # the route's source at the last check or dial
        self.signals = 0
        self.moves = 0
        self.waits = 0  # checks in a row that found no route

    def changed(self, now: float) -> float:
        """A signal (kernel notification, failed send): the time the check is due."""
        self.signals += 1
        if self._first is None:
            self._first = now
        self.due = min(now + DEBOUNCE, self._first + DEBOUNCE_MAX)
        return self.due

    def checked(self) -> None:
        self.due = None
        self._first = None

    def dialled(self, source: str | None) -> None:
        """A dial opened a socket with this source: the reference for the next check."""
        self.source = source

    def decide(self, route: str | None, bound: str | None, up: bool) -> Move:
        """``route``: the source the kernel picks now (None: no route); ``bound``: the
        socket's; ``up``: the tunnel passes traffic."""
        previous, self.source = self.source, route
        if route is None:
            self.waits += 1
            return Move.WAIT
        self.waits = 0
        if up:
            move = Move.REBIND if bound != route else Move.STAY
        else:
            move = Move.REDIAL if route != previous or (bound and bound != route) else Move.STAY
        if move is not Move.STAY:
            self.moves += 1
        return move


class Monitor(Protocol):
    """The kernel's notifications (``netlink.NetlinkMonitor``, or a fake)."""

    def fileno(self) -> int: ...
    def drain(self) -> int: ...
    def close(self) -> None: ...


class Roamer:
    """The monitor on the loop, the debounce Timer, and the check it calls."""

    def __init__(self, loop: Loop, monitor: Monitor | None,
                 check: Callable[[float], None]) -> None:
        self.loop = loop
        self.monitor = monitor
        self.watch = PathWatch()
        self._check = check
        self._timer = loop.timer(self._on_due)
        self._quiet_until = 0.0
        if monitor is not None:
            loop.add(monitor.fileno(), self._readable)

    def _readable(self, _mask: int, now: float, _wall: float) -> None:
        assert self.monitor is not None
        try:
            changes = self.monitor.drain()
        except OSError as exc:
            log.warning("network monitor failed (%s); following send errors only", exc)
            self.close()
            return
        if changes:
            self.signal(now)

    def signal(self, now: float) -> None:
        self._timer.schedule(self.watch.changed(now))

    def recheck(self, when: float) -> None:
        """Look again at ``when`` even if the kernel says nothing more."""
        self._timer.bring_forward(when)

    def send_failed(self, exc: OSError, now: float) -> None:
        """A failed send: a check, unless one is due or ran less than a second ago
        (while there is no route at all every send fails)."""
        if exc.errno in PATH_ERRNOS and self.watch.due is None and now >= self._quiet_until:
            self.signal(now)

    def _on_due(self, now: float, _wall: float) -> None:
        self.watch.checked()
        self._quiet_until = now + SEND_ERROR_QUIET
        self._check(now)

    def close(self) -> None:
        self._timer.cancel()
        if self.monitor is not None:
            self.loop.remove(self.monitor.fileno())
            self.monitor.close()
            self.monitor = None
