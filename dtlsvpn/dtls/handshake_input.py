"""Handshake records in: from record payloads to whole messages for the machine.

One :class:`HandshakeInput` per association.  A handshake record's payload is
parsed into fragments (RFC 6347 §4.2.3), which ``Reassembler.sort`` sets
apart:

* fragments of messages already handed to the machine: an exact repeat means
  the peer re-sent its last flight (RFC 6347 §4.2.4) and the caller re-sends
  ours; anything else is stale and counted (security.md S10);
* fragments of current or future messages: reassembled and fed to the role's
  machine strictly in message_seq order.  Alerts the machine raises propagate
  to the association's one catch.

Once established, no new handshake is accepted (RFC 5746, security.md S17): a
HelloRequest or ClientHello gets a warning no_renegotiation and changes
nothing; any other new message is counted as unexpected.  The warning is not an
echo: at most one per record and one per ``RENEGOTIATION_ALERT_INTERVAL`` (a 16 KiB
record packs some 1360 empty ClientHello fragments, and a datagram several records);
the rest are counted (``renegotiation_ignored``).  A ChangeCipherSpec
goes to the machine only where its table expects one and the next keys are
installed (:meth:`receive_ccs`); that is where the read epoch moves.  Epoch-0 records
after the read epoch moved are only good for recognising repeats
(:meth:`receive_old`, security.md S8).
"""

from __future__ import annotations

from collections.abc import Callable

from dtlsvpn.dtls.epoch import ReadState
from dtlsvpn.dtls.machine import CCS_TYPE, Machine
from dtlsvpn.dtls.reassembly import Reassembler
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import DecodeError, UnexpectedMessage
from dtlsvpn.wire.constants import AlertDescription, AlertLevel, HandshakeType
from dtlsvpn.wire.handshake import HandshakeFragment, parse_handshake_fragments
from dtlsvpn.wire.record import Record

_RENEGOTIATION = (HandshakeType.hello_request, HandshakeType.client_hello)
RENEGOTIATION_ALERT_INTERVAL = 1.0  # seconds between two no_renegotiation warnings, at least


class HandshakeInput:
    """Sorts, reassembles and delivers the peer's handshake messages."""

    __slots__ = ("_client", "_machine", "_reneg_at", "_send_alert", "_stats", "reasm")

    def __init__(self, machine: Machine, stats: Stats, *, first_message_seq: int,
                 send_alert: Callable[[int, int], None]) -> None:
        self.reasm = Reassembler(first_message_seq)
        self._machine = machine
        self._stats = stats
        self._client = machine.config.is_client
        self._send_alert = send_alert  # (level, description): one alert record out
        self._reneg_at: float | None = None  # our last no_renegotiation warning

    def receive(self, payload: bytes, now: float, wall: float, *, established: bool) -> bool:
        """A handshake record of the current read epoch; True when it was a repeat."""
        sorted_ = self._sort(payload)
        if sorted_ is None:
            return False
        repeat, fresh, stale = sorted_
        stats = self._stats
        stats.stale_handshake += stale
        reasm = self.reasm
        for frag in fresh:
            if established:
                if frag.msg_type not in _RENEGOTIATION:
                    stats.unexpected += 1
                elif self._reneg_at is not None and (
                        now - self._reneg_at < RENEGOTIATION_ALERT_INTERVAL):
                    stats.renegotiation_ignored += 1  # (this record's, or too soon)
                else:
                    self._reneg_at = now
                    self._send_alert(AlertLevel.warning, AlertDescription.no_renegotiation)
                continue
            reason = reasm.add(frag)
            if reason is not None:
                setattr(stats, reason, getattr(stats, reason) + 1)
        # The flight timer keeps running until our next flight (or completion): if
        # the rest of the peer's flight is lost, our re-send makes it repeat its
        # flight, and a handshake that stalls half-way still times out.
        while (ready := reasm.pop_ready()) is not None:
            self._machine.handle(*ready, now, wall)
        return repeat

    def receive_ccs(self, payload: bytes, now: float, wall: float, read: ReadState, *,
                    established: bool) -> list[Record]:
        """A ChangeCipherSpec: the one place the read epoch moves (RFC 6347 §4.1,
        CVE-2014-0224).  Returns the next-epoch records held for it, to process now."""
        if payload != b"\x01":
            self._stats.malformed += 1  # RFC 5246 §7.1: the single byte 1
            return []
        m = self._machine
        if m.expects_ccs() and read.pending is not None:
            m.handle(CCS_TYPE, 0, b"", now, wall)
            held = read.advance()
            self.reasm.clear()  # nothing buffered from the old epoch may complete a message
            return held
        if not established and read.pending is not None:
            # security.md S5: keys negotiated but the CCS came too early.
            raise UnexpectedMessage("ChangeCipherSpec before the handshake allows it")
        # A CCS before any key exchange (S15, CVE-2017-7243) or a repeated one.
        self._stats.unexpected += 1
        return []

    def receive_old(self, payload: bytes) -> bool:
        """An epoch-0 handshake record after the read epoch moved: True for a repeat."""
        sorted_ = self._sort(payload)
        if sorted_ is None:
            return False
        repeat, fresh, stale = sorted_
        self._stats.unknown_epoch += stale + len(fresh)
        return repeat

    def _sort(self, payload: bytes) -> tuple[bool, list[HandshakeFragment], int] | None:
        try:
            frags = parse_handshake_fragments(payload)
        except DecodeError:
            self._stats.malformed += 1
            return None
        return self.reasm.sort(frags, client=self._client)
