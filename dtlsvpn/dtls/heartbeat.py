"""Peer liveness over DTLS heartbeats (RFC 6520 §3, §5.2), sans-I/O.

Theory of operation
-------------------
One :class:`Liveness` per association, created when the handshake completes.
Time is always passed in (``now``, monotonic seconds); nothing here reads a
clock, touches a socket or sends anything: the machine hands out request
payloads and the caller wraps them in HeartbeatRequest records.

Inputs
    ``note_rx(now)``        any authenticated inbound record (application data,
                            a heartbeat of either kind, an alert): proof of life.
    ``on_response(p, now)`` the payload of an authenticated HeartbeatResponse;
                            ``True`` when it is the outstanding request's payload.
    ``handle_timer(now)``   expiries only (also done inside ``poll``).
    ``cancel()``            a handshake started: stop the request's timer.
Outputs
    ``poll(now, blocked=)`` a request payload to send now (new or a
                            retransmission, same bytes each time), else None.
    ``get_timer(blocked=)`` next deadline, or None.
    ``pop_changes()``       ``[False]`` when the peer went silent past
                            ``timeout``, ``[True]`` when it is heard again.
    ``alive``, ``in_flight``.

States: ALIVE (``alive`` true) and UNRESPONSIVE.  ALIVE → UNRESPONSIVE when
``now >= last_rx + timeout``, reported once per silence; UNRESPONSIVE → ALIVE
on the next ``note_rx``.  Independently of that, the request slot is IDLE,
IN_FLIGHT (sent, its retransmission timer running) or EXPIRED (timer ran out,
no response): EXPIRED requests are retransmitted with the same payload while
the peer stays silent, and forgotten as soon as anything authenticated
arrives.

Rules implemented
- RFC 6520 §5.2: a request is sent only after ``interval`` seconds without any
  authenticated inbound record; while data flows no request is sent at all.
- One keepalive per idle interval per pair.  The client runs the keepalive;
  a server (``defer_to_peer=True``) whose last proof of life was the peer's own
  HeartbeatRequest (``note_peer_request``, within ``interval`` before
  ``last_rx``) knows the peer's keepalive is running and that its answer keeps
  the peer fed, so its own request waits a second interval (``deferred_idle``:
  ``2 * interval``, never more than ``timeout - interval``).  Only if the
  peer's next request does not come does the server ask.  The silence bound
  (``timeout`` after ``last_rx``) is not touched, so dead-peer detection is
  exactly as before; only the server's first request of a silence goes out
  later (at 4, 5 and 7 s, before 8 s).  Only one side defers, so two machines
  cannot keep crossing their requests in step.
- RFC 6520 §3: there MUST NOT be more than one HeartbeatRequest in flight.
  This machine keeps at most one of its own, and ``blocked=True`` tells it
  that another request (a PMTU probe from :mod:`dtlsvpn.dtls.pmtu`) is in
  flight, so it must wait.  The caller arbitrates, liveness first::

      payload = liveness.poll(now, blocked=pmtu.in_flight)
      probe = None if payload else pmtu.poll(now, blocked=liveness.in_flight)
      timer = min of liveness.get_timer(blocked=pmtu.in_flight)
              and pmtu.get_timer(blocked=liveness.in_flight), ignoring None

- RFC 6520 §3: requests over UDP MUST be retransmitted with the DTLS flight
  scheme (RFC 6347 §4.2.4.1): ``retransmit`` initial (1 s), doubling.  The
  doubling is capped at ``interval`` rather than 60 s so that a silent peer is
  re-tried often and a returning one is seen within ``interval``.
- RFC 6520 §3: a request is in flight until its response arrives or its
  retransmission timer expires; a matching response MUST stop that timer
  (RFC 6520 §4), a response with any other payload MUST be discarded
  silently (RFC 6520 §4): ``on_response`` returns False and the caller drops
  and counts it.
- RFC 6520 §3: if a handshake starts while a request is in flight, its timer
  MUST be stopped: ``cancel()``; no request SHOULD be sent during a handshake
  (the caller does not poll then).
- RFC 6520 §3 says the connection SHOULD be terminated after as many silent
  retransmissions as a handshake flight allows; here the bound is a time,
  ``timeout`` seconds of silence (8 s by default),
  and terminating is the caller's policy on the ``False`` change.

Payloads are 16 bytes: a 4-byte big-endian counter and 12 bytes from the
injected ``random_bytes``, so two outstanding payloads never collide and a
response cannot be predicted.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from dtlsvpn.errors import UsageError

__all__ = ["PAYLOAD_LEN", "HeartbeatSettings", "Liveness", "deferred_idle"]

PAYLOAD_LEN = 16


@dataclass(frozen=True)
class HeartbeatSettings:
    """Liveness knobs, in seconds.

    ``interval``: idle time (nothing authenticated received) before a keepalive
    request is sent (RFC 6520 §5.2: SHOULD be configurable down to 1 s).
    ``retransmit``: first retransmission timeout, doubled per retry, capped at
    ``interval``.  ``timeout``: silence after which the peer is declared
    unresponsive; the default detects a dead peer within 8 s of its last record.
    """

    interval: float = 2.0
    retransmit: float = 1.0
    timeout: float = 8.0

    def __post_init__(self) -> None:
        if not self.interval > 0 or not self.retransmit > 0:
            raise UsageError("heartbeat interval and retransmit must be positive")
        if not self.timeout > self.interval:
            raise UsageError("heartbeat timeout must exceed the idle interval")


def deferred_idle(settings: HeartbeatSettings) -> float:
    """Idle time before our request when the peer runs its own keepalive: a second
    interval, but at least one interval before the silence bound (and never less
    than one interval)."""
    return max(settings.interval,
               min(2 * settings.interval, settings.timeout - settings.interval))


class Liveness:
    """One request in flight at a time; declares the peer unresponsive on silence."""

    __slots__ = (
        "_alive",
        "_changes",
        "_counter",
        "_deadline",
        "_defer",
        "_first_sent",
        "_in_flight",
        "_last_rx",
        "_payload",
        "_peer_request_at",
        "_random_bytes",
        "_rto",
        "settings",
    )

    def __init__(
        self,
        settings: HeartbeatSettings,
        now: float,
        *,
        random_bytes: Callable[[int], bytes],
        defer_to_peer: bool = False,
    ) -> None:
        self.settings = settings
        self._defer = defer_to_peer  # a server: the client runs the keepalive
        self._random_bytes = random_bytes
        self._last_rx = now  # the handshake that just completed is the first proof of life
        self._alive = True
        self._changes: list[bool] = []
        self._counter = 0
        self._payload: bytes | None = None  # the outstanding request (in flight or expired)
        self._in_flight = False
        self._first_sent = 0.0
        self._deadline = 0.0
        self._rto = settings.retransmit
        self._peer_request_at = float("-inf")  # the peer's last HeartbeatRequest

    # -- state ---------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def in_flight(self) -> bool:
        """True while our request's retransmission timer runs (RFC 6520 §3)."""
        return self._in_flight

    @property
    def last_rx(self) -> float:
        return self._last_rx

    def pop_changes(self) -> list[bool]:
        """Alive/unresponsive transitions since the last call, oldest first."""
        changes, self._changes = self._changes, []
        return changes

    # -- inputs --------------------------------------------------------------

    def note_rx(self, now: float) -> None:
        """Any authenticated inbound record arrived: the peer is alive."""
        if now > self._last_rx:
            self._last_rx = now
        if not self._alive:
            self._alive = True
            self._changes.append(True)

    def note_peer_request(self, now: float) -> None:
        """An authenticated HeartbeatRequest of the peer arrived (it keeps us alive)."""
        self.note_rx(now)
        self._peer_request_at = now

    def idle_deadline(self) -> float:
        """When a new request of ours is due (without any inbound record before it)."""
        settings = self.settings
        if self._defer and self._peer_request_at + settings.interval > self._last_rx:
            return self._last_rx + deferred_idle(settings)
        return self._last_rx + settings.interval

    def on_response(self, payload: bytes, now: float) -> bool:
        """A HeartbeatResponse's payload: True when it answers our request."""
        if self._payload is None or not hmac.compare_digest(payload, self._payload):
            return False  # RFC 6520 §4: unexpected payload, MUST be discarded silently
        # RFC 6520 §4: the expected payload MUST stop the retransmission timer.
        self._payload = None
        self._in_flight = False
        self.note_rx(now)
        return True

    def cancel(self) -> None:
        """Forget the outstanding request (RFC 6520 §3: a handshake started)."""
        self._payload = None
        self._in_flight = False

    def handle_timer(self, now: float) -> None:
        """Process expiries: the silence bound and the request's timer."""
        if self._alive and now >= self._last_rx + self.settings.timeout:
            self._alive = False
            self._changes.append(False)
        if self._in_flight and now >= self._deadline:
            # RFC 6520 §3: after its timer expires a request is no longer in flight.
            self._in_flight = False
        if self._payload is not None and not self._in_flight and self._last_rx >= self._first_sent:
            self._payload = None  # the peer spoke since we asked: no need to retry

    # -- outputs -------------------------------------------------------------

    def poll(self, now: float, *, blocked: bool = False) -> bytes | None:
        """The request payload to send now, or None.

        ``blocked``: another HeartbeatRequest (a PMTU probe) is in flight, so
        none may be sent (RFC 6520 §3).
        """
        self.handle_timer(now)
        if self._in_flight or blocked:
            return None
        if self._payload is not None:
            # Retransmission with the same payload (RFC 6347 §4.2.4.1 timer doubling).
            self._rto = min(self._rto * 2, self.settings.interval)
            self._deadline = now + self._rto
            self._in_flight = True
            return self._payload
        if now >= self.idle_deadline():
            self._counter = (self._counter + 1) & 0xFFFFFFFF
            self._payload = self._counter.to_bytes(4, "big") + self._random_bytes(PAYLOAD_LEN - 4)
            self._rto = self.settings.retransmit
            self._first_sent = now
            self._deadline = now + self._rto
            self._in_flight = True
            return self._payload
        return None

    def probe_now(self, now: float) -> bytes:
        """A request to send now whatever the interval: our path changed and the peer
        must hear an authenticated record at once.  The outstanding payload again if
        there is one (the same request, retransmitted); the caller makes sure no PMTU
        probe is in flight (RFC 6520 §3)."""
        if self._payload is None:
            self._counter = (self._counter + 1) & 0xFFFFFFFF
            self._payload = self._counter.to_bytes(4, "big") + self._random_bytes(PAYLOAD_LEN - 4)
            self._first_sent = now
        self._rto = self.settings.retransmit
        self._deadline = now + self._rto
        self._in_flight = True
        return self._payload

    def get_timer(self, *, blocked: bool = False) -> float | None:
        """The next time ``poll``/``handle_timer`` has something to do."""
        if self._in_flight:
            t = self._deadline
        elif blocked:
            t = None
        elif self._payload is not None and self._last_rx < self._first_sent:
            t = self._deadline  # already past: retransmit now
        else:
            t = self.idle_deadline()
        if self._alive:
            silence = self._last_rx + self.settings.timeout
            if t is None or silence < t:
                return silence
        return t
