"""Keepalive: the heartbeat traffic of one established association (RFC 6520, RFC 8899).

One :class:`Keepalive` per association, created when the handshake
completes.  It answers the peer's HeartbeatRequests and arbitrates our own
requests between the two machines that want to send them: liveness
(:mod:`dtlsvpn.dtls.heartbeat`) and DPLPMTUD probes (:mod:`dtlsvpn.dtls.pmtu`).

Invariants:

* RFC 6520 §3: at most one HeartbeatRequest of ours is in flight.  Liveness
  goes first; each machine is told ``blocked`` while the other one's request
  is in flight, for sending and for its timer alike.
* RFC 6520 §2: requests go only to a peer that allowed them (the liveness
  machine exists only then, and the PMTU machine only beside it); requests
  of the peer are answered only when it negotiated the extension.
* RFC 6520 §4: a response carries an exact copy of the request's payload
  with 16 fresh bytes of padding; the peer gets at most
  ``HEARTBEAT_REPLY_RATE`` answers a second.  A response that matches
  neither machine's outstanding payload is dropped and counted.
* A lost PMTU probe never counts against liveness (RFC 8899 §3): only
  authenticated records the association saw (``last_rx``) prove life.
* RFC 8899 §5.1.1: confirmation of a found PLPMTU (SEARCH_COMPLETE) is
  suspended while we send no data ("DPLPMTUD ought to suspend reachability
  tests if this sending PL is acting as a receiver"): a confirmation probe goes
  out only when records other than our own heartbeats were sealed since the
  last probe (``_confirm_idle``).  An idle association costs its keepalive only;
  once data flows again the confirmation is due at the next service (at most a
  keepalive interval later), so a black hole is still found while it matters.
* A path challenge (:meth:`challenge`, the return-routability check of an RFC 9146
  move, ``dtls/endpoint.py``) is a HeartbeatRequest of its own: a fresh payload
  that goes only to the candidate address, never retransmitted by liveness (a copy
  of an answer from the old path must not validate the new one).  It takes the one
  request slot of RFC 6520 §3: the liveness request and a PMTU probe in flight are
  abandoned, and both machines wait while it is outstanding (at most
  ``retransmit`` seconds, the liveness machine's first retransmission timeout).
* Changes come out as events through ``emit``: ``HeartbeatAnswered`` per
  answered request, ``PeerUnresponsive``/``PeerAlive`` (which disable and
  re-enable probing, RFC 8899 §5.2), ``PathMtuChanged``.

The association calls :meth:`receive` for an authenticated heartbeat record of
an epoch above 0, and :meth:`service` after such a record, on its timer and
after a path hint; records go out through ``seal`` (one heartbeat record in
the current write epoch).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    Event,
    HeartbeatAnswered,
    PathMtuChanged,
    PeerAlive,
    PeerUnresponsive,
)
from dtlsvpn.dtls.heartbeat import Liveness
from dtlsvpn.dtls.pmtu import Dplpmtud, PmtuState
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import DecodeError
from dtlsvpn.wire.constants import HeartbeatMessageType
from dtlsvpn.wire.heartbeat import HeartbeatMessage, decode_heartbeat, encode_heartbeat

HEARTBEAT_REPLY_RATE = 64  # heartbeat requests answered per second, at most
CHALLENGE_LEN = 16  # payload bytes of a path challenge

_REQUEST = HeartbeatMessageType.heartbeat_request
_RESPONSE = HeartbeatMessageType.heartbeat_response


class Keepalive:
    """Answers heartbeats and runs liveness and PMTU discovery for one association."""

    __slots__ = (
        "_answer",
        "_challenge",
        "_config",
        "_emit",
        "_liveness",
        "_own_records",
        "_pmtu",
        "_probe_mark",
        "_probe_sent_at",
        "_seal",
        "_seal_record",
        "_sent",
        "_stats",
        "_window_count",
        "_window_start",
        "challenge_answered",
    )

    def __init__(
        self,
        config: DtlsConfig,
        stats: Stats,
        *,
        now: float,
        answer: bool,
        send_requests: bool,
        ip_header: int,
        record_overhead: int,
        seal: Callable[[bytes], None],
        emit: Callable[[Event], None],
    ) -> None:
        self._config = config
        self._stats = stats
        self._answer = answer  # the peer negotiated the extension: we answer its requests
        self._seal = self._seal_own
        self._seal_record = seal
        self._own_records = 0  # heartbeat records we sealed (all of stats.tx_records but data)
        self._probe_mark = stats.tx_records  # tx_records - _own_records at the last probe
        self._emit = emit
        self._sent: tuple[bytes, float] | None = None  # keepalive payload, first sent at
        self._probe_sent_at = 0.0
        self._window_start = float("-inf")  # rate limit of our answers
        self._window_count = 0
        self._liveness: Liveness | None = None
        self._pmtu: Dplpmtud | None = None
        self._challenge: tuple[bytes, float] | None = None  # path challenge: payload, until
        self.challenge_answered = False  # the outstanding path challenge was answered
        if send_requests:
            self._liveness = Liveness(config.heartbeat_settings, now,
                                      random_bytes=config.random_bytes,
                                      defer_to_peer=not config.is_client)
            if config.pmtu is not None:
                self._pmtu = pm = Dplpmtud(
                    config.pmtu, ip_header=ip_header, record_overhead=record_overhead,
                    now=now, random_bytes=config.random_bytes)
                emit(PathMtuChanged(plpmtu=pm.plpmtu, inner_mtu=pm.inner_mtu))

    def _seal_own(self, message: bytes) -> None:
        self._own_records += 1
        self._seal_record(message)

    def _confirm_idle(self, pm: Dplpmtud) -> bool:
        """RFC 8899 §5.1.1: no confirmation probe while we send no data (see above), but
        the one a new path asks for (``Dplpmtud.unconfirmed``)."""
        return (pm.state is PmtuState.SEARCH_COMPLETE and not pm.unconfirmed
                and self._stats.tx_records - self._own_records <= self._probe_mark)

    @property
    def plpmtu(self) -> int | None:
        return None if self._pmtu is None else self._pmtu.plpmtu

    @property
    def inner_mtu(self) -> int | None:
        return None if self._pmtu is None else self._pmtu.inner_mtu

    # --- inputs ---------------------------------------------------------------

    def receive(self, payload: bytes, now: float) -> bool:
        """An authenticated heartbeat record; True when it answered one of our requests."""
        stats = self._stats
        if not self._answer:
            stats.heartbeat_dropped += 1  # RFC 6520 §2: not negotiated
            return False
        try:
            # RFC 6520 §4: payload_length + 3 + 16 must fit the record (Heartbleed).
            msg = decode_heartbeat(payload)
        except DecodeError:
            stats.heartbeat_malformed += 1
            return False
        if msg.type == _REQUEST:
            self._answer_request(msg, now)
            return False
        if msg.type != _RESPONSE:
            stats.heartbeat_dropped += 1  # RFC 6520 §4: unknown types are discarded
            return False
        return self._match_response(msg.payload, now)

    def _answer_request(self, msg: HeartbeatMessage, now: float) -> None:
        if self._liveness is not None:
            self._liveness.note_peer_request(now)  # the peer runs its keepalive
        # A peer may probe, not flood: at most HEARTBEAT_REPLY_RATE answers a second.
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_count = 0
        if self._window_count >= HEARTBEAT_REPLY_RATE:
            self._stats.heartbeat_dropped += 1
            return
        self._window_count += 1
        # RFC 6520 §4: an exact copy of the payload, fresh padding of 16 bytes.
        self._seal(encode_heartbeat(_RESPONSE, msg.payload, self._config.random_bytes(16)))
        self._stats.heartbeat_answered += 1

    def _match_response(self, payload: bytes, now: float) -> bool:
        lv, pm = self._liveness, self._pmtu
        challenge = self._challenge
        if challenge is not None and hmac.compare_digest(payload, challenge[0]):
            self._challenge = None
            self.challenge_answered = True
            return True
        sent = self._sent
        if lv is not None and lv.on_response(payload, now):
            rtt = now - sent[1] if sent is not None and sent[0] == payload else 0.0
            self._sent = None
            self._emit(HeartbeatAnswered(rtt=rtt, probe_size=None))
            return True
        if pm is not None and (probe := pm.in_flight_probe) is not None and pm.on_response(
                payload, now):
            self._emit(HeartbeatAnswered(rtt=now - self._probe_sent_at, probe_size=probe.size))
            return True
        self._stats.heartbeat_unexpected += 1  # RFC 6520 §4: discard silently
        return False

    def path_hint(self, mtu: int, now: float, last_rx: float) -> None:
        """A kernel hint for the PMTU machine (see ``Association.path_hint``)."""
        if self._pmtu is None:
            return
        self._pmtu.path_hint(mtu, now)
        self.service(now, last_rx)

    def local_mtu(self, mtu: int, now: float, last_rx: float, *, new_path: bool) -> None:
        """The local MTU for the PMTU machine (see ``Association.local_mtu``)."""
        if self._pmtu is None:
            return
        self._pmtu.local_mtu(mtu, now, new_path=new_path)
        self.service(now, last_rx)

    def challenge(self, now: float) -> bytes | None:
        """A HeartbeatRequest message for a path challenge (see the module doc), with a
        payload no other request had; None when we may not send requests (RFC 6520 §2).
        A challenge still outstanding is replaced (its answer no longer counts)."""
        lv, pm = self._liveness, self._pmtu
        if lv is None:
            return None
        if pm is not None and pm.in_flight:
            pm.abandon_probe()
        lv.cancel()  # RFC 6520 §3: one request in flight; liveness asks again later
        self._sent = None
        rand = self._config.random_bytes
        payload = rand(CHALLENGE_LEN)
        self._challenge = (payload, now + self._config.heartbeat_settings.retransmit)
        self.challenge_answered = False
        self._own_records += 1
        self._stats.path_challenges += 1
        return encode_heartbeat(_REQUEST, payload, rand(16))

    def _challenging(self, now: float) -> bool:
        """A path challenge holds the request slot (it expires unanswered)."""
        challenge = self._challenge
        if challenge is None:
            return False
        if now < challenge[1]:
            return True
        self._challenge = None
        return False

    # --- the machines ---------------------------------------------------------

    def service(self, now: float, last_rx: float) -> None:
        """Run the liveness and PMTU machines: expiries, requests to send, changes.

        ``last_rx``: when the association last authenticated a record.
        """
        lv, pm = self._liveness, self._pmtu
        if lv is None:
            return
        if last_rx > lv.last_rx:
            lv.note_rx(last_rx)
        lv.handle_timer(now)
        if pm is not None:
            pm.handle_timer(now)
        self._report_liveness(lv, pm, now)
        if not self._challenging(now):
            self._send_request(lv, pm, now)
        if pm is not None:
            changes = pm.pop_changes()
            done = pm.state is PmtuState.SEARCH_COMPLETE
            for i, (plpmtu, inner) in enumerate(changes, 1):
                self._emit(PathMtuChanged(
                    plpmtu=plpmtu, inner_mtu=inner,
                    search_complete=done and i == len(changes) and plpmtu == pm.plpmtu))

    def _report_liveness(self, lv: Liveness, pm: Dplpmtud | None, now: float) -> None:
        for alive in lv.pop_changes():
            if alive:
                self._emit(PeerAlive())
                if pm is not None:
                    pm.enable(now)
            else:
                self._emit(PeerUnresponsive(silent_for=now - lv.last_rx))
                if pm is not None:
                    pm.disable()  # RFC 8899 §5.2: no probing an unreachable peer

    def _send_request(self, lv: Liveness, pm: Dplpmtud | None, now: float) -> None:
        """At most one request: a keepalive first, else a probe (RFC 6520 §3)."""
        rand = self._config.random_bytes
        payload = lv.poll(now, blocked=pm is not None and pm.in_flight)
        if payload is not None:
            if self._sent is None or self._sent[0] != payload:
                self._sent = (payload, now)
            self._seal(encode_heartbeat(_REQUEST, payload, rand(16)))
            self._stats.heartbeats_sent += 1
            return
        if pm is None:
            return
        probe = pm.poll(now, blocked=lv.in_flight or self._confirm_idle(pm))
        if probe is not None:
            self._probe_sent_at = now
            self._seal(encode_heartbeat(_REQUEST, probe.payload, rand(probe.padding)))
            self._stats.probes_sent += 1
            self._probe_mark = self._stats.tx_records - self._own_records

    def probe_now(self, now: float) -> bool:
        """One liveness request at once (the local address changed: with a connection
        ID the peer follows the authenticated record to our new address, RFC 9146 §6).
        A PMTU probe in flight went out on the old path: it is abandoned (neither
        acked nor lost), as two requests may not be in flight (RFC 6520 §3).  False when
        there is no liveness machine (the peer refused heartbeats)."""
        lv, pm = self._liveness, self._pmtu
        if lv is None:
            return False
        if pm is not None and pm.in_flight:
            pm.abandon_probe()
        self._challenge = None  # (a server's; a client probes, it does not challenge)
        payload = lv.probe_now(now)
        self._sent = (payload, now)
        self._seal(encode_heartbeat(_REQUEST, payload, self._config.random_bytes(16)))
        self._stats.heartbeats_sent += 1
        return True

    def get_timer(self, last_rx: float) -> float | None:
        """The earliest deadline of the two machines, each blocked by the other's request."""
        lv, pm = self._liveness, self._pmtu
        if lv is None:
            return None
        if last_rx > lv.last_rx:
            lv.note_rx(last_rx)
        challenge = self._challenge
        deadline = lv.get_timer(blocked=challenge is not None or (pm is not None
                                                                   and pm.in_flight))
        if pm is not None:
            t = pm.get_timer(blocked=challenge is not None or lv.in_flight
                             or self._confirm_idle(pm))
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        if challenge is not None and (deadline is None or challenge[1] < deadline):
            deadline = challenge[1]  # the slot frees: the machines may ask again
        return deadline
