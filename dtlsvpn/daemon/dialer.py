"""The client's dialling as a small sans-I/O machine: which state, what next, and when.

States and transitions (``deadline`` is the one time the machine waits for)::

    DOWN ──start──► DIALLING (deadline: now)
    DIALLING ──due──► DIAL: the shell resolves the Endpoint again, opens a socket and
                     sends the ClientHello, then reports ``dialled`` or ``lost``
    DIALLING ──dialled──► HANDSHAKING (deadline: now + DIAL_TIMEOUT)
    HANDSHAKING ──due──► TIMED_OUT: the shell closes the attempt and reports ``lost``
    HANDSHAKING ──established──► UP
    DIALLING | HANDSHAKING | UP ──lost──► BACKING_OFF (deadline: now + back-off)
    BACKING_OFF ──due──► DIAL (as from DIALLING)
    HANDSHAKING | UP | BACKING_OFF ──redial_now──► DIALLING (deadline: now; the network
                     changed under us, see ``netwatch.py``)
    any ──stop──► DOWN

Back-off: ``min(30 s, 2^n s) × uniform(0.5, 1)`` with n the number of losses since the
tunnel was last up for ``STABLE`` seconds (README: "Redials back off exponentially
with jitter, capped at 30 s").  A completed handshake alone does not reset n: a server
that accepts the handshake and then ends it at once (a peer it no longer knows, a
ticket it resumes and then refuses) is a refusal like an alert or a timeout.
``lost`` in BACKING_OFF changes nothing: an association that closes after
``PeerUnresponsive`` already took the peer down.  Nothing here reads a clock or
touches a socket; the randomness is the caller's ``random.Random``.
"""

from __future__ import annotations

import random
from enum import Enum

DIAL_TIMEOUT = 10.0  # seconds for a dial's name lookup and handshake to complete
STABLE = 10.0  # seconds up before a loss counts as the first again
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0


def backoff_delay(attempt: int, rng: random.Random) -> float:
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 16))
                 * rng.uniform(0.5, 1.0))


class DialState(Enum):
    DOWN = "down"
    DIALLING = "dialling"
    HANDSHAKING = "handshaking"
    UP = "up"
    BACKING_OFF = "backing off"


class DialAction(Enum):
    DIAL = "dial"
    TIMED_OUT = "timed out"


class Dialer:
    """One peer's dial attempts; ``deadline`` is when ``due`` must be called."""

    def __init__(self, rng: random.Random, *, timeout: float = DIAL_TIMEOUT) -> None:
        self.rng = rng
        self.timeout = timeout
        self.state = DialState.DOWN
        self.attempt = 0  # losses since the tunnel was last up for STABLE seconds
        self.deadline: float | None = None
        self.up_since: float | None = None

    def start(self, now: float) -> None:
        """Dial at once, with a fresh back-off (start-up, or a new [Peer] on reload)."""
        self.attempt = 0
        self.state = DialState.DIALLING
        self.deadline = now

    def due(self, now: float) -> DialAction | None:
        if self.deadline is None or now < self.deadline:
            return None
        self.deadline = None
        if self.state is DialState.HANDSHAKING:
            return DialAction.TIMED_OUT
        if self.state in (DialState.DIALLING, DialState.BACKING_OFF):
            self.state = DialState.DIALLING
            return DialAction.DIAL
        return None

    def redial_now(self, now: float) -> None:
        """The network changed: dial at once (from any state but DOWN), keeping the
        back-off count (a change is no proof that the server will answer)."""
        if self.state is DialState.DOWN:
            return
        self.state = DialState.DIALLING
        self.deadline = now

    def dialled(self, now: float) -> None:
        self.state = DialState.HANDSHAKING
        self.deadline = now + self.timeout

    def established(self, now: float) -> None:
        self.state = DialState.UP
        self.up_since = now
        self.deadline = None

    def lost(self, now: float) -> float | None:
        """The attempt or the tunnel is gone: the delay before the next dial, or None
        when a redial is already scheduled."""
        if self.state in (DialState.BACKING_OFF, DialState.DOWN):
            return None
        if (self.state is DialState.UP and self.up_since is not None
                and now - self.up_since >= STABLE):
            self.attempt = 0  # it was up for a while: a new outage, not a refusal
        delay = backoff_delay(self.attempt, self.rng)
        self.attempt += 1
        self.state = DialState.BACKING_OFF
        self.deadline = now + delay
        return delay

    def stop(self) -> None:
        self.state = DialState.DOWN
        self.deadline = None
