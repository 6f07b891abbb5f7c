"""Association: the one public object of the sans-I/O DTLS core.

Inputs: ``connect``, ``receive_datagram``, ``handle_timer``, ``protect``,
``close``.  Outputs: ``datagrams_to_send``, ``get_timer``, ``pop_events`` and
the application data returned by ``receive_datagram``.  Time comes in as
arguments; nothing here touches a socket, a clock or a thread.

Record layer rules (RFC 6347 §4.1):

* Fast path: an application_data record in the current read epoch of an
  established association is replay-checked, opened and returned; nothing
  else happens per packet.
* Everything else takes the slow path.  Records that do not parse, fail
  authentication, are replays, or belong to an epoch without keys are dropped
  silently and counted (§4.1.2.7); they never raise and never close the
  association.  The replay window moves only after authentication
  (§4.1.2.6, CVE-2016-2181).
* Records of the next epoch that arrive before the peer's CCS are kept (at
  most ``MAX_FUTURE_RECORDS``) and replayed after it (security.md S9).
* After the read epoch moved on, records of the previous epoch are used only
  to recognise a repeated flight of the peer (§4.2.4), never to deliver data
  or alerts (security.md S8).

Handshake messages are reassembled (``reassembly.py``) and fed in order to
the role's machine (``client.py`` / ``server.py``).  A message older than
``next_receive_seq`` that repeats what we received byte for byte means the
peer is re-sending its last flight: we re-send ours (rate-limited).  Any
other old message is dropped and counted (security.md S10).

Alerts raised by the machines are caught in exactly one place
(``_fail``): the fatal alert goes out when possible, the association moves
to closed and ``AssociationClosed(local=True)`` is queued.  After close,
nothing more is processed (security.md S14).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.suites import AeadKind
from dtlsvpn.dtls.client import ClientMachine
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PathMtuChanged,
    PeerAddressChanged,
    PeerAlive,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.flight import (
    SHRINK_AFTER,
    SMALL_MTU,
    FlightState,
    FlightTimer,
    OutMessage,
    pack_flight,
)
from dtlsvpn.dtls.heartbeat import Liveness
from dtlsvpn.dtls.machine import CCS_TYPE, Machine
from dtlsvpn.dtls.pmtu import Dplpmtud
from dtlsvpn.dtls.reassembly import Reassembler
from dtlsvpn.dtls.replay import ReplayWindow
from dtlsvpn.dtls.server import ServerMachine
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import Alert, DecodeError, DecodeErrorAlert, UnexpectedMessage, UsageError
from dtlsvpn.wire.alert import decode_alert, encode_alert
from dtlsvpn.wire.constants import (
    DTLS_1_0,
    DTLS_1_2,
    MAX_PLAINTEXT,
    MAX_SEQ,
    RECORD_HEADER_LEN,
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
    HeartbeatMessageType,
)
from dtlsvpn.wire.handshake import HandshakeFragment, parse_handshake_fragments
from dtlsvpn.wire.heartbeat import decode_heartbeat, encode_heartbeat
from dtlsvpn.wire.record import RECORD_HEADER, Record, parse_datagram

MAX_FUTURE_RECORDS = 16  # next-epoch records kept until the CCS arrives
# Records per key before a rekey is due.  AES-GCM: far below the 2^24.5 full-size
# records TLS 1.3 (RFC 8446 §5.5) allows per key; ChaCha20-Poly1305 has more room;
# both stay far from the 2^48 sequence numbers of RFC 6347 §4.1.
REKEY_RECORDS = {AeadKind.AES_GCM: 2**23, AeadKind.CHACHA20_POLY1305: 2**36}
HEARTBEAT_REPLY_RATE = 64  # heartbeat requests answered per second, at most
REPEAT_RESEND_GAP = 0.125  # seconds between two re-sends triggered by the peer's repeats

_CT_APP = int(ContentType.application_data)
_CT_HANDSHAKE = int(ContentType.handshake)
_CT_CCS = int(ContentType.change_cipher_spec)
_CT_ALERT = int(ContentType.alert)
_CT_HEARTBEAT = int(ContentType.heartbeat)
_CT_CID = int(ContentType.tls12_cid)
_CID_PREFIX = struct.Struct("!BHQ")  # RFC 9146 §4: type, version, epoch||seq, then the CID


def _split_inner(inner: bytes) -> tuple[int, bytes] | None:
    """RFC 9146 §4 DTLSInnerPlaintext -> (real type, content); None if all padding."""
    stripped = inner.rstrip(b"\x00")
    if not stripped:
        return None
    return stripped[-1], stripped[:-1]


@dataclass(slots=True)
class _WriteEpoch:
    protection: RecordProtection | None
    next_seq: int = 0


class Association:
    """One DTLS association with one peer (either role)."""

    def __init__(
        self,
        config: DtlsConfig,
        peer: bytes = b"",
        *,
        first_message_seq: int = 0,
        first_record_seq: int = 0,
        ip_header: int = 20,
    ) -> None:
        self.config = config
        self.peer = peer
        self.stats = Stats()
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._established = False
        self._closed = False
        self._connected = False
        self._machine: Machine = (
            ClientMachine(config, self) if config.is_client else ServerMachine(config, self)
        )
        self._reasm = Reassembler(first_message_seq)
        self._received: dict[int, tuple[int, bytes]] = {}
        self._write: dict[int, _WriteEpoch] = {0: _WriteEpoch(None, first_record_seq)}
        self._write_epoch = 0
        self._read_epoch = 0
        self._read_protection: RecordProtection | None = None
        self._pending_read: RecordProtection | None = None
        self._window = ReplayWindow()
        self._future: list[Record] = []
        self._flight: list[OutMessage] = []
        self._flight_state = FlightState.PREPARING
        self._timer = FlightTimer(config.initial_timeout, config.max_timeout)
        self._last_repeat_resend = float("-inf")
        self._bad_mac_in_handshake = 0
        self.handshake_result: HandshakeCompleted | None = None
        # Heartbeats (RFC 6520) and DPLPMTUD (RFC 8899), once the handshake is done.
        self.ip_header = ip_header  # outer IP header size: 20 (IPv4) or 40 (IPv6)
        self._last_rx = 0.0  # last authenticated record; the fast path only stores this
        self._liveness: Liveness | None = None
        self._pmtu: Dplpmtud | None = None
        self._hb_sent: tuple[bytes, float] | None = None  # keepalive payload, sent at
        self._probe_sent_at = 0.0
        self._hb_pending = False  # a heartbeat record arrived: service the machines
        self._hb_window_start = float("-inf")  # rate limit of our heartbeat answers
        self._hb_window_count = 0
        # RFC 9146 connection IDs, set when the keys are installed.
        self._recv_cid = b""  # on records the peer sends us (epoch > 0)
        self._send_cid = b""  # on records we send (epoch > 0)
        self._fast_type = _CT_APP  # the outer type of protected data records
        self.advanced = False  # the last datagram authenticated a newer record (RFC 9146 §6)
        self.established_at: float | None = None
        self._peer_used_keys = False  # data or a heartbeat arrived after completion

    # --- public state -------------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self._established and not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def client_random(self) -> bytes:
        return self._machine.client_random

    @property
    def plpmtu(self) -> int | None:
        """The confirmed PLPMTU (outer IP packet size), when PMTU discovery runs."""
        return None if self._pmtu is None else self._pmtu.plpmtu

    @property
    def inner_mtu(self) -> int | None:
        """The largest inner packet one record carries at the current PLPMTU."""
        return None if self._pmtu is None else self._pmtu.inner_mtu

    @property
    def record_overhead(self) -> int:
        """Bytes a record adds to its payload in the current write epoch."""
        return RECORD_HEADER_LEN + self._record_overhead(self._write_epoch)

    # --- inputs ---------------------------------------------------------------

    def connect(self, now: float, wall: float) -> None:
        """Start the client handshake (flight 1)."""
        if not self.config.is_client:
            raise UsageError("connect() is for clients; servers use ServerEndpoint")
        if self._connected:
            raise UsageError("connect() called twice")
        self._connected = True
        assert isinstance(self._machine, ClientMachine)
        machine = self._machine
        self._guard(lambda: machine.start(now, wall), now)

    def receive_datagram(self, data: bytes, now: float, wall: float) -> list[bytes]:
        """Process one datagram; return the application data it carried, in order."""
        if self._closed:
            self.stats.after_close += 1
            return []
        recv_cid = self._recv_cid
        # The CID length is known from the hellos on, before any key is installed.
        records, garbage = parse_datagram(data, len(self._machine.own_cid or b""))
        stats = self.stats
        if garbage:
            stats.malformed += 1
        stats.rx_bytes += len(data)
        out: list[bytes] = []
        repeat = False
        epoch_before, top_before = self._read_epoch, self._window.top
        for rec in records:
            stats.rx_records += 1
            if (
                rec.content_type == self._fast_type
                and self._established
                and rec.epoch == self._read_epoch
            ):
                # Fast path: RFC 6347 §4.1.2.6 check, open, then commit.
                seq = rec.seq
                if not self._window.check(seq):
                    stats.replay += 1
                    continue
                prot = self._read_protection
                assert prot is not None
                if not recv_cid:
                    plain = prot.open(rec.epoch << 48 | seq, _CT_APP, rec.fragment)
                    if plain is None:
                        stats.bad_mac += 1
                        continue
                    self._window.commit(seq)
                    self._last_rx = now
                    out.append(plain)
                    continue
                if rec.cid != recv_cid:
                    stats.bad_cid += 1
                    continue
                inner = prot.open_cid(rec.epoch << 48 | seq, recv_cid, rec.fragment)
                if inner is None:
                    stats.bad_mac += 1
                    continue
                split = _split_inner(inner)
                if split is None:
                    stats.malformed += 1
                    continue
                self._window.commit(seq)
                self._last_rx = now
                if split[0] == _CT_APP:
                    out.append(split[1])
                else:
                    repeat |= self._dispatch(split[0], rec.epoch, split[1], now, wall, out)
                continue
            repeat |= self._slow_record(rec, now, wall, out)
            if self._closed:
                break
        self.advanced = (self._read_epoch > epoch_before
                         or (self._read_epoch == epoch_before and self._window.top > top_before))
        if out and self._established:
            self._peer_used_keys = True
        if repeat and not self._closed:
            self._on_peer_repeat(now)
        if self._hb_pending and not self._closed:
            self._hb_pending = False
            self._service_heartbeats(now)
        return out

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        if self._timer.expired(now):
            self._on_flight_timer_expired(now)
        if self._liveness is not None and not self._closed:
            self._service_heartbeats(now)

    @property
    def peer_switched(self) -> bool:
        """The peer sent data or a heartbeat under these keys after the handshake.

        (A repeated Finished does not count: it only says our last flight was lost.)

        During a make-before-break rekey this says the peer has the new keys in
        use, so it is safe to send with them and to retire the old ones.
        """
        return self.is_established and self._peer_used_keys

    def rekey_due(self, now: float) -> bool:
        """Time for fresh keys: the interval passed or a record limit is near.

        Renewal is a new full handshake on a new association (renegotiation
        stays refused); see ``dtls/rekey.py`` and the endpoint's overlap.
        """
        if not self.is_established or self.established_at is None:
            return False
        c = self.config
        if c.rekey_interval is not None and now >= self.rekey_deadline():
            return True
        return self.records_exhausted()

    def rekey_deadline(self) -> float:
        """When the rekey interval runs out (``inf`` without one or before completion)."""
        interval = self.config.rekey_interval
        if interval is None or self.established_at is None:
            return float("inf")
        return self.established_at + interval

    def records_exhausted(self) -> bool:
        """A direction used up its record budget for these keys (see REKEY_RECORDS)."""
        if not self.is_established:
            return False
        c = self.config
        prot = self._read_protection
        assert prot is not None
        limit = c.rekey_records or REKEY_RECORDS[prot.suite.aead]
        return (self._write[self._write_epoch].next_seq >= limit
                or self._window.top >= limit)

    def path_hint(self, mtu: int, now: float) -> None:
        """A kernel hint: IP_MTU, an ICMP Packet Too Big, or EMSGSIZE at ``mtu``.

        Never trusted above what a probe confirmed (RFC 8899 §4.6.2); the
        shell must only pass ICMP errors that quote one of our datagrams.
        """
        if self._pmtu is None or self._closed:
            return
        self._pmtu.path_hint(mtu, now)
        self._service_heartbeats(now)

    def protect(self, payloads: Iterable[bytes]) -> list[bytes]:
        """Seal each payload as one application_data record in its own datagram."""
        if not self.is_established:
            raise UsageError("protect() before the handshake completed or after close")
        ws = self._write[self._write_epoch]
        prot = ws.protection
        assert prot is not None
        epoch_bits = self._write_epoch << 48
        pack = RECORD_HEADER.pack
        cid = self._send_cid
        out: list[bytes] = []
        for payload in payloads:
            if len(payload) > MAX_PLAINTEXT:
                raise UsageError(f"payload of {len(payload)} bytes exceeds 2^14")
            seq = ws.next_seq
            if seq > MAX_SEQ:
                raise UsageError("sequence numbers exhausted: rekey required")
            ws.next_seq = seq + 1
            if cid:
                # RFC 9146 §4: DTLSInnerPlaintext = content || real type (no padding).
                frag = prot.seal_cid(epoch_bits | seq, cid, payload + b"\x17")
                out.append(_CID_PREFIX.pack(_CT_CID, DTLS_1_2, epoch_bits | seq) + cid
                           + len(frag).to_bytes(2, "big") + frag)
                continue
            frag = prot.seal(epoch_bits | seq, _CT_APP, payload)
            out.append(pack(_CT_APP, DTLS_1_2, epoch_bits | seq, len(frag)) + frag)
        self.stats.tx_records += len(out)
        return out

    def close(self, now: float) -> None:
        """Send close_notify (RFC 5246 §7.2.1) and stop."""
        if self._closed:
            return
        self._send_alert(AlertLevel.warning, AlertDescription.close_notify)
        self._close(local=True, reason="closed", alert=AlertDescription.close_notify)

    # --- outputs --------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        for d in out:
            self.stats.tx_bytes += len(d)
        return out

    def get_timer(self) -> float | None:
        if self._closed:
            return None
        deadline = self._timer.deadline
        lv, pm = self._liveness, self._pmtu
        if lv is not None:
            if self._last_rx > lv.last_rx:
                lv.note_rx(self._last_rx)
            for t in (lv.get_timer(blocked=pm is not None and pm.in_flight),
                      None if pm is None else pm.get_timer(blocked=lv.in_flight)):
                if t is not None and (deadline is None or t < deadline):
                    deadline = t
        return deadline

    def pop_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    # --- Link interface for the machines -------------------------------------

    def send_flight(self, messages: list[OutMessage], now: float, *, expect_reply: bool) -> None:
        self._flight = messages
        self._transmit_flight(self.config.mtu)
        if expect_reply:
            self._flight_state = FlightState.WAITING
            self._timer.start(now)
        else:
            self._flight_state = FlightState.FINISHED
            self._timer.stop()

    def install_keys(self, write: RecordProtection, read: RecordProtection) -> None:
        self._write[self._write_epoch + 1] = _WriteEpoch(write, 0)
        self._pending_read = read
        m = self._machine
        if m.own_cid is not None and m.peer_cid is not None:
            self._recv_cid = m.own_cid
            self._send_cid = m.peer_cid
            self._fast_type = _CT_CID if m.own_cid else _CT_APP

    @property
    def connection_ids(self) -> tuple[bytes, bytes] | None:
        """(CID the peer sends us, CID we send) once RFC 9146 was negotiated."""
        m = self._machine
        if m.own_cid is None or m.peer_cid is None:
            return None
        return m.own_cid, m.peer_cid

    def note_address_change(self, old: object, new: object) -> None:
        """The endpoint moved this association to a new peer address (RFC 9146 §6)."""
        self._events.append(PeerAddressChanged(old=old, new=new))

    def complete(self, event: HandshakeCompleted, now: float) -> None:
        self._established = True
        self.handshake_result = event
        if self._flight_state is FlightState.WAITING:
            self._flight_state = FlightState.FINISHED
        self._timer.stop()
        self._reasm.clear()
        self._future.clear()
        self._events.append(event)
        self._last_rx = now
        self.established_at = now
        if event.heartbeat:
            c = self.config
            self._liveness = Liveness(c.heartbeat_settings, now, random_bytes=c.random_bytes)
            if c.pmtu is not None:
                self._pmtu = Dplpmtud(
                    c.pmtu, ip_header=self.ip_header, record_overhead=self.record_overhead,
                    now=now, random_bytes=c.random_bytes)
                self._events.append(PathMtuChanged(plpmtu=self._pmtu.plpmtu,
                                                   inner_mtu=self._pmtu.inner_mtu))

    def ticket_received(self, session: ClientSession) -> None:
        self._events.append(SessionTicketReceived(session=session))

    # --- slow path ---------------------------------------------------------------

    def _slow_record(self, rec: Record, now: float, wall: float, out: list[bytes]) -> bool:
        """Handle one non-fast-path record; True when it was part of a repeated flight."""
        stats = self.stats
        epoch = rec.epoch
        if epoch == self._read_epoch:
            if epoch == 0:
                # RFC 6347 §4.2.1: HelloVerifyRequest records may carry 1.0.
                if rec.version not in (DTLS_1_2, DTLS_1_0):
                    stats.malformed += 1
                    return False
                payload = rec.fragment
            else:
                if rec.version != DTLS_1_2:
                    stats.malformed += 1
                    return False
                opened = self._open(rec)
                if opened is None:
                    return False
                ctype, payload = opened
                self._last_rx = now
                return self._dispatch(ctype, epoch, payload, now, wall, out)
            return self._dispatch(rec.content_type, epoch, payload, now, wall, out)
        if epoch == self._read_epoch + 1 and not self._established:
            # security.md S9: keep a Finished that overtook its CCS.
            if self._pending_read is None and self._read_epoch > 0:
                stats.unknown_epoch += 1
            elif len(self._future) < MAX_FUTURE_RECORDS:
                self._future.append(rec)
            else:
                stats.buffer_full += 1
            return False
        if epoch == 0 and rec.content_type == _CT_HANDSHAKE and self._read_epoch == 1:
            # The peer's previous flight again: only good for recognising repeats.
            return self._handshake_repeat_only(rec.fragment)
        stats.unknown_epoch += 1  # security.md S7/S8: silently, no alert
        return False

    def _open(self, rec: Record) -> tuple[int, bytes] | None:
        """Authenticate a protected record: (content type, plaintext), or None (counted)."""
        stats = self.stats
        if (rec.content_type == _CT_CID) != bool(self._recv_cid):
            # RFC 9146 §4: with a negotiated CID, protected records are tls12_cid;
            # without one, a tls12_cid record cannot be ours.
            stats.unexpected += 1
            return None
        if rec.cid != self._recv_cid:
            stats.bad_cid += 1
            return None
        if not self._window.check(rec.seq):
            stats.replay += 1
            return None
        prot = self._read_protection
        assert prot is not None
        epoch_seq = rec.epoch << 48 | rec.seq
        result: tuple[int, bytes] | None
        if self._recv_cid:
            inner = prot.open_cid(epoch_seq, rec.cid, rec.fragment)
            result = None if inner is None else _split_inner(inner)
            if inner is not None and result is None:
                stats.malformed += 1
                return None
        else:
            plain = prot.open(epoch_seq, rec.content_type, rec.fragment)
            result = None if plain is None else (rec.content_type, plain)
        if result is None:
            stats.bad_mac += 1
            if not self._established:
                self._bad_mac_in_handshake += 1
            return None
        self._window.commit(rec.seq)
        return result

    def _dispatch(
        self, ctype: int, epoch: int, payload: bytes, now: float, wall: float, out: list[bytes]
    ) -> bool:
        stats = self.stats
        if ctype == _CT_HANDSHAKE:
            return self._guard(lambda: self._handle_handshake(payload, now, wall), now)
        if ctype == _CT_CCS:
            self._guard(lambda: self._handle_ccs(payload, now, wall), now)
            return False
        if ctype == _CT_ALERT:
            self._handle_alert(payload)
            return False
        if ctype == _CT_APP:
            # security.md S6: nothing reaches the tunnel before Finished is verified;
            # epoch-0 application data is never accepted.
            if self._established and epoch > 0:
                out.append(payload)
            else:
                stats.early_data += 1
            return False
        if ctype == _CT_HEARTBEAT:
            self._handle_heartbeat(epoch, payload, now)
            if self._established and epoch > 0:
                self._peer_used_keys = True
            return False
        stats.unexpected += 1  # RFC 5246 §6: unknown content types are dropped here
        return False

    def _handle_handshake(self, payload: bytes, now: float, wall: float) -> bool:
        try:
            frags = parse_handshake_fragments(payload)
        except DecodeError:
            self.stats.malformed += 1
            return False
        repeat = False
        reasm = self._reasm
        for frag in frags:
            if frag.message_seq < reasm.next_receive_seq:
                if self._is_exact_repeat(frag):
                    repeat = True
                else:
                    self.stats.stale_handshake += 1
                continue
            if self._established:
                # RFC 5746 / security.md S17: no renegotiation.  A HelloRequest or a
                # new ClientHello gets a warning no_renegotiation and changes nothing.
                if frag.msg_type in (HandshakeType.hello_request, HandshakeType.client_hello):
                    self._send_alert(AlertLevel.warning, AlertDescription.no_renegotiation)
                else:
                    self.stats.unexpected += 1
                continue
            reason = reasm.add(frag)
            if reason is not None:
                setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        while not self._closed:
            ready = reasm.pop_ready()
            if ready is None:
                break
            msg_type, seq, body = ready
            self._received[seq] = (msg_type, body)
            # The flight timer keeps running until our next flight (or completion):
            # if the rest of the peer's flight is lost, our re-send makes it repeat
            # its flight, and a handshake that stalls half-way still times out.
            self._machine.handle(msg_type, seq, body, now, wall)
        return repeat

    def _handshake_repeat_only(self, payload: bytes) -> bool:
        try:
            frags = parse_handshake_fragments(payload)
        except DecodeError:
            self.stats.malformed += 1
            return False
        repeat = False
        for frag in frags:
            if frag.message_seq < self._reasm.next_receive_seq and self._is_exact_repeat(frag):
                repeat = True
            else:
                self.stats.unknown_epoch += 1
        return repeat

    def _is_exact_repeat(self, frag: HandshakeFragment) -> bool:
        """The fragment repeats, byte for byte, a message we already processed."""
        got = self._received.get(frag.message_seq)
        if got is None:
            # Our own first ClientHello's answer (HVR) is never stored: a
            # repeated HVR simply means our ClientHello got lost again.
            return (self.config.is_client
                    and frag.msg_type == HandshakeType.hello_verify_request)
        got_type, got_body = got
        start = frag.fragment_offset
        return (got_type == frag.msg_type and len(got_body) == frag.length
                and got_body[start:start + len(frag.body)] == frag.body)

    def _handle_ccs(self, payload: bytes, now: float, wall: float) -> None:
        if payload != b"\x01":
            self.stats.malformed += 1  # RFC 5246 §7.1: the single byte 1
            return
        m = self._machine
        if m.expects_ccs() and self._pending_read is not None:
            m.handle(CCS_TYPE, 0, b"", now, wall)
            # RFC 6347 §4.1: the read epoch moves exactly here (CVE-2014-0224).
            self._read_epoch += 1
            self._read_protection = self._pending_read
            self._pending_read = None
            self._window = ReplayWindow()
            self._reasm.clear()  # nothing buffered from the old epoch may complete a message
            future, self._future = self._future, []
            out: list[bytes] = []
            for rec in future:
                if self._closed:
                    break
                self._slow_record(rec, now, wall, out)
            return
        if not self._established and self._pending_read is not None:
            # security.md S5: keys negotiated but the CCS came too early.
            raise UnexpectedMessage("ChangeCipherSpec before the handshake allows it")
        # A CCS before any key exchange (S15, CVE-2017-7243) or a repeated one.
        self.stats.unexpected += 1

    def _handle_alert(self, payload: bytes) -> None:
        try:
            level, desc = decode_alert(payload)
        except DecodeError:
            self.stats.malformed += 1
            return
        self._events.append(AlertReceived(level=level, description=desc))
        if desc == AlertDescription.close_notify:
            # RFC 5246 §7.2.1: answer with a close_notify of our own, then stop.
            self._send_alert(AlertLevel.warning, AlertDescription.close_notify)
            self._close(local=False, reason="peer sent close_notify", alert=desc)
        elif level == AlertLevel.fatal:
            try:
                name = AlertDescription(desc).name
            except ValueError:
                name = str(desc)
            self._close(local=False, reason=f"peer sent fatal alert {name}", alert=desc)

    # --- heartbeats (RFC 6520) and DPLPMTUD (RFC 8899) -----------------------------

    def _handle_heartbeat(self, epoch: int, payload: bytes, now: float) -> None:
        stats = self.stats
        # RFC 6520 §3: nothing during a handshake or unprotected; only when negotiated.
        if not self._established or epoch == 0 or not self._machine.heartbeat_negotiated:
            stats.heartbeat_dropped += 1
            return
        try:
            # RFC 6520 §4: payload_length + 3 + 16 must fit the record (Heartbleed).
            msg = decode_heartbeat(payload)
        except DecodeError:
            stats.heartbeat_malformed += 1
            return
        if msg.type == HeartbeatMessageType.heartbeat_request:
            # A peer may probe, not flood: at most HEARTBEAT_REPLY_RATE answers a second.
            if now - self._hb_window_start >= 1.0:
                self._hb_window_start = now
                self._hb_window_count = 0
            if self._hb_window_count >= HEARTBEAT_REPLY_RATE:
                stats.heartbeat_dropped += 1
                return
            self._hb_window_count += 1
            # RFC 6520 §4: an exact copy of the payload, fresh padding of 16 bytes.
            reply = encode_heartbeat(HeartbeatMessageType.heartbeat_response, msg.payload,
                                     self.config.random_bytes(16))
            self._out.append(self._seal_record(_CT_HEARTBEAT, self._write_epoch, reply))
            stats.heartbeat_answered += 1
            return
        if msg.type != HeartbeatMessageType.heartbeat_response:
            stats.heartbeat_dropped += 1  # RFC 6520 §4: unknown types are discarded
            return
        lv, pm = self._liveness, self._pmtu
        sent = self._hb_sent
        if lv is not None and lv.on_response(msg.payload, now):
            rtt = now - sent[1] if sent is not None and sent[0] == msg.payload else 0.0
            self._hb_sent = None
            self._events.append(HeartbeatAnswered(rtt=rtt, probe_size=None))
        elif pm is not None and (probe := pm.in_flight_probe) is not None and pm.on_response(
                msg.payload, now):
            self._events.append(HeartbeatAnswered(rtt=now - self._probe_sent_at,
                                                  probe_size=probe.size))
        else:
            stats.heartbeat_unexpected += 1  # RFC 6520 §4: discard silently
            return
        self._hb_pending = True

    def _service_heartbeats(self, now: float) -> None:
        """Run the liveness and PMTU machines: expiries, requests to send, changes."""
        lv, pm = self._liveness, self._pmtu
        if lv is None or not self._established:
            return
        if self._last_rx > lv.last_rx:
            lv.note_rx(self._last_rx)
        lv.handle_timer(now)
        if pm is not None:
            pm.handle_timer(now)
        for alive in lv.pop_changes():
            if alive:
                self._events.append(PeerAlive())
                if pm is not None:
                    pm.enable(now)
            else:
                self._events.append(PeerUnresponsive(silent_for=now - lv.last_rx))
                if pm is not None:
                    pm.disable()  # RFC 8899 §5.2: no probing an unreachable peer
        if self._machine.peer_allows_heartbeat:  # RFC 6520 §2: never to a peer that said no
            payload = lv.poll(now, blocked=pm is not None and pm.in_flight)
            rand = self.config.random_bytes
            if payload is not None:
                if self._hb_sent is None or self._hb_sent[0] != payload:
                    self._hb_sent = (payload, now)
                req = encode_heartbeat(HeartbeatMessageType.heartbeat_request, payload, rand(16))
                self._out.append(self._seal_record(_CT_HEARTBEAT, self._write_epoch, req))
                self.stats.heartbeats_sent += 1
            elif pm is not None:
                probe = pm.poll(now, blocked=lv.in_flight)
                if probe is not None:
                    req = encode_heartbeat(HeartbeatMessageType.heartbeat_request, probe.payload,
                                           rand(probe.padding))
                    self._probe_sent_at = now
                    self._out.append(self._seal_record(_CT_HEARTBEAT, self._write_epoch, req))
                    self.stats.probes_sent += 1
        if pm is not None:
            for plpmtu, inner in pm.pop_changes():
                self._events.append(PathMtuChanged(plpmtu=plpmtu, inner_mtu=inner))

    # --- flights and timers ---------------------------------------------------------

    def _transmit_flight(self, mtu: int) -> None:
        self._out.extend(pack_flight(self._flight, mtu, self._record_overhead, self._seal_record))

    def _record_overhead(self, epoch: int) -> int:
        prot = self._write[epoch].protection
        if prot is None:
            return 0
        # RFC 9146 §4: the CID in the header and the real type inside.
        return prot.overhead + (len(self._send_cid) + 1 if self._send_cid else 0)

    def _seal_record(self, ctype: int, epoch: int, payload: bytes) -> bytes:
        ws = self._write[epoch]
        seq = ws.next_seq
        ws.next_seq = seq + 1
        if ctype == _CT_CCS:
            self._write_epoch = max(self._write_epoch, epoch + 1)  # RFC 5246 §7.1
        self.stats.tx_records += 1
        prot = ws.protection
        if prot is None:
            return RECORD_HEADER.pack(ctype, DTLS_1_2, epoch << 48 | seq, len(payload)) + payload
        cid = self._send_cid
        if cid:
            frag = prot.seal_cid(epoch << 48 | seq, cid, payload + bytes((ctype,)))
            return (_CID_PREFIX.pack(_CT_CID, DTLS_1_2, epoch << 48 | seq) + cid
                    + len(frag).to_bytes(2, "big") + frag)
        frag = prot.seal(epoch << 48 | seq, ctype, payload)
        return RECORD_HEADER.pack(ctype, DTLS_1_2, epoch << 48 | seq, len(frag)) + frag

    def _on_flight_timer_expired(self, now: float) -> None:
        if self._timer.tries >= self.config.max_retransmissions:
            reason = "handshake timed out"
            if self._bad_mac_in_handshake:
                reason += (f" ({self._bad_mac_in_handshake} records from the peer failed "
                           "authentication: wrong PSK or key?)")
            self._close(local=True, reason=reason, alert=None)
            return
        self._timer.backoff(now)
        self.stats.retransmissions += 1
        mtu = self.config.mtu
        if self._timer.tries >= SHRINK_AFTER:
            mtu = min(mtu, SMALL_MTU)
        self._transmit_flight(mtu)

    def _on_peer_repeat(self, now: float) -> None:
        """RFC 6347 §4.2.4: the peer re-sent its last flight, so ours was lost."""
        if not self._flight or now - self._last_repeat_resend < REPEAT_RESEND_GAP:
            return
        if self._flight_state not in (FlightState.WAITING, FlightState.FINISHED):
            return
        self._last_repeat_resend = now
        self.stats.retransmissions += 1
        self._transmit_flight(self.config.mtu)

    # --- alerts and closing ---------------------------------------------------------

    def _guard(self, fn: Callable[[], object], now: float) -> bool:
        """Run a handshake step; turn an Alert into a fatal alert and closure (one place)."""
        try:
            return bool(fn())
        except Alert as exc:
            self._fail(exc)
        except ValueError as exc:
            # cryptography rejects malformed keys, points and signatures with ValueError;
            # anything else is a programming error and propagates.
            self._fail(DecodeErrorAlert(str(exc) or type(exc).__name__))
        return False

    def _fail(self, exc: Alert) -> None:
        if self._closed:
            return
        self._send_alert(AlertLevel.fatal, exc.description)
        self._close(local=True, reason=str(exc), alert=int(exc.description))

    def _send_alert(self, level: int, desc: int) -> None:
        self._out.append(
            self._seal_record(_CT_ALERT, self._write_epoch, encode_alert(level, desc)))

    def _close(self, *, local: bool, reason: str, alert: int | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.stop()
        self._reasm.clear()
        self._future.clear()
        self._events.append(AssociationClosed(local=local, reason=reason, alert=alert))
