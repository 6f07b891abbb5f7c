"""The client handshake machine (RFC 5246 §7.3, RFC 6347 §4.2).

States and the messages legal in each (anything else is unexpected_message;
CCS is the pseudo message CCS_TYPE)::

    WAIT_SERVER_HELLO   HelloVerifyRequest -> WAIT_SERVER_HELLO (ClientHello again, with cookie)
                        ServerHello        -> WAIT_CERTIFICATE (certificate suites)
                                            | WAIT_SERVER_KEY_EXCHANGE (ECDHE_PSK)
                                            | WAIT_SERVER_HELLO_DONE_OR_SKE (PSK: SKE optional)
    WAIT_CERTIFICATE    Certificate        -> WAIT_SERVER_KEY_EXCHANGE
    WAIT_SERVER_KEY_EXCHANGE ServerKeyExchange -> WAIT_CERT_REQUEST_OR_DONE
    WAIT_SERVER_HELLO_DONE_OR_SKE  ServerKeyExchange -> WAIT_CERT_REQUEST_OR_DONE
                                   ServerHelloDone   -> WAIT_CCS (our flight 5 goes out)
    WAIT_CERT_REQUEST_OR_DONE CertificateRequest -> WAIT_SERVER_HELLO_DONE (certificate suites only)
                              ServerHelloDone    -> WAIT_CCS
    WAIT_SERVER_HELLO_DONE    ServerHelloDone    -> WAIT_CCS
    WAIT_CCS            CCS                -> WAIT_FINISHED (read epoch 1 installed by the link)
    WAIT_FINISHED       Finished           -> ESTABLISHED

Checks at each step: the ServerHello picks a version, suite and extensions we
offered (RFC 5246 §7.4.1.4: no unsolicited extension), EMS when required
(RFC 7627 §5.3), an empty renegotiation_info (RFC 5746 §3.4); the chain
verifies against the configured CA/pins at the wall time passed in; the SKE
signature covers client_random + server_random + params (RFC 8422 §5.4).
"""

from __future__ import annotations

import enum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from dtlsvpn.crypto import certs
from dtlsvpn.crypto.keyexchange import psk_premaster
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.flight import OutMessage
from dtlsvpn.dtls.framing import DTLS_FRAMING, Framing
from dtlsvpn.dtls.machine import CCS_TYPE, Link, Machine
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import (
    HandshakeFailure,
    IllegalParameter,
    ProtocolVersion,
    UnsupportedExtension,
)
from dtlsvpn.wire import extensions as ext
from dtlsvpn.wire import handshake as hs
from dtlsvpn.wire import key_exchange as kxw
from dtlsvpn.wire.constants import (
    DTLS_1_0,
    DTLS_1_2,
    ClientCertificateType,
    ExtensionType,
    HandshakeType,
    HeartbeatMode,
    KeyExchangeKind,
    NamedGroup,
    SignatureScheme,
)

MAX_HELLO_VERIFY = 3  # HelloVerifyRequests accepted before we give up on a server


class ClientState(enum.Enum):
    START = "START"
    WAIT_SERVER_HELLO = "WAIT_SERVER_HELLO"
    WAIT_CERTIFICATE = "WAIT_CERTIFICATE"
    WAIT_SERVER_KEY_EXCHANGE = "WAIT_SERVER_KEY_EXCHANGE"
    WAIT_SERVER_HELLO_DONE_OR_SKE = "WAIT_SERVER_HELLO_DONE_OR_SKE"
    WAIT_CERT_REQUEST_OR_DONE = "WAIT_CERT_REQUEST_OR_DONE"
    WAIT_SERVER_HELLO_DONE = "WAIT_SERVER_HELLO_DONE"
    WAIT_NEW_SESSION_TICKET = "WAIT_NEW_SESSION_TICKET"
    WAIT_CCS = "WAIT_CCS"
    WAIT_FINISHED = "WAIT_FINISHED"
    ESTABLISHED = "ESTABLISHED"


