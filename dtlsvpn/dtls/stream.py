"""StreamAssociation: TLS 1.2 over a byte stream (TCP), on the same handshake machines.

The sans-I/O twin of :class:`~dtlsvpn.dtls.association.Association` for the
TCP fallback.  Inputs: ``connect`` (client) or ``accept`` (server),
``receive_data(bytes, now, wall)`` with the stream cut anywhere,
``handle_timer``, ``send`` (inner packets out), ``close``.  Outputs:
``data_to_send`` (bytes for the socket), ``get_timer``, ``pop_events`` and
the application data ``receive_data`` returns.  No socket, clock or thread.

What differs from DTLS, and where it lives:

* Framing (``framing.TLS_FRAMING``, given to the machines): version 0x0303,
  4-byte handshake headers in the transcript, no cookie, no HelloVerifyRequest.
* Record layer (here, with ``wire/tls.py`` and ``crypto/tls_aead.py``):
  5-byte headers, implicit 64-bit sequence numbers per direction restarting
  at 0 after each ChangeCipherSpec (RFC 5246 §6.1), handshake messages that
  share and span records (§6.2.1), no retransmission (TCP is reliable), no
  replay window, no CID, no PMTU discovery.
* Errors: a stream cannot skip a record, so every record-layer failure is
  fatal: bad_record_mac for a record that does not authenticate (§6.2.3.3),
  record_overflow for a length above 2^14 + 2048 (§6.2.3) or a plaintext
  above 2^14, unexpected_message for a record type or handshake message out
  of place (§6; a heartbeat before the handshake completed too: until then only
  handshake, ChangeCipherSpec and alert records are legal), an SSLv2 hello is refused
  (RFC 6176).  The fatal alert goes
  out, ``AssociationClosed(local=True)`` is queued; the shell closes the
  socket after writing ``data_to_send``.
* Timers: the handshake as a whole must finish within ``handshake_timeout``
  seconds of ``connect``/``accept``; afterwards RFC 6520 heartbeats keep
  doing liveness (``keepalive.py``) exactly as over DTLS.  A server whose
  client did not allow heartbeats (so it cannot ask) still declares it
  unresponsive after ``heartbeat_settings.timeout`` seconds without an
  authenticated record (``PeerUnresponsive``, once): a dead client over TCP may
  leave no trace in the socket for a long time.

Once established, renegotiation is refused with a warning no_renegotiation
(RFC 5746, security.md S17) and any other handshake message is fatal.  The warning is
not an echo: one per record however many HelloRequests/ClientHellos it packs (the rest
are counted, ``renegotiation_ignored``; a 16 KiB record holds 4096 empty ones), and a
peer that asks a ``MAX_RENEGOTIATIONS + 1``-th time gets a fatal unexpected_message.

Key limits: a TLS connection is never renegotiated, so the shell renews by
dialling a new connection when ``records_exhausted`` (the record budget, as
over DTLS) or the rekey interval says so.  Should that renewal not happen, the
keys stop here at twice either: once a direction has used ``KEY_LIMIT_FACTOR``
× the budget of records, or the keys are ``KEY_LIMIT_FACTOR`` × ``rekey_interval``
old, close_notify goes out and the association closes with ``close_cause``
``record_limit`` or ``key_age`` (the client then dials again, resuming).
``close_cause`` is a stable word for every close: ``record_limit``, ``key_age``,
``peer_closed`` (close_notify), ``peer_alert``, ``alert_sent`` (our fatal alert),
``timeout`` (the handshake's), ``closed`` (``close()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.dtls import failures
from dtlsvpn.dtls.client import ClientMachine
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.epoch import REKEY_RECORDS
from dtlsvpn.dtls.events import (
    AlertReceived,
    Event,
    HandshakeCompleted,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.flight import CCS, OutMessage
from dtlsvpn.dtls.framing import TLS_FRAMING
from dtlsvpn.dtls.keepalive import Keepalive
from dtlsvpn.dtls.machine import CCS_TYPE, Machine
from dtlsvpn.dtls.server import ServerMachine
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import (
    Alert,
    DecodeError,
    DecodeErrorAlert,
    RecordOverflow,
    UnexpectedMessage,
    UsageError,
)
from dtlsvpn.wire.alert import decode_alert, encode_alert
from dtlsvpn.wire.constants import (
    MAX_PLAINTEXT,
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
)
from dtlsvpn.wire.tls import (
    TLS_1_2,
    TLS_RECORD_HEADER,
    TLS_RECORD_HEADER_LEN,
    HandshakeSplitter,
    RecordSplitter,
    encode_tls_handshake,
)

DEFAULT_HANDSHAKE_TIMEOUT = 30.0  # seconds from connect/accept to an established session
_MAX_SEQ = (1 << 64) - 1  # RFC 5246 §6.1: sequence numbers never wrap
_RENEGOTIATION = (HandshakeType.hello_request, HandshakeType.client_hello)
KEY_LIMIT_FACTOR = 2  # keys stop at this many times the record budget or the rekey interval
MAX_RENEGOTIATIONS = 3  # records asking to renegotiate answered with a warning; then fatal


class BadRecordMac(Alert):
    description = AlertDescription.bad_record_mac


class StreamAssociation:
    """One TLS 1.2 connection with one peer (either role), over a byte stream."""

    def __init__(self, config: DtlsConfig, *,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        # No RFC 9146 CIDs and no PMTU discovery over a stream: TCP does both jobs.
        self.config = config = replace(config, connection_id=False, pmtu=None)
        self.stats = Stats()
        self.handshake_timeout = handshake_timeout
        self._machine: Machine = (
            ClientMachine(config, self, TLS_FRAMING) if config.is_client
            else ServerMachine(config, self, TLS_FRAMING))
        self._records = RecordSplitter()
        self._handshake = HandshakeSplitter()
        self._events: list[Event] = []
        self._out = bytearray()
        self._write: RecordProtection | None = None
        self._write_next: RecordProtection | None = None
        self._write_seq = 0
        self._read: RecordProtection | None = None
        self._read_next: RecordProtection | None = None
        self._read_seq = 0
        self._started = False
        self._established = False
        self._closed = False
        self._deadline: float | None = None  # the handshake's
        self._keepalive: Keepalive | None = None
        self._last_rx = 0.0
        self._hb_pending = False
        self._dirty = False
        self.handshake_result: HandshakeCompleted | None = None
        self.established_at: float | None = None
        self.close_reason: str | None = None
        self.close_cause: str | None = None  # a stable word (see the module docstring)
        self._key_expiry: float | None = None  # established_at + 2 x rekey_interval
        self._silence: float | None = None  # server without liveness: this much is death
        self._silence_told = False
        self._renegotiations = 0  # records that asked, since the handshake

    # --- public state -------------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self._established and not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def needs_service(self) -> bool:
        return bool(self._events or self._out) or (self._dirty and not self._closed)

    @property
    def pending_output(self) -> int:
        """Bytes sealed and not yet taken by ``data_to_send``."""
        return len(self._out)

    @property
    def record_overhead(self) -> int:
        """Bytes a record adds to its payload under the current write keys."""
        prot = self._write
        return TLS_RECORD_HEADER_LEN + (0 if prot is None else prot.overhead)

    @property
    def client_random(self) -> bytes:
        return self._machine.client_random

    # --- inputs ---------------------------------------------------------------

    def records_exhausted(self) -> bool:
        """A direction used up its record budget for these keys (``rekey_records``, else
        the suite AEAD's ``REKEY_RECORDS``, as over DTLS): time for a new connection
        (a TLS connection is never renegotiated; ``tcpclient.py`` renews make-before-break)."""
        budget = self._record_budget()
        return budget is not None and (self._write_seq >= budget or self._read_seq >= budget)

    def renewal_due(self, now: float) -> str | None:
        """``record_limit`` or ``key_age`` when these keys are past the point where the
        shell renews them (the budget, or ``rekey_interval``); else None."""
        if self.records_exhausted():
            return "record_limit"
        interval, at = self.config.rekey_interval, self.established_at
        if interval is not None and at is not None and now >= at + interval:
            return "key_age"
        return None

    def _record_budget(self) -> int | None:
        prot = self._write
        if not self._established or prot is None:
            return None
        return self.config.rekey_records or REKEY_RECORDS[prot.suite.aead]

    @property
    def record_limit(self) -> int | None:
        """Records per direction after which these keys are no longer used at all."""
        budget = self._record_budget()
        return None if budget is None else KEY_LIMIT_FACTOR * budget

    def connect(self, now: float, wall: float) -> None:
        """Client: send the ClientHello (the TCP connection is up)."""
        if not self.config.is_client:
            raise UsageError("connect() is for clients; servers call accept()")
        self._start(now)
        machine = self._machine
        assert isinstance(machine, ClientMachine)
        self._guard(machine.start, now, wall)

    def accept(self, now: float) -> None:
        """Server: a TCP connection was accepted; the handshake clock starts."""
        if self.config.is_client:
            raise UsageError("accept() is for servers; clients call connect()")
        self._start(now)

    def _start(self, now: float) -> None:
        if self._started:
            raise UsageError("connect()/accept() called twice")
        self._started = True
        self._dirty = True
        self._deadline = now + self.handshake_timeout

    def receive_data(self, data: bytes | bytearray | memoryview, now: float,
                     wall: float) -> list[bytes]:
        """Bytes from the stream, cut anywhere; returns the application data they completed."""
        if not self._started:
            raise UsageError("receive_data() before connect()/accept()")
        if self._closed:
            self.stats.after_close += 1
            return []
        self.stats.rx_bytes += len(data)
        splitter = self._records
        splitter.feed(data)
        out: list[bytes] = []
        while not self._closed and (rec := splitter.pop()) is not None:
            self.stats.rx_records += 1
            self._guard(self._record, *rec, now, wall, out)
        if splitter.error is not None and not self._closed:
            self.stats.malformed += 1
            self._fail(RecordOverflow(f"peer sent {splitter.error}")
                       if "bytes" in splitter.error else DecodeErrorAlert(
                           f"peer sent {splitter.error}"))
        if self._hb_pending and not self._closed:
            self._hb_pending = False
            self._service_keepalive(now)
        return out

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        self._dirty = True
        if self._deadline is not None and now >= self._deadline:
            self._send_alert(AlertLevel.fatal, AlertDescription.handshake_failure)
            self._close(local=True, reason="handshake timed out", alert=None, cause="timeout",
                        failure="timeout")
            return
        if self._key_expiry is not None and now >= self._key_expiry:
            interval = self.config.rekey_interval
            self._retire("key_age", f"keys {KEY_LIMIT_FACTOR} x RekeyInterval ({interval:g}s) "
                         "old and not renewed")
            return
        if (self._silence is not None and not self._silence_told
                and now >= self._last_rx + self._silence):
            self._silence_told = True
            self._events.append(PeerUnresponsive(silent_for=now - self._last_rx))
        self._service_keepalive(now)

    def send(self, payloads: Iterable[bytes]) -> int:
        """Seal each payload (an inner packet or an SP message) as application data;
        returns how many were sealed: fewer when the record limit closed the keys."""
        if not self.is_established:
            raise UsageError("send() before the handshake completed or after close")
        ct = int(ContentType.application_data)
        limit = self.record_limit
        n = 0
        for payload in payloads:
            if len(payload) > MAX_PLAINTEXT:
                raise UsageError(f"payload of {len(payload)} bytes exceeds 2^14")
            if limit is not None and self._write_seq >= limit:
                break
            self._seal(ct, payload)
            n += 1
        self.stats.tx_records += n
        self._check_record_limit()
        return n

    def close(self, now: float) -> None:
        """Send close_notify (RFC 5246 §7.2.1) and stop."""
        if self._closed:
            return
        self._send_alert(AlertLevel.warning, AlertDescription.close_notify)
        self._close(local=True, reason="closed", alert=AlertDescription.close_notify,
                    cause="closed")

    def abort(self, exc: Alert) -> None:
        """End the link with ``exc``'s fatal alert (a reload of the trust found the peer's
        certificate no longer valid)."""
        self._fail(exc)

    def _check_record_limit(self) -> None:
        limit = self.record_limit
        if limit is None or self._closed:
            return
        for seq, verb in ((self._write_seq, "sent"), (self._read_seq, "received")):
            if seq >= limit:
                self._retire("record_limit", f"{limit} records {verb} under these keys "
                             f"({KEY_LIMIT_FACTOR} x the record budget) and not renewed")
                return

    def _retire(self, cause: str, reason: str) -> None:
        """The keys reached a hard limit: close_notify and close (``close_cause``)."""
        self._send_alert(AlertLevel.warning, AlertDescription.close_notify)
        self._close(local=True, reason=reason, alert=AlertDescription.close_notify, cause=cause)

    # --- outputs --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self.stats.tx_bytes += len(out)
        return out

    def get_timer(self) -> float | None:
        self._dirty = False
        if self._closed:
            return None
        if self._deadline is not None:
            return self._deadline
        due = self._key_expiry
        if self._silence is not None and not self._silence_told:
            quiet = self._last_rx + self._silence
            due = quiet if due is None else min(due, quiet)
        if self._keepalive is not None:
            ka = self._keepalive.get_timer(self._last_rx)
            if ka is not None and (due is None or ka < due):
                due = ka
        return due

    def pop_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    # --- Link interface for the machines -------------------------------------

    def send_flight(self, messages: list[OutMessage], now: float, *, expect_reply: bool) -> None:
        """Our flight, once: handshake messages packed into as few records as fit
        (RFC 5246 §6.2.1); a CCS switches our write keys after it.  TCP retransmits."""
        pending = bytearray()
        for m in messages:
            if m.msg_type == CCS:
                self._flush_handshake(pending)
                self._seal(int(ContentType.change_cipher_spec), b"\x01")
                self._write, self._write_next, self._write_seq = self._write_next, None, 0
                continue
            pending += encode_tls_handshake(m.msg_type, m.body)
        self._flush_handshake(pending)

    def _flush_handshake(self, pending: bytearray) -> None:
        ct = int(ContentType.handshake)
        for i in range(0, len(pending), MAX_PLAINTEXT):
            self._seal(ct, bytes(pending[i:i + MAX_PLAINTEXT]))
        pending.clear()

    def install_keys(self, write: RecordProtection, read: RecordProtection) -> None:
        self._write_next = write
        self._read_next = read

    def complete(self, event: HandshakeCompleted, now: float) -> None:
        self._established = True
        self._deadline = None
        self.handshake_result = event
        self.established_at = now
        self._last_rx = now
        if self.config.rekey_interval is not None:
            self._key_expiry = now + KEY_LIMIT_FACTOR * self.config.rekey_interval
        self._events.append(event)
        if not event.heartbeat and not self.config.is_client:
            self._silence = self.config.heartbeat_settings.timeout
        self._keepalive = Keepalive(
            self.config, self.stats, now=now, answer=self._machine.heartbeat_negotiated,
            send_requests=event.heartbeat, ip_header=20, record_overhead=self.record_overhead,
            seal=self._send_heartbeat, emit=self._emit)

    def ticket_received(self, session: ClientSession) -> None:
        self._events.append(SessionTicketReceived(session=session))

    # --- records in -------------------------------------------------------------

    def _record(self, ctype: int, version: int, fragment: bytes, now: float, wall: float,
                out: list[bytes]) -> None:
        self._dirty = True
        prot = self._read
        if prot is None:
            # Before keys the version may still be 0x0301 (ClientHello records).
            payload = fragment
        else:
            if version != TLS_1_2:
                raise DecodeErrorAlert(f"protected record of version {version:#06x}")
            if self._read_seq > _MAX_SEQ:
                raise BadRecordMac("read sequence numbers exhausted")
            plain = prot.open(self._read_seq, ctype, fragment)
            if plain is None:
                self.stats.bad_mac += 1
                if not self._established:  # the first record under the new keys: Finished
                    raise failures.finished_failed()
                raise BadRecordMac("record failed authentication")  # RFC 5246 §6.2.3.3
            self._read_seq += 1
            self._last_rx = now
            payload = plain
        if len(payload) > MAX_PLAINTEXT:
            raise RecordOverflow(f"plaintext of {len(payload)} bytes")  # RFC 5246 §6.2.1
        if ctype != ContentType.handshake and self._handshake.partial:
            # RFC 5246 §6.2.1: nothing may cut into a handshake message that spans records.
            raise UnexpectedMessage(f"record type {ctype} inside a handshake message")
        handler = _BY_CONTENT_TYPE.get(ctype)
        if handler is None:
            raise UnexpectedMessage(f"record of unknown type {ctype}")  # RFC 5246 §6
        handler(self, payload, now, wall, out)
        self._check_record_limit()

    def _on_handshake(self, payload: bytes, now: float, wall: float, out: list[bytes]) -> None:
        try:
            messages = self._handshake.feed(payload)
        except DecodeError as exc:
            raise DecodeErrorAlert(str(exc)) from exc
        answered = False
        for msg_type, body in messages:
            if self._closed:
                return
            if not self._established:
                self._machine.handle(msg_type, 0, body, now, wall)
            elif msg_type not in _RENEGOTIATION:
                raise UnexpectedMessage(f"handshake message {msg_type} after the handshake")
            elif answered:
                self.stats.renegotiation_ignored += 1  # one warning per record at most
            else:
                answered = True
                self._renegotiations += 1
                if self._renegotiations > MAX_RENEGOTIATIONS:
                    raise UnexpectedMessage(f"peer asked to renegotiate "
                                            f"{self._renegotiations} times")
                self._send_alert(AlertLevel.warning, AlertDescription.no_renegotiation)
        self._check_started(self._handshake.pending_type)

    def _check_started(self, msg_type: int | None) -> None:
        """A message refused at its header, not after waiting up to 64 KiB for its body
        (a Finished sealed under keys the reader has not switched to reads as a header of
        random type and length; security.md S1)."""
        if msg_type is None or self._closed:
            return
        legal = msg_type in _RENEGOTIATION if self._established else self._machine.expects(msg_type)
        if not legal:
            raise UnexpectedMessage(f"handshake message {msg_type} out of place")

    def _on_ccs(self, payload: bytes, now: float, wall: float, out: list[bytes]) -> None:
        if payload != b"\x01":
            raise DecodeErrorAlert("ChangeCipherSpec is not the single byte 1")  # RFC 5246 §7.1
        m = self._machine
        if self._established or not m.expects_ccs() or self._read_next is None:
            # CVE-2014-0224 / security.md S5, S15: keys move only where the table says.
            raise UnexpectedMessage("ChangeCipherSpec out of place")
        m.handle(CCS_TYPE, 0, b"", now, wall)
        self._read, self._read_next, self._read_seq = self._read_next, None, 0

    def _on_alert(self, payload: bytes, now: float, wall: float, out: list[bytes]) -> None:
        try:
            level, desc = decode_alert(payload)
        except DecodeError as exc:
            raise DecodeErrorAlert(str(exc)) from exc
        self._events.append(AlertReceived(level=level, description=desc))
        if desc == AlertDescription.close_notify:
            self._send_alert(AlertLevel.warning, AlertDescription.close_notify)
            self._close(local=False, reason="peer sent close_notify", alert=desc,
                        cause="peer_closed")
        elif level == AlertLevel.fatal:
            reason, failure = failures.peer_alert(desc, self._established)
            self._close(local=False, reason=reason, alert=desc, failure=failure,
                        cause="peer_alert")

    def _on_application_data(self, payload: bytes, now: float, wall: float,
                             out: list[bytes]) -> None:
        if not self._established or self._read is None:
            self.stats.early_data += 1  # security.md S6
            raise UnexpectedMessage("application data before the handshake completed")
        if payload:  # RFC 5246 §6.2.1: empty application data records are legal
            out.append(payload)

    def _on_heartbeat(self, payload: bytes, now: float, wall: float, out: list[bytes]) -> None:
        ka = self._keepalive
        if ka is None or self._read is None:
            # RFC 6520 §3: not during a handshake.  Over a stream nothing may be skipped,
            # and an unauthenticated client could stream them for ever: fatal.
            self.stats.heartbeat_dropped += 1
            raise UnexpectedMessage("heartbeat before the handshake completed")
        if ka.receive(payload, now):
            self._hb_pending = True

    # --- records out ------------------------------------------------------------

    def _seal(self, ctype: int, payload: bytes) -> None:
        prot = self._write
        if prot is None:
            self._out += TLS_RECORD_HEADER.pack(ctype, TLS_1_2, len(payload)) + payload
            return
        seq = self._write_seq
        if seq > _MAX_SEQ:
            raise UsageError("write sequence numbers exhausted: reconnect required")
        self._write_seq = seq + 1
        frag = prot.seal(seq, ctype, payload)
        self._out += TLS_RECORD_HEADER.pack(ctype, TLS_1_2, len(frag)) + frag

    def _send_heartbeat(self, message: bytes) -> None:
        self.stats.tx_records += 1
        self._seal(int(ContentType.heartbeat), message)

    def _send_alert(self, level: int, desc: int) -> None:
        self.stats.tx_records += 1
        self._seal(int(ContentType.alert), encode_alert(level, desc))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _service_keepalive(self, now: float) -> None:
        if self._keepalive is not None:
            self._keepalive.service(now, self._last_rx)
            self._check_record_limit()  # (our heartbeats spend records too)

    # --- alerts and closing ---------------------------------------------------------

    def _guard(self, fn: Callable[..., object], *args: object) -> None:
        """Run a step; an Alert becomes a fatal alert and closure (one place)."""
        try:
            fn(*args)
        except Alert as exc:
            self._fail(exc)
        except ValueError as exc:
            # cryptography rejects malformed keys, points and signatures with ValueError.
            self._fail(DecodeErrorAlert(str(exc) or type(exc).__name__))

    def _fail(self, exc: Alert) -> None:
        if self._closed:
            return
        self._send_alert(AlertLevel.fatal, exc.description)
        self._close(local=True, reason=str(exc), alert=int(exc.description), cause="alert_sent",
                    failure=exc.failure)

    def _close(self, *, local: bool, reason: str, alert: int | None, cause: str,
               failure: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._deadline = None
        self._key_expiry = None
        self.close_reason = reason
        self.close_cause = cause
        self._handshake.clear()
        # The same event as DTLS's (failures.py): before completion it says what failed.
        self._events.append(failures.closed(local, reason, alert, failure=failure,
                                            handshake=not self._established,
                                            who=self._machine.presented,
                                            finished_sent=self._write is not None))


_Handler = Callable[[StreamAssociation, bytes, float, float, list[bytes]], None]

# RFC 5246 §6.2.1 / RFC 6520: the handler per content type; anything else is fatal.
_BY_CONTENT_TYPE: dict[int, _Handler] = {
    int(ContentType.handshake): StreamAssociation._on_handshake,
    int(ContentType.change_cipher_spec): StreamAssociation._on_ccs,
    int(ContentType.alert): StreamAssociation._on_alert,
    int(ContentType.application_data): StreamAssociation._on_application_data,
    int(ContentType.heartbeat): StreamAssociation._on_heartbeat,
}
