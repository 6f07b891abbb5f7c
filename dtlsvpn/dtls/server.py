"""The server handshake machine (RFC 5246 §7.3, RFC 6347 §4.2).

The cookie exchange happens before this machine exists (``endpoint.py``):
the first message it sees is the ClientHello that carried a valid cookie.

States and the messages legal in each (anything else is unexpected_message)::

    WAIT_CLIENT_HELLO       ClientHello       -> WAIT_CERTIFICATE (we asked for one)
                                               | WAIT_CLIENT_KEY_EXCHANGE
    WAIT_CERTIFICATE        Certificate       -> WAIT_CLIENT_KEY_EXCHANGE
    WAIT_CLIENT_KEY_EXCHANGE ClientKeyExchange -> WAIT_CERTIFICATE_VERIFY (non-empty client chain)
                                               | WAIT_CCS
    WAIT_CERTIFICATE_VERIFY CertificateVerify -> WAIT_CCS
    WAIT_CCS                CCS               -> WAIT_FINISHED
    WAIT_FINISHED           Finished          -> ESTABLISHED ([NewSessionTicket] CCS Finished
                                                 go out)

Abbreviated handshake (RFC 5077 §3.1): a ClientHello whose ticket opens
under our key ring, binds an EMS session, a suite we still accept and a peer
identity we still trust is answered by ServerHello (echoing the client's
session_id), [NewSessionTicket], CCS, Finished; then WAIT_CCS ->
WAIT_FINISHED -> ESTABLISHED on the client's Finished.  Any other ticket
falls back to a full handshake without a word (RFC 5077 §3.4).

security.md S2-S5: a client Certificate without a CertificateVerify, an empty
Certificate when one is required, a ClientKeyExchange before the Certificate,
or a CCS before the CertificateVerify are all refused by the table.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from dtlsvpn.crypto import certs
from dtlsvpn.crypto.keyexchange import psk_premaster
from dtlsvpn.crypto.suites import SUITES, SuiteInfo
from dtlsvpn.crypto.tickets import TicketState
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.flight import OutMessage
from dtlsvpn.dtls.framing import DTLS_FRAMING, RESUMABLE_VERSIONS, Framing
from dtlsvpn.dtls.machine import CCS_TYPE, Link, Machine
from dtlsvpn.errors import (
    HandshakeFailure,
    IllegalParameter,
    InsufficientSecurity,
    ProtocolVersion,
    UnknownPskIdentity,
)
from dtlsvpn.wire import extensions as ext
from dtlsvpn.wire import handshake as hs
from dtlsvpn.wire import key_exchange as kxw
from dtlsvpn.wire.constants import (
    CipherSuite,
    ClientCertificateType,
    ExtensionType,
    HandshakeType,
    HeartbeatMode,
    KeyExchangeKind,
    NamedGroup,
    SignatureScheme,
)

_ECDSA_KEYS = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


def _groups_and_schemes(ch: hs.ClientHello) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The client's supported_groups and signature_algorithms (decoded whatever the suite)."""
    groups_data = ch.ext(ExtensionType.supported_groups)
    client_groups = (
        ext.decode_supported_groups(groups_data) if groups_data is not None
        else (NamedGroup.secp256r1,)  # RFC 8422 §4: absent means any; P-256 is universal
    )
    schemes_data = ch.ext(ExtensionType.signature_algorithms)
    client_schemes = (
        ext.decode_signature_algorithms(schemes_data) if schemes_data is not None else ()
    )
    return client_groups, client_schemes


class ServerState(enum.Enum):
    WAIT_CLIENT_HELLO = "WAIT_CLIENT_HELLO"
    WAIT_CERTIFICATE = "WAIT_CERTIFICATE"
    WAIT_CLIENT_KEY_EXCHANGE = "WAIT_CLIENT_KEY_EXCHANGE"
    WAIT_CERTIFICATE_VERIFY = "WAIT_CERTIFICATE_VERIFY"
    WAIT_CCS = "WAIT_CCS"
    WAIT_FINISHED = "WAIT_FINISHED"
    ESTABLISHED = "ESTABLISHED"


