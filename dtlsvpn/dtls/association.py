"""Association: the one public object of the sans-I/O DTLS core.

Inputs: ``connect``, ``receive_datagram``, ``handle_timer``, ``protect``, ``close``.
Outputs: ``datagrams_to_send``, ``get_timer``, ``pop_events``, the data returned by
``receive_datagram``.  Time comes in as arguments; no socket, clock or thread here.

Who owns what: epoch keys, replay window, held records: ``epoch.py``; handshake
records in: ``handshake_input.py``; what each content type does: ``content.py``;
handshake rules: the role's machine; our flights: ``flight.py``; heartbeats, liveness,
PMTU probing: ``keepalive.py``.  This routes.

Record layer rules (RFC 6347 §4.1):

* Fast path: once the peer has used the keys of an established association,
  a datagram that is one application_data record (tls12_cid with a negotiated
  CID) of the current read epoch is told apart at its header and opened from
  precomputed per-epoch parts (``fastpath.py``) before any parse; in a datagram
  of several records such a record is opened inline in the record loop.  It (and
  ``protect``) only records the last-received time, which moves the keepalive deadline
  later, so ``needs_service`` stays false: the shell skips the service after a
  data-only wake-up; the armed timer fires early at worst, finds nothing due, re-arms.
  A lone HeartbeatRequest record is taken at its header too (``hbfast.py``), opened
  once (with a CID FastOpen's plaintext is reused), and ours are sealed by a FastSeal
  of the heartbeat type.
* Everything else takes the slow path: records are opened by the read epoch and
  dispatched by content type (``content.dispatch``).  Records that do not parse, fail
  authentication, are replays, or belong to an epoch without keys are dropped silently
  and counted (§4.1.2.7); they never raise and never close the association.  The
  replay window moves only after authentication (§4.1.2.6, CVE-2016-2181).
* Records of the next epoch before the peer's CCS are kept (``MAX_FUTURE_RECORDS``)
  and replayed after it (S9); records of a previous epoch only serve to recognise a
  repeated flight (§4.2.4), never to deliver data or alerts (security.md S8).

Handshake messages are reassembled and fed in order to the role's machine; an
old one repeating what we received means the peer re-sends its last flight: we
re-send ours (rate-limited); any other old one is dropped and counted (S10).
Alerts raised by the machines are caught in one place (``_fail``): the fatal
alert goes out when possible, then closed and ``AssociationClosed(local=True)``;
after close nothing more is processed (security.md S14).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.dtls import failures
from dtlsvpn.dtls.client import ClientMachine
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.content import dispatch
from dtlsvpn.dtls.epoch import CT_CID, ReadState, WriteState, records_exhausted, split_inner
from dtlsvpn.dtls.events import (
    Event,
    HandshakeCompleted,
    PeerAddressChanged,
    SessionTicketReceived,
)
from dtlsvpn.dtls.fastpath import FastOpen, FastSeal
from dtlsvpn.dtls.flight import OutMessage, Retransmitter, pack_flight
from dtlsvpn.dtls.handshake_input import HandshakeInput
from dtlsvpn.dtls.hbfast import HeartbeatIn
from dtlsvpn.dtls.keepalive import Keepalive
from dtlsvpn.dtls.machine import Machine
from dtlsvpn.dtls.server import ServerMachine
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import Alert, DecodeErrorAlert, UsageError
from dtlsvpn.wire.alert import encode_alert
from dtlsvpn.wire.constants import DTLS_1_0, DTLS_1_2, AlertDescription, AlertLevel, ContentType
from dtlsvpn.wire.record import Record, parse_datagram

_CT_APP = int(ContentType.application_data)
_CT_HANDSHAKE = int(ContentType.handshake)
_CT_ALERT = int(ContentType.alert)
_CT_HEARTBEAT = int(ContentType.heartbeat)
_NO_FAST_PATH = -1  # a content type no record has


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
        self._established = self._closed = self._connected = False
        self._machine: Machine = (
            ClientMachine(config, self) if config.is_client else ServerMachine(config, self)
        )
        self._handshake = HandshakeInput(self._machine, self.stats, send_alert=self._send_alert,
                                         first_message_seq=first_message_seq)
        self._writer = WriteState.initial(first_record_seq)
        self._read = ReadState()
        self._wrong_key = failures.WrongKey()  # the peer's Finished fails: failures.py
        self._flights = Retransmitter(
            initial=config.initial_timeout, maximum=config.max_timeout,
            max_retransmissions=config.max_retransmissions, mtu=config.mtu, stats=self.stats,
            transmit=self._transmit_flight)
        self.handshake_result: HandshakeCompleted | None = None
        self.ip_header = ip_header  # outer IP header size: 20 (IPv4) or 40 (IPv6)
        self._last_rx = 0.0  # last authenticated record; the fast path only stores this
        self._keepalive: Keepalive | None = None  # heartbeats, once the handshake is done
        self._hb_pending = False  # a heartbeat answered one of ours: service the machines
        self._data_type = _CT_APP  # the outer type of protected data records (RFC 9146)
        self._fast_type = _NO_FAST_PATH  # _data_type once the peer used the keys
        self.advanced = False  # the last datagram authenticated a newer record (RFC 9146 §6)
        self.established_at: float | None = None
        self._peer_used_keys = False  # data or a heartbeat arrived after completion
        # The slow path ran since the shell last read the timer (it may have moved it
        # earlier); see ``needs_service``.  The fast path never sets it.
        self._dirty = False
        # Rebuilt after every slow-path datagram (a new object then), None when closed;
        # read-only outside (the endpoint routes by it).
        self.fast_open: FastOpen | None = None
        self._hb_in: HeartbeatIn | None = None  # the peer's keepalive, at the header (hbfast.py)
        self._seal: FastSeal | None = None  # for the current write epoch
        self._hb_seal: FastSeal | None = None  # our heartbeats, in the current write epoch
        # RFC 9146 §6 return routability (endpoint.py): the address a move waits for, and
        # since when; the sealed challenge for it, which goes to that address alone.
        self.path_candidate: tuple[object, float] | None = None
        self._challenge_out: tuple[bytes, object] | None = None

    # --- public state -------------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self._established and not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def needs_service(self) -> bool:
        """Events or datagrams are queued, or the slow path ran since ``get_timer`` was
        last read (the timer may be earlier): see the module docstring."""
        return (bool(self._events or self._out) or self._challenge_out is not None
                or (self._dirty and not self._closed))

    @property
    def client_random(self) -> bytes:
        return self._machine.client_random

    @property
    def plpmtu(self) -> int | None:
        """The confirmed PLPMTU (outer IP packet size), when PMTU discovery runs."""
        return None if self._keepalive is None else self._keepalive.plpmtu

    @property
    def inner_mtu(self) -> int | None:
        """The largest inner packet one record carries at the current PLPMTU."""
        return None if self._keepalive is None else self._keepalive.inner_mtu

    @property
    def fast_seal(self) -> FastSeal | None:
        """The data records' sealer of the current write epoch (made on first use, so
        that the compiled lane can arm before any packet went through ``protect``);
        None before the handshake completed and after close."""
        if not self._established or self._closed:
            return None
        writer = self._writer
        ws, seal = writer.epochs[writer.epoch], self._seal
        if seal is None or seal.state is not ws:
            seal = self._seal = FastSeal(ws, writer.epoch, writer.cid,
                                         compiled=self.config.record_sealer)
        return seal

    @property
    def record_overhead(self) -> int:
        """Bytes a record adds to its payload in the current write epoch."""
        return self._writer.record_overhead()

    # --- inputs ---------------------------------------------------------------

    def connect(self, now: float, wall: float) -> None:
        """Start the client handshake (flight 1)."""
        if not self.config.is_client:
            raise UsageError("connect() is for clients; servers use ServerEndpoint")
        if self._connected:
            raise UsageError("connect() called twice")
        self._connected = True
        self._dirty = True
        assert isinstance(self._machine, ClientMachine)
        machine = self._machine
        self._guard(lambda: machine.start(now, wall), now)

    def receive_datagram(self, data: bytes, now: float, wall: float) -> list[bytes]:
        """Process one datagram; return the application data it carried, in order."""
        out: list[bytes] = []
        fast = self.fast_open
        if fast is not None and (held := fast.held) is not None and held[0] is data:
            pass  # the run's ``receive_fast`` stopped at this keepalive, opened: not again
        elif self.receive_fast([data], 0, out, now):  # the header fast path took it
            return out
        if self._take_heartbeat(data, now):  # a keepalive (hbfast.py)
            return []
        return self._receive_records(data, now, wall)

    def receive_fast(self, datagrams: list[bytes], start: int, out: list[bytes],
                     now: float) -> int:
        """``receive_datagram`` for the run of ``datagrams[start:]`` that the header fast
        path takes (data appended to ``out``); the index of the first it does not take."""
        fast = self.fast_open
        if fast is None:
            return start
        end = fast.open_batch(datagrams, start, self.stats, out)
        if end > start:
            self.advanced = fast.advanced
            if fast.opened:
                self._last_rx = now
        return end

    def _receive_records(self, data: bytes, now: float, wall: float) -> list[bytes]:
        """Every datagram the header fast path did not take: parse, then record by record."""
        if self._closed:
            self.stats.after_close += 1
            return []
        # The CID length is known from the hellos on, before any key is installed.
        records, garbage = parse_datagram(data, len(self._machine.own_cid or b""))
        stats = self.stats
        stats.malformed += garbage
        stats.rx_bytes += len(data)
        out: list[bytes] = []
        repeat = False
        rd = self._read
        epoch_before, top_before = rd.epoch, rd.window.top
        for rec in records:
            stats.rx_records += 1
            if rec.content_type == self._fast_type and rec.epoch == rd.epoch:
                # Fast path: RFC 6347 §4.1.2.6 check, open, then commit.
                seq = rec.seq
                if not rd.window.check(seq):
                    stats.replay += 1
                    continue
                prot = rd.protection
                assert prot is not None
                cid = rd.cid
                if not cid:
                    plain = prot.open(rec.epoch << 48 | seq, _CT_APP, rec.fragment)
                    if plain is None:
                        stats.bad_mac += 1
                        continue
                    rd.window.commit(seq)
                    self._last_rx = now
                    out.append(plain)
                    continue
                if rec.cid != cid:
                    stats.bad_cid += 1
                    continue
                inner = prot.open_cid(rec.epoch << 48 | seq, cid, rec.fragment)
                if inner is None:
                    stats.bad_mac += 1
                    continue
                split = split_inner(inner)
                if split is not None and split[0] == _CT_APP:
                    rd.window.commit(seq)
                    self._last_rx = now
                    out.append(split[1])
                    continue
                repeat |= self._inner_record(split, seq, now, wall, out)
                continue
            repeat |= self._slow_record(rec, now, wall, out)
            if self._closed:
                break
        self.advanced = (rd.epoch > epoch_before
                         or (rd.epoch == epoch_before and rd.window.top > top_before))
        if (repeat or self._hb_pending) and not self._closed:
            self._after_datagram(repeat, now)
        self.fast_open = (FastOpen(rd, self._fast_type)
                          if self._fast_type != _NO_FAST_PATH and not self._closed else None)
        self._hb_in = HeartbeatIn.build(rd, self.fast_open, self._keepalive)
        return out

    def _take_heartbeat(self, data: bytes, now: float) -> bool:
        hb = self._hb_in  # a lone heartbeat record, at its header (hbfast.py)
        if hb is None or (msg := hb.take(data, self.stats)) is None:
            fast = self.fast_open
            if fast is not None:  # what FastOpen held of ``data`` is the slow path's now
                fast.held = None
            return False
        self._last_rx, self._dirty, self.advanced = now, True, hb.advanced
        if hb.keepalive.receive(msg, now):  # as the slow path: the same answer, bytes
            self._service_keepalive(now)  # it answered one of ours (_hb_pending there)
        return True

    def _after_datagram(self, repeat: bool, now: float) -> None:
        if repeat:
            self._flights.on_peer_repeat(now)
        if self._hb_pending:
            self._hb_pending = False
            self._service_keepalive(now)

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        self._dirty = True
        if self._flights.timer.expired(now) and not self._flights.on_timer(now):
            self._time_out()
        if not self._closed:
            self._service_keepalive(now)

    @property
    def peer_switched(self) -> bool:
        """The peer sent data or a heartbeat under these keys after the handshake (a
        repeated Finished does not count: it only says our last flight was lost).  During
        a make-before-break rekey: the peer uses the new keys, so we may, and retire the old."""
        return self.is_established and self._peer_used_keys

    def try_receive(self, data: bytes, now: float, wall: float) -> list[bytes] | None:
        """``receive_datagram`` for a datagram that may be another association's
        (a make-before-break rekey): None when it authenticated nothing newer here,
        and then its failed authentication is a trial, not counted as ``bad_mac``."""
        bad_mac = self.stats.bad_mac  # restored below when nothing authenticated
        out = self.receive_datagram(data, now, wall)
        if out or self.advanced:
            return out
        self.stats.bad_mac = bad_mac
        return None

    def records_exhausted(self) -> bool:
        """A direction used up its record budget for these keys (see REKEY_RECORDS)."""
        return (self._established and not self._closed  # (no property: asked per wake-up)
                and records_exhausted(self._writer, self._read, self.config.rekey_records))

    def path_hint(self, mtu: int, now: float) -> None:
        """A kernel hint: IP_MTU, an ICMP Packet Too Big, or EMSGSIZE at ``mtu``; never
        trusted above what a probe confirmed (RFC 8899 §4.6.2); the shell must only pass
        ICMP errors that quote one of our datagrams."""
        if self._keepalive is None or self._closed:
            return
        self._dirty = True
        self._keepalive.path_hint(mtu, now, self._last_rx)

    def local_mtu(self, mtu: int, now: float, *, new_path: bool = False) -> None:
        """The local MTU towards the peer changed (the connected socket's ``IP_MTU``):
        the PMTU search's ceiling follows it both ways (``Dplpmtud.local_mtu``);
        ``new_path``: after a move, what was learnt of the old path is forgotten."""
        if self._keepalive is None or self._closed:
            return
        self._dirty = True
        self._keepalive.local_mtu(mtu, now, self._last_rx, new_path=new_path)

    def protect(self, payloads: Iterable[bytes]) -> list[bytes]:
        """Seal each payload as one application_data record in its own datagram."""
        seal = self.fast_seal
        if seal is None:
            raise UsageError("protect() before the handshake completed or after close")
        out = seal.seal(payloads)
        self.stats.tx_records += len(out)
        return out

    def close(self, now: float) -> None:
        """Send close_notify (RFC 5246 §7.2.1) and stop."""
        if self._closed:
            return
        self._send_alert(AlertLevel.warning, AlertDescription.close_notify)
        self._close(local=True, reason="closed", alert=AlertDescription.close_notify)

    def abort(self, exc: Alert) -> None:
        """End the association with ``exc``'s fatal alert (the shell found, on a reload of
        the trust, that the peer's certificate no longer validates)."""
        self._fail(exc)

    # --- outputs --------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        for d in out:
            self.stats.tx_bytes += len(d)
        return out

    def get_timer(self) -> float | None:
        """The next deadline; reading it acknowledges a moved timer (``needs_service``)."""
        self._dirty = False
        if self._closed:
            return None
        deadline = self._flights.timer.deadline
        if self._keepalive is not None:
            t = self._keepalive.get_timer(self._last_rx)
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def pop_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    # --- Link interface for the machines -------------------------------------

    def send_flight(self, messages: list[OutMessage], now: float, *, expect_reply: bool) -> None:
        self._flights.send(messages, now, expect_reply=expect_reply)

    def install_keys(self, write: RecordProtection, read: RecordProtection) -> None:
        self._writer.install(write)
        self._read.pending = read
        m = self._machine
        if m.own_cid is not None and m.peer_cid is not None:
            self._read.cid = m.own_cid
            self._writer.cid = m.peer_cid
            self._data_type = CT_CID if m.own_cid else _CT_APP

    @property
    def connection_ids(self) -> tuple[bytes, bytes] | None:
        """(CID the peer sends us, CID we send) once RFC 9146 was negotiated."""
        m = self._machine
        if m.own_cid is None or m.peer_cid is None:
            return None
        return m.own_cid, m.peer_cid

    def challenge_path(self, addr: object, now: float) -> bool:
        """Ask the peer at ``addr`` to prove it is there before the endpoint moves the
        association to it (RFC 9146 §6, security.md: a copy of an authenticated record
        sent from a spoofed source must not redirect the traffic): a HeartbeatRequest
        with a fresh payload, for ``take_path_challenge``.  False when this peer takes
        no heartbeat requests (then the endpoint follows the record, as RFC 9146 has it)."""
        ka = self._keepalive
        if ka is None or self._closed:
            return False
        message = ka.challenge(now)
        if message is None:
            return False
        self._challenge_out = (self._heartbeat_record(message), addr)
        self.path_candidate = (addr, now)
        return True

    @property
    def challenge_answered(self) -> bool:
        """The peer answered the last path challenge (from wherever it is)."""
        ka = self._keepalive
        return ka is not None and ka.challenge_answered

    def take_path_challenge(self) -> tuple[bytes, object] | None:
        """The sealed path challenge and the one address it must be sent to, once."""
        out, self._challenge_out = self._challenge_out, None
        if out is not None:
            self.stats.tx_bytes += len(out[0])
        return out

    def note_address_change(self, old: object, new: object) -> None:
        """The endpoint moved this association to a new peer address (RFC 9146 §6)."""
        self._events.append(PeerAddressChanged(old=old, new=new))

    def complete(self, event: HandshakeCompleted, now: float) -> None:
        self._established = True
        self.handshake_result = event
        self._flights.finish()
        self._handshake.reasm.clear()
        self._read.future.clear()
        self._events.append(event)
        self._last_rx = now
        self.established_at = now
        self._keepalive = Keepalive(
            self.config, self.stats, now=now, answer=self._machine.heartbeat_negotiated,
            send_requests=event.heartbeat, ip_header=self.ip_header,
            record_overhead=self.record_overhead, seal=self._send_heartbeat,
            emit=self._emit)

    def ticket_received(self, session: ClientSession) -> None:
        self._events.append(SessionTicketReceived(session=session))

    # --- slow path ---------------------------------------------------------------

    def _slow_record(self, rec: Record, now: float, wall: float, out: list[bytes]) -> bool:
        """Handle one non-fast-path record; True when it was part of a repeated flight."""
        self._dirty = True
        rd = self._read
        epoch = rec.epoch
        if epoch == rd.epoch:
            if epoch == 0:
                # RFC 6347 §4.2.1: HelloVerifyRequest records may carry 1.0.
                if rec.version not in (DTLS_1_2, DTLS_1_0):
                    self.stats.malformed += 1
                    return False
                return dispatch(self, rec.content_type, epoch, rec.fragment, now, wall, out)
            if rec.version != DTLS_1_2:
                self.stats.malformed += 1
                return False
            opened = rd.open(rec, self.stats)
            if opened is None:
                if self._wrong_key.failed(rd.auth_failures, rec.seq, self._established, now):
                    self._fail(failures.finished_failed())  # see failures.py
                return False
            self._last_rx = now
            return dispatch(self, opened[0], epoch, opened[1], now, wall, out)
        if epoch == rd.epoch + 1 and not self._established:
            rd.hold(rec, self.stats)  # security.md S9: a Finished that overtook its CCS
            return False
        if epoch == 0 and rec.content_type == _CT_HANDSHAKE and rd.epoch == 1:
            # The peer's previous flight again: only good for recognising repeats.
            return self._handshake.receive_old(rec.fragment)
        self.stats.unknown_epoch += 1  # security.md S7/S8: silently, no alert
        return False

    def _inner_record(self, split: tuple[int, bytes] | None, seq: int, now: float,
                      wall: float, out: list[bytes]) -> bool:
        """A fast-path CID record that authenticated but carries no data (RFC 9146 §4)."""
        self._dirty = True
        if split is None:
            self.stats.malformed += 1  # all padding: no content type
            return False
        self._read.window.commit(seq)
        self._last_rx = now
        return dispatch(self, split[0], self._read.epoch, split[1], now, wall, out)

    def _note_peer_used_keys(self) -> None:
        """Data or a heartbeat under the established keys: the fast path opens."""
        self._peer_used_keys = True
        self._fast_type = self._data_type

    # --- glue: keepalive.py, flight.py ------------------------------------------------

    def _service_keepalive(self, now: float) -> None:
        if self._keepalive is not None:
            self._keepalive.service(now, self._last_rx)

    def _send_heartbeat(self, message: bytes) -> None:
        self._out.append(self._heartbeat_record(message))

    def _heartbeat_record(self, message: bytes) -> bytes:
        """One heartbeat record, sealed from parts built once per write epoch (the
        bytes ``_seal_record`` would write: tests/unit/test_hbfast.py)."""
        writer = self._writer
        ws = writer.epochs[writer.epoch]
        seal = self._hb_seal
        if seal is None or seal.state is not ws or seal.cid != writer.cid:
            seal = self._hb_seal = FastSeal(ws, writer.epoch, writer.cid, _CT_HEARTBEAT)
        self.stats.tx_records += 1
        return seal.seal_one(message)

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _transmit_flight(self, messages: Sequence[OutMessage], mtu: int) -> None:
        self._out.extend(pack_flight(messages, mtu, self._writer.overhead, self._seal_record))

    def _seal_record(self, ctype: int, epoch: int, payload: bytes) -> bytes:
        self.stats.tx_records += 1
        return self._writer.seal(ctype, epoch, payload)

    def _time_out(self) -> None:
        reason, failure = failures.timed_out(self._read.auth_failures)
        self._close(local=True, reason=reason, alert=None, failure=failure)

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
        self._close(local=True, reason=str(exc), alert=exc.description, failure=exc.failure)

    def _send_alert(self, level: int, desc: int) -> None:
        alert = encode_alert(level, desc)
        self._out.append(self._seal_record(_CT_ALERT, self._writer.epoch, alert))

    def _close(self, *, local: bool, reason: str, alert: int | None,
               failure: str | None = None) -> None:
        if self._closed:
            return
        handshake = not self._established
        self._closed = True
        self._fast_type = _NO_FAST_PATH
        self.fast_open = self._hb_in = None
        self._flights.timer.stop()
        self._handshake.reasm.clear()
        self._read.future.clear()
        self._events.append(failures.closed(local, reason, alert, failure=failure,
                                            handshake=handshake, who=self._machine.presented,
                                            finished_sent=self._writer.epoch > 0))

