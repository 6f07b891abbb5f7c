"""RekeyingClient: a client association that renews its keys make-before-break.

DTLS 1.2 renegotiation stays refused (RFC 5746 is only used to say so), so
fresh keys come from a new full handshake on a new :class:`Association` that
runs while the current one keeps carrying traffic:

    CURRENT ──rekey due──► CURRENT + PENDING (handshaking; data still on CURRENT)
            ◄── PENDING completes: it becomes CURRENT; the old one is PREVIOUS
                 and still opens records for ``grace`` seconds, then it is dropped.

The renewal never resumes with a ticket: its point is fresh ECDHE keys.  The
server side of the overlap lives in ``endpoint.py``.  Inbound datagrams are
routed by what they are: an unprotected (epoch 0) record goes to the pending
handshake; a protected one is tried with the newest established association
first and with the others when it does not authenticate there (a trial, so
the failure is not counted as a forgery).  Outbound data always uses CURRENT;
when the pending association completes, new packets use it at once.

Like the Association, this object takes datagrams and time and returns
datagrams, timers and events; it never touches a socket or a clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.dtls.events import Rekeyed as Rekeyed
from dtlsvpn.errors import UsageError

RETRY_AFTER = 30.0  # seconds before a failed renewal is tried again


def rekey_deadline(assoc: Association) -> float:
    """When ``assoc``'s rekey interval runs out (``inf`` without one or before completion)."""
    interval = assoc.config.rekey_interval
    if interval is None or assoc.established_at is None:
        return float("inf")
    return assoc.established_at + interval


def rekey_due(assoc: Association, now: float) -> bool:
    """Time for fresh keys: the interval passed or a record limit is near.

    Renewal is a new full handshake on a new association (renegotiation stays
    refused); the endpoint's overlap keeps the old one for records in flight.
    """
    if not assoc.is_established or assoc.established_at is None:
        return False
    if assoc.config.rekey_interval is not None and now >= rekey_deadline(assoc):
        return True
    return assoc.records_exhausted()


