"""What the client and server handshake machines share.

A machine owns the handshake's secrets and its transcript, decides which
message is legal in which state (a table per role), and asks its
:class:`Link` (the association) to send flights, install keys and report
completion.  It raises :class:`~dtlsvpn.errors.Alert` subclasses on bad peer
input; the association catches them in one place.

Transcript (RFC 6347 §4.2.6): every handshake message as if unfragmented,
12-byte DTLS header included, except the first ClientHello and the
HelloVerifyRequest; over TLS (``framing.py``) with the 4-byte header of
RFC 5246 §7.4.  The bytes are kept (not just a running hash) because
CertificateVerify may sign with a hash other than the PRF hash.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Protocol

from cryptography import x509

from dtlsvpn.crypto import prf
from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.certs import ChainVerifier
from dtlsvpn.crypto.keyexchange import KeyShare, generate_key_share
from dtlsvpn.crypto.keylog import keylog_line
from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import HandshakeCompleted
from dtlsvpn.dtls.flight import CCS, OutMessage
from dtlsvpn.dtls.framing import DTLS_FRAMING, Framing
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import (
    DecodeError,
    DecodeErrorAlert,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    UnexpectedMessage,
)
from dtlsvpn.wire import extensions as ext
from dtlsvpn.wire.constants import ExtensionType, HandshakeType, HeartbeatMode, NamedGroup
from dtlsvpn.wire.handshake import (
    ClientHello,
    Finished,
    ServerHello,
    decode_finished,
    encode_finished,
)

# Pseudo message type under which a ChangeCipherSpec enters the state tables.
CCS_TYPE = CCS


class Link(Protocol):
    """The association as a handshake machine sees it."""

    def send_flight(
        self, messages: list[OutMessage], now: float, *, expect_reply: bool
    ) -> None: ...

    def install_keys(self, write: RecordProtection, read: RecordProtection) -> None: ...

    def complete(self, event: HandshakeCompleted, now: float) -> None: ...

    def ticket_received(self, session: ClientSession) -> None: ...


Handler = Callable[[int, bytes, float, float], None]  # (message_seq, body, now, wall)


class Machine:
    """Shared state and helpers of both roles."""

    def __init__(self, config: DtlsConfig, link: Link,
                 framing: Framing = DTLS_FRAMING) -> None:
        self.config = config
        self.link = link
        self.framing = framing  # DTLS or TLS: version, transcript header, ClientHello
        self.state: object = None
        self.transcript = bytearray()
        self.client_random = b""
        self.server_random = b""
        self.suite: SuiteInfo | None = None
        self.master_secret = b""
        self.ems = False
        self.key_share: KeyShare | None = None
        self.peer_certificate: x509.Certificate | None = None
        self.peer_chain: tuple[bytes, ...] = ()  # as presented, once verified
        self.psk_identity: bytes | None = None
        # Who the peer said it was, verified or not, for the shell's refusal reports:
        # "PSK identity alice" or "certificate CN=laptop-2" (see ``note_presented``).
        self.presented: str | None = None
        self.next_send_seq = 0
        self.peer_allows_heartbeat = False  # RFC 6520 §2: may we send requests?
        self.heartbeat_negotiated = False  # the peer sent the extension: we answer requests
        # RFC 9146: the CID the peer puts on records to us, and the one we put on
        # records to it; None until (unless) both sides negotiated the extension.
        self.own_cid: bytes | None = None
        self.peer_cid: bytes | None = None
        self._table: dict[tuple[object, int], Handler] = {}

    # --- dispatch ---------------------------------------------------------

    def handle(self, msg_type: int, message_seq: int, body: bytes, now: float, wall: float) -> None:
        """Feed one whole handshake message (or a CCS with msg_type CCS_TYPE)."""
        handler = self._table.get((self.state, msg_type))
        if handler is None:
            # security.md S4/S5/S10/S11/S16: anything out of order is fatal,
            # consistently unexpected_message.
            raise UnexpectedMessage(f"message type {msg_type} in state {self.state}")
        try:
            handler(message_seq, body, now, wall)
        except DecodeError as exc:
            raise DecodeErrorAlert(str(exc)) from exc

    def expects_ccs(self) -> bool:
        return (self.state, CCS_TYPE) in self._table

    def expects(self, msg_type: int) -> bool:
        """Whether a handshake message of this type is legal in the current state."""
        return (self.state, msg_type) in self._table

    # --- transcript ---------------------------------------------------------

    def add_transcript(self, msg_type: int, message_seq: int, body: bytes) -> None:
        self.transcript += self.framing.transcript_bytes(msg_type, message_seq, body)

    def outgoing(self, epoch: int, msg_type: int, body: bytes) -> OutMessage:
        """Allocate the next message_seq for a message we send and hash it."""
        seq = self.next_send_seq
        self.next_send_seq += 1
        self.add_transcript(msg_type, seq, body)
        return OutMessage(epoch, msg_type, seq, body)

    # --- crypto -------------------------------------------------------------

    def new_key_share(self, group: NamedGroup) -> KeyShare:
        factory = self.config.key_share_factory or generate_key_share
        return factory(group)

    def derive_master(self, premaster: bytes) -> None:
        """RFC 5246 §8.1 / RFC 7627 §4, then log it when a key log is asked for."""
        assert self.suite is not None
        h = self.suite.prf_hash
        if self.ems:
            session_hash = prf.transcript_hash(h, bytes(self.transcript))
            self.master_secret = prf.extended_master_secret(h, premaster, session_hash)
        else:
            self.master_secret = prf.master_secret(
                h, premaster, self.client_random, self.server_random
            )
        if self.config.keylog is not None:
            self.config.keylog(keylog_line(self.client_random, self.master_secret))

    def install_keys(self) -> None:
        assert self.suite is not None
        kb = prf.key_block(self.suite, self.master_secret, self.client_random, self.server_random)
        protection = self.framing.protection
        client = protection(self.suite, kb.client_write_key, kb.client_write_iv)
        server = protection(self.suite, kb.server_write_key, kb.server_write_iv)
        if self.config.is_client:
            self.link.install_keys(client, server)
        else:
            self.link.install_keys(server, client)

    def finished_data(self, *, from_client: bool) -> bytes:
        """RFC 5246 §7.4.9 verify_data over the transcript so far."""
        assert self.suite is not None
        label = b"client finished" if from_client else b"server finished"
        h = self.suite.prf_hash
        digest = prf.transcript_hash(h, bytes(self.transcript))
        return prf.verify_data(h, self.master_secret, label, digest)

    def take_hello_extensions(self, hello: ClientHello | ServerHello, *, no_ems: str) -> None:
        """The extensions both hellos check alike, in this order.

        RFC 5746 §3.4/§3.6: renegotiation_info, if present, is empty on an initial
        handshake.  RFC 7627 §5.3: extended_master_secret, required unless the
        config allows without (``no_ems`` is the reason then).  RFC 6520 §2: the
        peer's heartbeat mode.
        """
        reneg = hello.ext(ExtensionType.renegotiation_info)
        if reneg is not None and ext.decode_renegotiation_info(reneg) != b"":
            raise HandshakeFailure("non-empty renegotiation_info on an initial handshake")
        ems = hello.ext(ExtensionType.extended_master_secret)
        if ems is not None:
            ext.decode_extended_master_secret(ems)
        self.ems = ems is not None
        if not self.ems and self.config.require_extended_master_secret:
            raise HandshakeFailure(no_ems)
        self.note_heartbeat_mode(hello.ext(ExtensionType.heartbeat))

    def take_peer_finished(self, seq: int, body: bytes) -> None:
        """Check the peer's Finished (RFC 5246 §7.4.9) and hash it."""
        fin = decode_finished(body)
        self.check_finished(fin.verify_data, from_client=not self.config.is_client)
        self.add_transcript(HandshakeType.finished, seq, body)

    def ccs_and_finished(self, *, from_client: bool) -> list[OutMessage]:
        """Our ChangeCipherSpec and Finished, the end of every flight that switches keys.

        The Finished (epoch 1) carries verify_data over the transcript so far
        and is hashed in turn; the keys must be installed first.
        """
        verify_data = self.finished_data(from_client=from_client)
        return [OutMessage(0, CCS, 0, b""),
                self.outgoing(1, HandshakeType.finished, encode_finished(Finished(verify_data)))]

    def check_finished(self, body: bytes, *, from_client: bool) -> None:
        import hmac

        expected = self.finished_data(from_client=from_client)
        if not hmac.compare_digest(expected, body):
            raise DecryptError("Finished verify_data does not match")  # RFC 5246 §7.4.9

    def note_presented(self, *, chain: tuple[bytes, ...] = (), psk: bytes | None = None) -> None:
        """Remember the peer's claimed identity before it is checked (never raises)."""
        if psk is not None:
            self.presented = f"PSK identity {psk.decode('utf-8', 'backslashreplace')}"
            return
        if not chain:
            return
        try:
            subject = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
        except Exception:  # a malformed certificate: the verifier refuses it next
            subject = "(unreadable)"
        self.presented = f"certificate {subject or '(empty subject)'}"

    def verifier(self) -> ChainVerifier:
        c = self.config
        return ChainVerifier(c.ca_certs, c.pinned_spki_sha256, c.server_name)

    def note_heartbeat_mode(self, data: bytes | None) -> None:
        """RFC 6520 §2: record the peer's mode; an unknown mode is illegal_parameter."""
        if data is None:
            return
        mode = ext.decode_heartbeat(data)
        self.heartbeat_negotiated = self.config.heartbeat
        if mode not in (HeartbeatMode.peer_allowed_to_send, HeartbeatMode.peer_not_allowed_to_send):
            raise IllegalParameter(f"unknown heartbeat mode {mode}")
        self.peer_allows_heartbeat = (
            self.config.heartbeat and mode == HeartbeatMode.peer_allowed_to_send
        )

    @staticmethod
    def wall_datetime(wall: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)

    def completed_event(self, resumed: bool = False) -> HandshakeCompleted:
        assert self.suite is not None
        return HandshakeCompleted(
            suite=self.suite.code,
            suite_name=self.suite.name,
            ems=self.ems,
            resumed=resumed,
            peer_certificate=self.peer_certificate,
            psk_identity=self.psk_identity,
            heartbeat=self.peer_allows_heartbeat,
            rx_cid=self.own_cid if self.peer_cid is not None else None,
            tx_cid=self.peer_cid if self.own_cid is not None else None,
            peer_chain=self.peer_chain,
        )