class ServerMachine(Machine):
    def __init__(self, config: DtlsConfig, link: Link,
                 framing: Framing = DTLS_FRAMING) -> None:
        super().__init__(config, link, framing)
        self.state = ServerState.WAIT_CLIENT_HELLO
        self.group: NamedGroup | None = None
        self.resuming = False
        self.issue_ticket = False
        self.cert_requested = False
        self.client_public: object | None = None
        S = ServerState
        self._table = {
            (S.WAIT_CLIENT_HELLO, HandshakeType.client_hello): self._handle_client_hello,
            (S.WAIT_CERTIFICATE, HandshakeType.certificate): self._handle_certificate,
            (S.WAIT_CLIENT_KEY_EXCHANGE, HandshakeType.client_key_exchange): self._handle_cke,
            (S.WAIT_CERTIFICATE_VERIFY, HandshakeType.certificate_verify): self._handle_cv,
            (S.WAIT_CCS, CCS_TYPE): self._handle_ccs,
            (S.WAIT_FINISHED, HandshakeType.finished): self._handle_finished,
        }

    # --- flight 3 -> 4 --------------------------------------------------------

    def _choose_suite(self, offered: tuple[int, ...]) -> SuiteInfo:
        """Server preference order (protocol.md), limited to what our credentials allow."""
        key = self.config.private_key
        for code in self.config.suites:
            if int(code) not in offered:
                continue
            info = SUITES[int(code)]
            if info.kx is KeyExchangeKind.ECDHE_ECDSA and not isinstance(key, _ECDSA_KEYS):
                continue
            if info.kx is KeyExchangeKind.ECDHE_RSA and not isinstance(key, rsa.RSAPrivateKey):
                continue
            if info.uses_psk and not self.config.has_psk:
                continue
            return info
        raise HandshakeFailure("no cipher suite in common")

    def _handle_client_hello(self, seq: int, body: bytes, now: float, wall: float) -> None:
        ch = self.framing.decode_client_hello(body)
        if self.framing.refuses_client_version(ch.version):
            raise ProtocolVersion(f"client offers {ch.version:#06x} only")
        if 0 not in ch.compression_methods:
            raise IllegalParameter("client does not offer null compression")
        self.take_hello_extensions(
            ch, no_ems="client does not offer extended_master_secret (RFC 7627)")
        secure_reneg = (ch.ext(ExtensionType.renegotiation_info) is not None
                        or CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV in ch.cipher_suites)
        heartbeat = ch.ext(ExtensionType.heartbeat) is not None
        cid = ch.ext(ExtensionType.connection_id)
        cid_len = self.config.own_cid_length
        if cid is not None and cid_len is not None:
            # RFC 9146 §3: answer with the CID we want on the client's records.
            self.peer_cid = ext.decode_connection_id(cid)
            layout = self.config.cid_layout  # a fleet server's CIDs name it (dtls/cid.py)
            self.own_cid = (layout.issue(self.config.random_bytes) if layout is not None
                            else self.config.random_bytes(cid_len))
        self.client_random = ch.random
        self.add_transcript(HandshakeType.client_hello, seq, body)
        self.next_send_seq = seq  # RFC 6347 §4.2.2: our message_seq follows the ClientHello's
        if not self._try_resume(ch, heartbeat, secure_reneg, now, wall):
            self._full_handshake(ch, heartbeat, secure_reneg, now)

    def _try_resume(self, ch: hs.ClientHello, heartbeat: bool, secure_reneg: bool, now: float,
                    wall: float) -> bool:
        """Resume with the ClientHello's ticket when it may (RFC 5077 §3.1)."""
        ticket_data = ch.ext(ExtensionType.session_ticket)
        keys = self.config.ticket_keys
        # RFC 5077 §3.2: we issue tickets only for EMS sessions (protocol.md).
        self.issue_ticket = keys is not None and ticket_data is not None and self.ems
        if keys is None or not ticket_data:
            return False
        state = keys.open(ext.decode_session_ticket(ticket_data), wall)
        if state is None or not self._resumable(state, ch, wall):
            return False
        self._resume(ch, state, heartbeat, secure_reneg, now, wall)
        return True

    def _full_handshake(self, ch: hs.ClientHello, heartbeat: bool, secure_reneg: bool,
                        now: float) -> None:
        """Flight 4: ServerHello [Certificate] [ServerKeyExchange] [CertificateRequest]
        ServerHelloDone."""
        self.suite = suite = self._choose_suite(ch.cipher_suites)
        client_groups, client_schemes = _groups_and_schemes(ch)
        if suite.uses_ecdhe:
            self.group = next((g for g in self.config.groups if g in client_groups), None)
            if self.group is None:
                raise HandshakeFailure("no common group")
        self.server_random = self.config.random_bytes(32)
        exts = self._common_extensions(heartbeat, secure_reneg)
        if ch.ext(ExtensionType.ec_point_formats) is not None and suite.uses_ecdhe:
            exts.append(hs.Extension(ExtensionType.ec_point_formats,
                                     ext.encode_ec_point_formats(b"\x00")))
        if self.issue_ticket:
            exts.append(hs.Extension(ExtensionType.session_ticket, b""))
        sh = hs.ServerHello(self.framing.version, self.server_random, b"", suite.code, 0,
                            tuple(exts))
        msgs = [self.outgoing(0, HandshakeType.server_hello, hs.encode_server_hello(sh))]
        if suite.uses_certificate:
            chain = tuple(c.public_bytes(Encoding.DER) for c in self.config.certificate_chain)
            msgs.append(self.outgoing(0, HandshakeType.certificate,
                                      hs.encode_certificate(hs.Certificate(chain))))
        if suite.kx is not KeyExchangeKind.PSK:
            msgs.append(self._server_key_exchange(suite, client_schemes))
        if suite.uses_certificate and (self.config.require_client_cert or self.config.ca_certs
                                       or self.config.pinned_spki_sha256):
            self.cert_requested = True
            req = hs.CertificateRequest(
                bytes([ClientCertificateType.ecdsa_sign, ClientCertificateType.rsa_sign]),
                tuple(int(s) for s in self.config.signature_schemes),
                (),
            )
            msgs.append(self.outgoing(0, HandshakeType.certificate_request,
                                      hs.encode_certificate_request(req)))
        msgs.append(self.outgoing(0, HandshakeType.server_hello_done, b""))
        self.link.send_flight(msgs, now, expect_reply=True)
        self.state = (ServerState.WAIT_CERTIFICATE if self.cert_requested
                      else ServerState.WAIT_CLIENT_KEY_EXCHANGE)

    def _server_key_exchange(self, suite: SuiteInfo, client_schemes: tuple[int, ...]
                             ) -> OutMessage:
        """Our ECDHE share, signed for the certificate suites (RFC 8422 §5.4)."""
        kx = suite.kx
        assert self.group is not None
        self.key_share = self.new_key_share(self.group)
        hint = b"" if kx is KeyExchangeKind.ECDHE_PSK else None
        ske = kxw.ServerKeyExchange(hint, self.group, self.key_share.public_bytes(), None, None)
        if suite.uses_certificate:
            key = self.config.private_key
            assert key is not None
            scheme = self._choose_scheme(key, client_schemes)
            signed = self.client_random + self.server_random + ske.params_bytes()
            ske = kxw.ServerKeyExchange(None, ske.group, ske.public, scheme,
                                       certs.sign(key, SignatureScheme(scheme), signed))
        return self.outgoing(0, HandshakeType.server_key_exchange,
                             kxw.encode_server_key_exchange(ske, kx))

    def _choose_scheme(self, key: certs.PrivateKey, client_schemes: tuple[int, ...]) -> int:
        ours = certs.schemes_for_key(key)
        if not client_schemes:
            # RFC 5246 §7.4.1.4.1: no extension means SHA-1; we do not sign with SHA-1.
            client_schemes = tuple(int(s) for s in ours)
        for s in ours:
            if s in client_schemes and s in self.config.signature_schemes:
                return int(s)
        raise InsufficientSecurity("no signature scheme in common")

    # --- flight 5 ------------------------------------------------------------

    def _handle_certificate(self, seq: int, body: bytes, now: float, wall: float) -> None:
        msg = hs.decode_certificate(body)
        if not msg.chain:
            if self.config.require_client_cert:
                # security.md S3: OpenSSL answers handshake_failure (40) here.
                raise HandshakeFailure("client certificate required",
                                       failure="no_client_certificate")
        else:
            self.note_presented(chain=msg.chain)
            leaf = self.verifier().verify(msg.chain, self.wall_datetime(wall),
                                          peer_is_server=False)
            self.peer_certificate = leaf
            self.peer_chain = tuple(bytes(c) for c in msg.chain)
            self.client_public = leaf.public_key()
        self.add_transcript(HandshakeType.certificate, seq, body)
        self.state = ServerState.WAIT_CLIENT_KEY_EXCHANGE

    def _handle_cke(self, seq: int, body: bytes, now: float, wall: float) -> None:
        assert self.suite is not None
        kx = self.suite.kx
        cke = kxw.decode_client_key_exchange(body, kx)
        shared = b""
        if kx is not KeyExchangeKind.PSK:
            assert self.key_share is not None and cke.public is not None
            shared = self.key_share.exchange(cke.public)
        if self.suite.uses_psk:
            assert cke.psk_identity is not None
            self.note_presented(psk=cke.psk_identity)
            psk = self.config.lookup_psk(cke.psk_identity)
            if psk is None:
                raise UnknownPskIdentity("unknown PSK identity")  # RFC 4279 §2
            self.psk_identity = cke.psk_identity
            pms = psk_premaster(psk, shared if kx is KeyExchangeKind.ECDHE_PSK else None)
        else:
            pms = shared
        self.add_transcript(HandshakeType.client_key_exchange, seq, body)
        self.derive_master(pms)
        self.install_keys()
        self.state = (ServerState.WAIT_CERTIFICATE_VERIFY if self.client_public is not None
                      else ServerState.WAIT_CCS)

    def _handle_cv(self, seq: int, body: bytes, now: float, wall: float) -> None:
        cv = hs.decode_certificate_verify(body)
        if cv.scheme not in self.config.signature_schemes:
            raise IllegalParameter(f"CertificateVerify scheme {cv.scheme:#06x} not offered")
        assert self.client_public is not None
        # RFC 5246 §7.4.8: the signature covers every handshake message so far.
        certs.verify_signature(self.client_public, SignatureScheme(cv.scheme), cv.signature,
                               bytes(self.transcript))
        self.add_transcript(HandshakeType.certificate_verify, seq, body)
        self.state = ServerState.WAIT_CCS

    def _handle_ccs(self, seq: int, body: bytes, now: float, wall: float) -> None:
        self.state = ServerState.WAIT_FINISHED

    def _handle_finished(self, seq: int, body: bytes, now: float, wall: float) -> None:
        self.take_peer_finished(seq, body)
        if self.resuming:
            # Abbreviated handshake: the client's Finished ends it (RFC 5246 §7.3).
            self.state = ServerState.ESTABLISHED
            self.link.complete(self.completed_event(resumed=True), now)
            return
        msgs = self._ticket_messages(wall)  # hashed before our Finished (RFC 5077 §3.3)
        msgs += self.ccs_and_finished(from_client=False)
        # RFC 6347 §4.2.4: the server's last flight is not timed; it is re-sent
        # when the client's final flight repeats.
        self.link.send_flight(msgs, now, expect_reply=False)
        self.state = ServerState.ESTABLISHED
        self.link.complete(self.completed_event(), now)

    # --- tickets (RFC 5077) --------------------------------------------------------

    def _peer_identity(self) -> bytes:
        if self.peer_certificate is not None:
            return b"cert:" + self.peer_certificate.public_bytes(Encoding.DER)
        if self.psk_identity is not None:
            return b"psk:" + self.psk_identity
        return b""

    def _binding(self, identity: bytes) -> bytes:
        """A digest of what this server authenticates ``identity`` by now: its PSK, or
        the CA set for a certificate (pins and names are checked again on every
        resumption by the daemon).  A ticket resumes only while it is unchanged, so a
        replaced PSK or CA is not bypassed by a session from before."""
        h = hashlib.sha256()
        if identity.startswith(b"psk:"):
            psk = self.config.lookup_psk(identity[4:])
            h.update(b"psk\x00" + (psk or b""))
        elif identity.startswith(b"cert:"):
            h.update(b"ca\x00" + certs.certs_sha256(self.config.ca_certs))
        else:
            return b""
        return h.digest()[:16]

    def _ticket_messages(self, wall: float) -> list[OutMessage]:
        """A NewSessionTicket when the ServerHello promised one (RFC 5077 §3.3)."""
        keys = self.config.ticket_keys
        if not self.issue_ticket or keys is None:
            return []
        assert self.suite is not None
        identity = self._peer_identity()
        state = TicketState(
            version=self.framing.version, suite=int(self.suite.code),
            master_secret=self.master_secret,
            ems=self.ems, peer_identity=identity, issued_at=int(wall),
            lifetime=keys.ticket_lifetime, binding=self._binding(identity),
        )
        msg = hs.NewSessionTicket(keys.lifetime_hint, keys.seal(state, wall))
        return [self.outgoing(0, HandshakeType.new_session_ticket,
                              hs.encode_new_session_ticket(msg))]

    def _resumable(self, state: TicketState, ch: hs.ClientHello, wall: float) -> bool:
        """May this ticket resume?  If not, a full handshake follows silently."""
        if state.version not in RESUMABLE_VERSIONS or not state.ems:
            return False  # protocol.md: no resumption without EMS
        if not self.ems:
            # RFC 7627 §5.3: an EMS session resumed without EMS must abort.
            raise HandshakeFailure("resumption of an EMS session without EMS")
        if state.suite not in ch.cipher_suites or state.suite not in [
                int(s) for s in self.config.suites]:
            return False
        ident = state.peer_identity
        if not hmac.compare_digest(state.binding, self._binding(ident)):
            return False  # the PSK or the CA set changed since the ticket was made
        if ident.startswith(b"psk:"):
            return self.config.lookup_psk(ident[4:]) is not None
        if ident.startswith(b"cert:"):
            try:
                cert = x509.load_der_x509_certificate(ident[5:])
            except ValueError:
                return False
            if cert.not_valid_after_utc < self.wall_datetime(wall):
                return False
            self.peer_certificate = cert
            return True
        # Anonymous client: only when we do not authenticate clients now.
        return not self.config.require_client_cert

    def _resume(self, ch: hs.ClientHello, state: TicketState, heartbeat: bool,
                secure_reneg: bool, now: float, wall: float) -> None:
        self.resuming = True
        self.suite = SUITES[state.suite]
        self.master_secret = state.master_secret
        if state.peer_identity.startswith(b"psk:"):
            self.psk_identity = state.peer_identity[4:]
        self.server_random = self.config.random_bytes(32)
        exts = self._common_extensions(heartbeat, secure_reneg)
        if self.issue_ticket:
            exts.append(hs.Extension(ExtensionType.session_ticket, b""))
        # RFC 5077 §3.4: echoing the client's session_id says "resumed".
        sh = hs.ServerHello(self.framing.version, self.server_random, ch.session_id,
                            self.suite.code, 0, tuple(exts))
        msgs = [self.outgoing(0, HandshakeType.server_hello, hs.encode_server_hello(sh))]
        msgs += self._ticket_messages(wall)
        self.install_keys()
        msgs += self.ccs_and_finished(from_client=False)
        self.link.send_flight(msgs, now, expect_reply=True)
        self.state = ServerState.WAIT_CCS

    def _common_extensions(self, heartbeat: bool, secure_reneg: bool) -> list[hs.Extension]:
        exts: list[hs.Extension] = []
        if secure_reneg:
            exts.append(hs.Extension(ExtensionType.renegotiation_info,
                                     ext.encode_renegotiation_info(b"")))
        if self.ems:
            exts.append(hs.Extension(ExtensionType.extended_master_secret,
                                     ext.encode_extended_master_secret()))
        if heartbeat and self.config.heartbeat:
            exts.append(hs.Extension(ExtensionType.heartbeat,
                                     ext.encode_heartbeat(HeartbeatMode.peer_allowed_to_send)))
        if self.own_cid is not None:
            exts.append(hs.Extension(ExtensionType.connection_id,
                                     ext.encode_connection_id(self.own_cid)))
        return exts