class ClientMachine(Machine):
    def __init__(self, config: DtlsConfig, link: Link,
                 framing: Framing = DTLS_FRAMING) -> None:
        super().__init__(config, link, framing)
        self.state = ClientState.START
        self.cookie = b""
        self.hello_verify_count = 0
        self.offered_suites: tuple[int, ...] = tuple(int(s) for s in config.suites)
        self.server_public: object | None = None
        self.server_group: NamedGroup | None = None
        self.server_point = b""
        self.cert_requested = False
        self.requested_schemes: tuple[int, ...] = ()
        self.requested_types = b""
        self.psk_hint = b""
        # RFC 5077: the session we try to resume, and what the server said about tickets.
        self.session: ClientSession | None = None
        self.session_id = b""
        self.resuming = False
        self.ticket_expected = False
        self.new_ticket: hs.NewSessionTicket | None = None
        self.offered_cid: bytes | None = None
        S = ClientState
        self._table = {
            (S.WAIT_SERVER_HELLO, HandshakeType.hello_verify_request): self._handle_hello_verify,
            (S.WAIT_SERVER_HELLO, HandshakeType.server_hello): self._handle_server_hello,
            (S.WAIT_CERTIFICATE, HandshakeType.certificate): self._handle_certificate,
            (S.WAIT_SERVER_KEY_EXCHANGE, HandshakeType.server_key_exchange): self._handle_ske,
            (S.WAIT_SERVER_HELLO_DONE_OR_SKE, HandshakeType.server_key_exchange): self._handle_ske,
            (S.WAIT_SERVER_HELLO_DONE_OR_SKE, HandshakeType.server_hello_done): self._handle_done,
            (S.WAIT_CERT_REQUEST_OR_DONE, HandshakeType.certificate_request): self._handle_cert_req,
            (S.WAIT_CERT_REQUEST_OR_DONE, HandshakeType.server_hello_done): self._handle_done,
            (S.WAIT_SERVER_HELLO_DONE, HandshakeType.server_hello_done): self._handle_done,
            (S.WAIT_NEW_SESSION_TICKET, HandshakeType.new_session_ticket): self._handle_ticket,
            (S.WAIT_CCS, CCS_TYPE): self._handle_ccs,
            (S.WAIT_FINISHED, HandshakeType.finished): self._handle_finished,
        }
        if not framing.datagram:  # RFC 5246: no HelloVerifyRequest in TLS
            del self._table[(S.WAIT_SERVER_HELLO, HandshakeType.hello_verify_request)]

    # --- flight 1 / 3: ClientHello -------------------------------------------

    def start(self, now: float, wall: float) -> None:
        self.client_random = self.config.random_bytes(32)
        c = self.config
        cid_len = c.own_cid_length
        self.offered_cid = None if cid_len is None else c.random_bytes(cid_len)
        if c.session_tickets and c.resume_session is not None and c.resume_session.usable(wall):
            self.session = c.resume_session
            # RFC 5077 §3.4: a fresh session_id lets us tell resumption (echoed) apart.
            self.session_id = c.random_bytes(32)
        self.state = ClientState.WAIT_SERVER_HELLO
        self._send_client_hello(now)

    def _client_hello(self) -> hs.ClientHello:
        c = self.config
        exts = [
            hs.Extension(ExtensionType.supported_groups, ext.encode_supported_groups(c.groups)),
            hs.Extension(ExtensionType.ec_point_formats, ext.encode_ec_point_formats(b"\x00")),
            hs.Extension(
                ExtensionType.signature_algorithms,
                ext.encode_signature_algorithms(c.signature_schemes),
            ),
            hs.Extension(ExtensionType.extended_master_secret, ext.encode_extended_master_secret()),
            # RFC 5746 §3.4: an empty renegotiation_info on the initial handshake.
            hs.Extension(ExtensionType.renegotiation_info, ext.encode_renegotiation_info(b"")),
        ]
        if self.offered_cid is not None:
            # RFC 9146 §3: the CID we want on records sent to us (empty: none, but we
            # will send with the server's).
            exts.append(hs.Extension(ExtensionType.connection_id,
                                     ext.encode_connection_id(self.offered_cid)))
        if c.session_tickets:
            ticket = self.session.ticket if self.session is not None else b""
            exts.append(hs.Extension(ExtensionType.session_ticket,
                                     ext.encode_session_ticket(ticket)))
        if c.heartbeat:
            # RFC 6520 §2: we answer requests; the server's mode says whether we may send.
            exts.append(hs.Extension(ExtensionType.heartbeat,
                                     ext.encode_heartbeat(HeartbeatMode.peer_allowed_to_send)))
        return hs.ClientHello(
            self.framing.version, self.client_random, self.session_id, self.cookie,
            self.offered_suites, b"\x00", tuple(exts),
        )

    def _send_client_hello(self, now: float) -> None:
        body = self.framing.encode_client_hello(self._client_hello())
        # RFC 6347 §4.2.1: the ClientHello before a HelloVerifyRequest is not hashed;
        # the one that answers it is, from scratch.
        self.transcript.clear()
        msg = self.outgoing(0, HandshakeType.client_hello, body)
        self.link.send_flight([msg], now, expect_reply=True)

    def _handle_hello_verify(self, seq: int, body: bytes, now: float, wall: float) -> None:
        hvr = hs.decode_hello_verify_request(body)
        # RFC 6347 §4.2.1: the HVR carries 1.0 or 1.2; the client must accept either.
        if hvr.version not in (DTLS_1_0, DTLS_1_2):
            raise ProtocolVersion(f"HelloVerifyRequest version {hvr.version:#06x}")
        self.hello_verify_count += 1
        if self.hello_verify_count > MAX_HELLO_VERIFY or not hvr.cookie:
            raise HandshakeFailure("server keeps asking for a cookie")
        self.cookie = hvr.cookie
        self._send_client_hello(now)

    # --- flight 4: ServerHello .. ServerHelloDone ---------------------------

    def _handle_server_hello(self, seq: int, body: bytes, now: float, wall: float) -> None:
        sh = hs.decode_server_hello(body)
        if sh.version != self.framing.version:
            raise ProtocolVersion(f"server chose version {sh.version:#06x}")
        if sh.cipher_suite not in self.offered_suites:
            raise IllegalParameter(f"server chose suite {sh.cipher_suite:#06x} we did not offer")
        if sh.compression_method != 0:
            raise IllegalParameter("server chose compression")
        offered = {e.type for e in self._client_hello().extensions}
        for e in sh.extensions:
            if e.type not in offered:
                raise UnsupportedExtension(f"unsolicited extension {e.type}")
        self.take_hello_extensions(
            sh, no_ems="server does not support extended_master_secret (RFC 7627)")
        cid = sh.ext(ExtensionType.connection_id)
        if cid is not None and self.offered_cid is not None:
            self.peer_cid = ext.decode_connection_id(cid)
            self.own_cid = self.offered_cid
        self.add_transcript(HandshakeType.server_hello, seq, body)
        self.server_random = sh.random
        self.suite = SUITES[sh.cipher_suite]
        self.ticket_expected = sh.ext(ExtensionType.session_ticket) is not None
        if self.session is not None and sh.session_id == self.session_id:
            self._resume(sh)
            return
        kx = self.suite.kx
        if kx in (KeyExchangeKind.ECDHE_ECDSA, KeyExchangeKind.ECDHE_RSA):
            self.state = ClientState.WAIT_CERTIFICATE
        elif kx is KeyExchangeKind.ECDHE_PSK:
            self.state = ClientState.WAIT_SERVER_KEY_EXCHANGE
        else:
            self.state = ClientState.WAIT_SERVER_HELLO_DONE_OR_SKE

    def _handle_certificate(self, seq: int, body: bytes, now: float, wall: float) -> None:
        msg = hs.decode_certificate(body)
        if not msg.chain:
            raise HandshakeFailure("server sent no certificate")
        self.note_presented(chain=msg.chain)
        if self.config.verify_peer:
            leaf = self.verifier().verify(
                msg.chain, self.wall_datetime(wall), peer_is_server=True
            )
        else:
            leaf = x509.load_der_x509_certificate(msg.chain[0])
        self.peer_certificate = leaf
        self.peer_chain = tuple(bytes(c) for c in msg.chain)
        self.server_public = leaf.public_key()
        self.add_transcript(HandshakeType.certificate, seq, body)
        self.state = ClientState.WAIT_SERVER_KEY_EXCHANGE

    def _handle_ske(self, seq: int, body: bytes, now: float, wall: float) -> None:
        assert self.suite is not None
        kx = self.suite.kx
        ske = kxw.decode_server_key_exchange(body, kx)
        if ske.psk_identity_hint is not None:
            self.psk_hint = ske.psk_identity_hint
        if kx is not KeyExchangeKind.PSK:
            assert ske.group is not None and ske.public is not None
            if ske.group not in self.config.groups:
                raise IllegalParameter(f"server chose group {ske.group} we did not offer")
            self.server_group = NamedGroup(ske.group)
            self.server_point = ske.public
        if kx in (KeyExchangeKind.ECDHE_ECDSA, KeyExchangeKind.ECDHE_RSA):
            assert ske.scheme is not None and ske.signature is not None
            if ske.scheme not in self.config.signature_schemes:
                raise IllegalParameter(f"server signed with scheme {ske.scheme:#06x}")
            assert self.server_public is not None
            signed = self.client_random + self.server_random + ske.params_bytes()
            certs.verify_signature(self.server_public, ske.scheme, ske.signature, signed)
        self.add_transcript(HandshakeType.server_key_exchange, seq, body)
        self.state = ClientState.WAIT_CERT_REQUEST_OR_DONE

    def _handle_cert_req(self, seq: int, body: bytes, now: float, wall: float) -> None:
        assert self.suite is not None
        if not self.suite.uses_certificate:
            # RFC 4279 §2 / RFC 5489: no client certificates with PSK suites.
            raise HandshakeFailure("CertificateRequest in a PSK handshake")
        req = hs.decode_certificate_request(body)
        self.cert_requested = True
        self.requested_schemes = req.signature_schemes
        self.requested_types = req.certificate_types
        self.add_transcript(HandshakeType.certificate_request, seq, body)
        self.state = ClientState.WAIT_SERVER_HELLO_DONE

    def _handle_done(self, seq: int, body: bytes, now: float, wall: float) -> None:
        hs.decode_server_hello_done(body)
        self.add_transcript(HandshakeType.server_hello_done, seq, body)
        self._send_final_flight(now)
        self.state = (ClientState.WAIT_NEW_SESSION_TICKET if self.ticket_expected
                      else ClientState.WAIT_CCS)

    # --- flight 5: [Certificate] ClientKeyExchange [CertificateVerify] CCS Finished

    def _client_credentials(self) -> tuple[list[bytes], int | None]:
        """Our chain and signature scheme, or ([], None) to send an empty Certificate."""
        c = self.config
        if c.private_key is None:
            return [], None
        # RFC 5246 §7.4.4 / RFC 8422 §5.5: the key's certificate type must be asked for
        # (rsa_sign for RSA, ecdsa_sign for ECDSA and EdDSA).
        wanted = (ClientCertificateType.rsa_sign if isinstance(c.private_key, rsa.RSAPrivateKey)
                  else ClientCertificateType.ecdsa_sign)
        if wanted not in self.requested_types:
            return [], None
        for scheme in certs.schemes_for_key(c.private_key):
            if scheme in self.requested_schemes:
                return [cert.public_bytes(Encoding.DER) for cert in c.certificate_chain], scheme
        # security.md S16 / Pion #368: nothing acceptable -> an empty Certificate.
        return [], None

    def _send_final_flight(self, now: float) -> None:
        assert self.suite is not None
        kx = self.suite.kx
        msgs: list[OutMessage] = []
        scheme: int | None = None
        if self.cert_requested:
            chain, scheme = self._client_credentials()
            body = hs.encode_certificate(hs.Certificate(tuple(chain)))
            msgs.append(self.outgoing(0, HandshakeType.certificate, body))
        public: bytes | None = None
        shared = b""
        if kx is not KeyExchangeKind.PSK:
            if self.server_group is None:
                raise HandshakeFailure("no ServerKeyExchange for an ECDHE suite")
            share = self.new_key_share(self.server_group)
            public = share.public_bytes()
            shared = share.exchange(self.server_point)
        identity: bytes | None = None
        if self.suite.uses_psk:
            identity = self.config.psk_identity
            assert identity is not None and self.config.psk is not None
            self.psk_identity = identity
            other = shared if kx is KeyExchangeKind.ECDHE_PSK else None
            pms = psk_premaster(self.config.psk, other)
        else:
            pms = shared
        cke = kxw.encode_client_key_exchange(kxw.ClientKeyExchange(identity, public), kx)
        msgs.append(self.outgoing(0, HandshakeType.client_key_exchange, cke))
        # RFC 7627 §4: the session hash runs up to and including ClientKeyExchange.
        self.derive_master(pms)
        if scheme is not None:
            assert self.config.private_key is not None
            sig = certs.sign(self.config.private_key, SignatureScheme(scheme),
                             bytes(self.transcript))
            body = hs.encode_certificate_verify(hs.CertificateVerify(scheme, sig))
            msgs.append(self.outgoing(0, HandshakeType.certificate_verify, body))
        self.install_keys()
        msgs += self.ccs_and_finished(from_client=True)
        self.link.send_flight(msgs, now, expect_reply=True)

    # --- abbreviated handshake (RFC 5077 §3.1, RFC 5246 §7.3 Figure 2) -------

    def _resume(self, sh: hs.ServerHello) -> None:
        session = self.session
        assert session is not None and self.suite is not None
        if sh.cipher_suite != session.suite:
            raise IllegalParameter("resumed session with another cipher suite")
        if session.ems and not self.ems:
            # RFC 7627 §5.3: the server dropped EMS on resumption: abort.
            raise HandshakeFailure("server resumed an EMS session without EMS")
        self.resuming = True
        self.master_secret = session.master_secret
        self.install_keys()
        self.state = (ClientState.WAIT_NEW_SESSION_TICKET if self.ticket_expected
                      else ClientState.WAIT_CCS)

    # --- flight 6: [NewSessionTicket] CCS Finished -----------------------------

    def _handle_ticket(self, seq: int, body: bytes, now: float, wall: float) -> None:
        self.new_ticket = hs.decode_new_session_ticket(body)
        self.add_transcript(HandshakeType.new_session_ticket, seq, body)
        self.state = ClientState.WAIT_CCS

    def _handle_ccs(self, seq: int, body: bytes, now: float, wall: float) -> None:
        self.state = ClientState.WAIT_FINISHED

    def _handle_finished(self, seq: int, body: bytes, now: float, wall: float) -> None:
        self.take_peer_finished(seq, body)
        if self.resuming:
            # Abbreviated: our CCS and Finished close the handshake; the flight is
            # not timed, it is re-sent when the server's flight repeats (RFC 6347 §4.2.4).
            self.link.send_flight(self.ccs_and_finished(from_client=True), now,
                                  expect_reply=False)
        self.state = ClientState.ESTABLISHED
        self.link.complete(self.completed_event(resumed=self.resuming), now)
        ticket = self.new_ticket
        if ticket is not None and ticket.ticket and self.ems:
            assert self.suite is not None
            self.link.ticket_received(ClientSession(
                ticket=ticket.ticket, suite=int(self.suite.code),
                master_secret=self.master_secret, ems=self.ems, received_at=int(wall),
                lifetime_hint=ticket.lifetime_hint))