class RekeyingClient:
    """One logical client connection over a succession of associations."""

    def __init__(self, config: DtlsConfig, *, grace: float = 10.0, ip_header: int = 20,
                 peer: bytes = b"") -> None:
        if not config.is_client:
            raise UsageError("RekeyingClient is for clients")
        self.config = config
        self.grace = grace
        self.ip_header = ip_header
        self.peer = peer
        self.current = Association(config, peer, ip_header=ip_header)
        self.pending: Association | None = None
        self.previous: Association | None = None
        self._previous_until = 0.0
        self.generation = 0
        self._next_attempt = 0.0
        self._events: list[Event] = []

    # --- inputs ------------------------------------------------------------

    def connect(self, now: float, wall: float) -> None:
        self.current.connect(now, wall)

    def start_rekey(self, now: float, wall: float) -> None:
        """Begin a new full handshake now (normally ``handle_timer`` decides)."""
        if self.pending is not None or not self.current.is_established:
            return
        fresh = dataclasses.replace(self.config, resume_session=None)
        self.pending = Association(fresh, self.peer, ip_header=self.ip_header)
        self.pending.connect(now, wall)

    def receive_datagram(self, data: bytes, now: float, wall: float) -> list[bytes]:
        pending = self.pending
        if pending is None and self.previous is None:  # no renewal under way: one association
            return self.current.receive_datagram(data, now, wall)
        if pending is not None and len(data) >= 5 and data[3:5] == b"\x00\x00":
            out = pending.receive_datagram(data, now, wall)
        else:
            out = self._receive_protected(data, now, wall)
        self._after_input(now, wall)
        return out

    def receive_batch(self, datagrams: list[bytes], now: float, wall: float) -> list[bytes]:
        """``receive_datagram`` of each in order, their data in one list.  With no renewal
        under way every datagram is the current association's, and its header fast path
        takes runs of them in one call (``Association.receive_fast``)."""
        out: list[bytes] = []
        if self.pending is not None or self.previous is not None:
            for data in datagrams:
                out += self.receive_datagram(data, now, wall)
            return out
        cur = self.current  # receiving never starts or ends a renewal: it stays current
        i, n = 0, len(datagrams)
        while i < n:
            i = cur.receive_fast(datagrams, i, out, now)
            if i < n:
                out += cur.receive_datagram(datagrams[i], now, wall)
                i += 1
        return out

    def handle_timer(self, now: float, wall: float) -> None:
        for a in self._live():
            t = a.get_timer()
            if t is not None and now >= t:
                a.handle_timer(now)
        if self.previous is not None and now >= self._previous_until:
            self.previous = None  # RFC-less policy: the old keys are dropped after grace
        if self.pending is None and now >= self._next_attempt and rekey_due(self.current, now):
            self.start_rekey(now, wall)
        self._after_input(now, wall)

    def protect(self, payloads: Iterable[bytes]) -> list[bytes]:
        return self.current.protect(payloads)

    def close(self, now: float) -> None:
        for a in self._live():
            a.close(now)

    def probe_path(self, now: float) -> bool:
        """Our address changed: an authenticated heartbeat under the current keys at
        once, so that a server holding the connection ID we send follows us to the new
        address with no handshake (RFC 9146 §6).  False when that cannot work (no CID
        to send, no heartbeat allowed or one blocked): the caller resumes instead."""
        cur = self.current
        ids = cur.connection_ids
        if not cur.is_established or cur.is_closed or ids is None or not ids[1]:
            return False
        keepalive = cur._keepalive  # (association.py is at its 600-line limit)
        return keepalive is not None and keepalive.probe_now(now)

    def probe_liveness(self, now: float) -> bool:
        """One heartbeat request at once under the current keys (the TCP fallback asks
        whether UDP still answers, ``vpn/transport.py``).  False when none can go out
        (not established, or the peer did not allow heartbeats)."""
        cur = self.current
        if not cur.is_established or cur.is_closed:
            return False
        keepalive = cur._keepalive
        return keepalive is not None and keepalive.probe_now(now)

    # --- outputs -------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        for a in self._live():
            out += a.datagrams_to_send(now)
        return out

    def get_timer(self) -> float | None:
        deadlines = [t for a in self._live() if (t := a.get_timer()) is not None]
        cur = self.current
        if self.pending is None and cur.is_established:
            # The interval's end, or at once (after a failed attempt's back-off) when a
            # record budget ran out: protect() and receive cannot start a handshake.
            due = self._next_attempt if cur.records_exhausted() else rekey_deadline(cur)
            due = max(due, self._next_attempt)
            if due != float("inf"):  # no interval: only the record budget, checked on use
                deadlines.append(due)
        if self.previous is not None:
            deadlines.append(self._previous_until)
        return min(deadlines, default=None)

    def pop_events(self) -> list[Event]:
        """Events of the current association (and the switch itself).

        The pending association's completion shows up as ``Rekeyed``; its
        failure is reported as nothing worse than a retry on the next timer,
        since the current association still works.
        """
        ev, self._events = self._events, []
        return ev + self.current.pop_events()

    @property
    def is_established(self) -> bool:
        return self.current.is_established

    @property
    def needs_service(self) -> bool:
        """Any live association needs service, a switch is to be reported, or the
        current keys ran out of records (their renewal is due at once: ``get_timer``)."""
        cur, pending, previous = self.current, self.pending, self.previous
        if self._events or cur.needs_service:
            return True
        if pending is not None:
            return pending.needs_service or (previous is not None and previous.needs_service)
        if previous is not None and previous.needs_service:
            return True
        return cur.records_exhausted()  # (False unless established)

    @property
    def is_closed(self) -> bool:
        return self.current.is_closed

    # --- internals ------------------------------------------------------------

    def _live(self) -> list[Association]:
        return [a for a in (self.current, self.pending, self.previous) if a is not None]

    def _receive_protected(self, data: bytes, now: float, wall: float) -> list[bytes]:
        order = [a for a in (self.pending, self.current, self.previous)
                 if a is not None and (a.is_established or a is self.pending)]
        if len(order) <= 1:
            return self.current.receive_datagram(data, now, wall)
        if self.pending is not None and not self.pending.is_established:
            order.remove(self.pending)
            order.append(self.pending)  # its Finished: only after the working keys failed
        for a in order[:-1]:
            out = a.try_receive(data, now, wall)
            if out is not None:
                return out
        return order[-1].receive_datagram(data, now, wall)

    def _after_input(self, now: float, wall: float) -> None:
        pending = self.pending
        if pending is None:
            return
        events = pending.pop_events()
        if pending.is_established:
            self.previous = self.current
            self._previous_until = now + self.grace
            self.current = pending
            self.pending = None
            self.generation += 1
            self._events.append(Rekeyed(generation=self.generation))
            # The new association's own events (HandshakeCompleted, PMTU, ...) follow.
            self._events.extend(e for e in events if not isinstance(e, HandshakeCompleted))
        elif pending.is_closed:
            # The renewal failed; the current keys still work.  Try again later.
            self.pending = None
            self._next_attempt = now + RETRY_AFTER
            self._events.extend(e for e in events if not isinstance(e, AssociationClosed))
