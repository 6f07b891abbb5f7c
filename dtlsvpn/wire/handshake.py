"""Handshake message codecs (RFC 5246 §7.4, RFC 6347 §4.2.2 and §4.3.2).

Two layers:

* The DTLS handshake header and fragments (RFC 6347 §4.2.2)::

      struct {
          HandshakeType msg_type;  uint24 length;  uint16 message_seq;
          uint24 fragment_offset;  uint24 fragment_length;
          opaque body[fragment_length];
      } Handshake;

  One record may carry several fragments back to back.  Every fragment is
  checked for ``fragment_offset + fragment_length <= length`` (the
  CVE-2014-0195 lesson, security.md B3.1); matching fragments of one
  ``message_seq`` against each other is reassembly's job (dtls/reassembly.py).

* The message bodies, one frozen dataclass each, with ``pull_<name>(r)``,
  ``decode_<name>(body)`` (whole body, no trailing bytes) and
  ``encode_<name>(msg)`` (body only).  ServerKeyExchange and ClientKeyExchange,
  whose shape depends on the negotiated suite's key exchange, are in
  :mod:`dtlsvpn.wire.key_exchange`.

Invariants: decoders raise only :class:`DecodeError`; every vector is checked
against its declared bounds and its container before anything else reads it
(CVE-2022-35409, security.md B3.8); fields are returned as received, and
semantic checks (versions, suites offered, signature validity) belong to the
handshake machines.  Encoders raise :class:`UsageError` (or ``ValueError`` from
the buffer for an over-long vector) on values the wire cannot carry.

Sources: ClientHello / ServerHello RFC 5246 §7.4.1.2-3 and RFC 6347 §4.2.1
(cookie); HelloVerifyRequest RFC 6347 §4.2.1; Certificate §7.4.2;
CertificateRequest §7.4.4; ServerHelloDone §7.4.5; CertificateVerify §7.4.8;
Finished §7.4.9; NewSessionTicket RFC 5077 §3.3.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.buffer import Reader, Writer
from dtlsvpn.wire.constants import HANDSHAKE_HEADER_LEN
from dtlsvpn.wire.extensions import Extension, find_extension, pull_extensions, push_extensions

__all__ = [
    "MAX_SESSION_ID_LEN",
    "RANDOM_LEN",
    "VERIFY_DATA_LEN",
    "Certificate",
    "CertificateRequest",
    "CertificateVerify",
    "ClientHello",
    "Extension",
    "Finished",
    "HandshakeFragment",
    "HelloRequest",
    "HelloVerifyRequest",
    "NewSessionTicket",
    "ServerHello",
    "ServerHelloDone",
    "decode_certificate",
    "decode_certificate_request",
    "decode_certificate_verify",
    "decode_client_hello",
    "decode_finished",
    "decode_hello_request",
    "decode_hello_verify_request",
    "decode_new_session_ticket",
    "decode_server_hello",
    "decode_server_hello_done",
    "encode_certificate",
    "encode_certificate_request",
    "encode_certificate_verify",
    "encode_client_hello",
    "encode_finished",
    "encode_handshake",
    "encode_handshake_fragment",
    "encode_hello_request",
    "encode_hello_verify_request",
    "encode_new_session_ticket",
    "encode_server_hello",
    "encode_server_hello_done",
    "parse_handshake_fragments",
    "pull_client_hello",
    "pull_handshake_fragment",
    "pull_server_hello",
    "transcript_bytes",
]

RANDOM_LEN = 32  # RFC 5246 §7.4.1.2: uint32 gmt_unix_time + opaque random_bytes[28]
MAX_SESSION_ID_LEN = 32  # RFC 5246 §7.4.1.2: opaque SessionID<0..32>
VERIFY_DATA_LEN = 12  # RFC 5246 §7.4.9: 12 unless the suite says otherwise (none of ours does)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise UsageError(what)


# --- DTLS handshake header and fragments (RFC 6347 §4.2.2) ----------------------------


@dataclass(frozen=True, slots=True)
class HandshakeFragment:
    """One handshake fragment; ``length`` is the whole message's, ``body`` this piece."""

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    body: bytes

    @property
    def fragment_length(self) -> int:
        return len(self.body)

    @property
    def is_whole(self) -> bool:
        """True when this fragment is the complete message."""
        return self.fragment_offset == 0 and len(self.body) == self.length


def pull_handshake_fragment(r: Reader) -> HandshakeFragment:
    """Read one fragment header and body."""
    msg_type = r.pull_uint8()
    length = r.pull_uint24()
    message_seq = r.pull_uint16()
    fragment_offset = r.pull_uint24()
    fragment_length = r.pull_uint24()
    if fragment_offset + fragment_length > length:
        # CVE-2014-0195: a fragment must lie inside its message.
        raise DecodeError(
            f"fragment {fragment_offset}+{fragment_length} overruns message length {length}"
        )
    body = r.pull_bytes(fragment_length)
    return HandshakeFragment(msg_type, length, message_seq, fragment_offset, body)


def parse_handshake_fragments(record_fragment: bytes) -> list[HandshakeFragment]:
    """All the fragments of a handshake record, which must be consumed exactly.

    RFC 5246 §6.2.1: handshake records are never empty.
    """
    if not record_fragment:
        raise DecodeError("empty handshake record")
    r = Reader(record_fragment)
    frags: list[HandshakeFragment] = []
    while not r.eof():
        frags.append(pull_handshake_fragment(r))
    return frags


def encode_handshake_fragment(frag: HandshakeFragment) -> bytes:
    _require(frag.fragment_offset + len(frag.body) <= frag.length, "fragment overruns message")
    w = Writer()
    w.push_uint8(frag.msg_type)
    w.push_uint24(frag.length)
    w.push_uint16(frag.message_seq)
    w.push_uint24(frag.fragment_offset)
    w.push_uint24(len(frag.body))
    w.push_bytes(frag.body)
    return w.data()


def encode_handshake(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """A whole message as one fragment (offset 0, fragment_length = length)."""
    return encode_handshake_fragment(HandshakeFragment(msg_type, len(body), message_seq, 0, body))


def transcript_bytes(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """The transcript form of a message: as if sent unfragmented (RFC 6347 §4.2.6)."""
    return encode_handshake(msg_type, message_seq, body)


assert len(encode_handshake(0, 0, b"")) == HANDSHAKE_HEADER_LEN


# --- shared pieces -------------------------------------------------------------------


def _pull_random(r: Reader) -> bytes:
    return r.pull_bytes(RANDOM_LEN)


def _pull_session_id(r: Reader) -> bytes:
    session_id = r.pull_opaque8()
    if len(session_id) > MAX_SESSION_ID_LEN:
        raise DecodeError(f"session_id of {len(session_id)} bytes (max 32)")
    return session_id


def _pull_uint16_list(r: Reader, what: str, min_items: int) -> tuple[int, ...]:
    raw = r.pull_opaque16()
    if len(raw) % 2 or len(raw) < 2 * min_items:
        raise DecodeError(f"{what}: bad list length {len(raw)}")
    return tuple(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2))


def _push_uint16_list(w: Writer, values: tuple[int, ...]) -> None:
    with w.block(2):
        for v in values:
            w.push_uint16(v)


def _check_hello_fields(random: bytes, session_id: bytes) -> None:
    _require(len(random) == RANDOM_LEN, "random must be 32 bytes")
    _require(len(session_id) <= MAX_SESSION_ID_LEN, "session_id longer than 32 bytes")


# --- ClientHello (RFC 5246 §7.4.1.2, RFC 6347 §4.2.1) -----------------------------------


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[Extension, ...]

    def ext(self, t: int) -> bytes | None:
        """The data of extension ``t``, or None when absent."""
        return find_extension(self.extensions, t)


def pull_client_hello(r: Reader) -> ClientHello:
    version = r.pull_uint16()
    random = _pull_random(r)
    session_id = _pull_session_id(r)
    # RFC 6347 §4.2.1: opaque cookie<0..2^8-1>; the reader bounds it by the message
    # (CVE-2022-35409).
    cookie = r.pull_opaque8()
    # RFC 5246 §7.4.1.2: CipherSuite cipher_suites<2..2^16-2>
    cipher_suites = _pull_uint16_list(r, "cipher_suites", 1)
    # RFC 5246 §7.4.1.2: CompressionMethod compression_methods<1..2^8-1>
    compression_methods = r.pull_opaque8()
    if not compression_methods:
        raise DecodeError("no compression methods")
    extensions = pull_extensions(r)
    return ClientHello(version, random, session_id, cookie, cipher_suites,
                       compression_methods, extensions)


def decode_client_hello(body: bytes) -> ClientHello:
    r = Reader(body)
    msg = pull_client_hello(r)
    r.expect_end("ClientHello")
    return msg


def encode_client_hello(msg: ClientHello) -> bytes:
    """The body; an empty extension tuple is sent as an absent block."""
    _check_hello_fields(msg.random, msg.session_id)
    _require(bool(msg.cipher_suites), "no cipher suites")
    _require(bool(msg.compression_methods), "no compression methods")
    w = Writer()
    w.push_uint16(msg.version)
    w.push_bytes(msg.random)
    w.push_opaque8(msg.session_id)
    w.push_opaque8(msg.cookie)
    _push_uint16_list(w, msg.cipher_suites)
    w.push_opaque8(msg.compression_methods)
    if msg.extensions:
        push_extensions(w, msg.extensions)
    return w.data()


# --- ServerHello (RFC 5246 §7.4.1.3) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int
    extensions: tuple[Extension, ...]

    def ext(self, t: int) -> bytes | None:
        """The data of extension ``t``, or None when absent."""
        return find_extension(self.extensions, t)


def pull_server_hello(r: Reader) -> ServerHello:
    version = r.pull_uint16()
    random = _pull_random(r)
    session_id = _pull_session_id(r)
    cipher_suite = r.pull_uint16()
    compression_method = r.pull_uint8()
    extensions = pull_extensions(r)
    return ServerHello(version, random, session_id, cipher_suite, compression_method, extensions)


def decode_server_hello(body: bytes) -> ServerHello:
    r = Reader(body)
    msg = pull_server_hello(r)
    r.expect_end("ServerHello")
    return msg


def encode_server_hello(msg: ServerHello) -> bytes:
    """The body; an empty extension tuple is sent as an absent block."""
    _check_hello_fields(msg.random, msg.session_id)
    w = Writer()
    w.push_uint16(msg.version)
    w.push_bytes(msg.random)
    w.push_opaque8(msg.session_id)
    w.push_uint16(msg.cipher_suite)
    w.push_uint8(msg.compression_method)
    if msg.extensions:
        push_extensions(w, msg.extensions)
    return w.data()


# --- HelloVerifyRequest (RFC 6347 §4.2.1) -------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloVerifyRequest:
    version: int
    cookie: bytes


def decode_hello_verify_request(body: bytes) -> HelloVerifyRequest:
    r = Reader(body)
    version = r.pull_uint16()
    cookie = r.pull_opaque8()  # opaque cookie<0..2^8-1>
    r.expect_end("HelloVerifyRequest")
    return HelloVerifyRequest(version, cookie)


def encode_hello_verify_request(msg: HelloVerifyRequest) -> bytes:
    w = Writer()
    w.push_uint16(msg.version)
    w.push_opaque8(msg.cookie)
    return w.data()


# --- Certificate (RFC 5246 §7.4.2) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """DER certificates, sender's first; an empty chain is legal from a client (§7.4.6)."""

    chain: tuple[bytes, ...]


def decode_certificate(body: bytes) -> Certificate:
    r = Reader(body)
    chain: list[bytes] = []
    with r.block(3):  # ASN.1Cert certificate_list<0..2^24-1>
        while not r.eof():
            cert = r.pull_opaque24()  # opaque ASN.1Cert<1..2^24-1>
            if not cert:
                raise DecodeError("empty certificate in chain")
            chain.append(cert)
    r.expect_end("Certificate")
    return Certificate(tuple(chain))


def encode_certificate(msg: Certificate) -> bytes:
    _require(all(msg.chain), "empty certificate in chain")
    w = Writer()
    with w.block(3):
        for cert in msg.chain:
            w.push_opaque24(cert)
    return w.data()


# --- CertificateRequest (RFC 5246 §7.4.4) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    certificate_types: bytes
    signature_schemes: tuple[int, ...]
    authorities: tuple[bytes, ...]


def decode_certificate_request(body: bytes) -> CertificateRequest:
    r = Reader(body)
    # ClientCertificateType certificate_types<1..2^8-1>
    certificate_types = r.pull_opaque8()
    if not certificate_types:
        raise DecodeError("no certificate types")
    # SignatureAndHashAlgorithm supported_signature_algorithms<2..2^16-2>
    schemes = _pull_uint16_list(r, "supported_signature_algorithms", 1)
    authorities: list[bytes] = []
    with r.block(2):  # DistinguishedName certificate_authorities<0..2^16-1>
        while not r.eof():
            dn = r.pull_opaque16()  # opaque DistinguishedName<1..2^16-1>
            if not dn:
                raise DecodeError("empty distinguished name")
            authorities.append(dn)
    r.expect_end("CertificateRequest")
    return CertificateRequest(certificate_types, schemes, tuple(authorities))


def encode_certificate_request(msg: CertificateRequest) -> bytes:
    _require(bool(msg.certificate_types), "no certificate types")
    _require(bool(msg.signature_schemes), "no signature schemes")
    _require(all(msg.authorities), "empty distinguished name")
    w = Writer()
    w.push_opaque8(msg.certificate_types)
    _push_uint16_list(w, msg.signature_schemes)
    with w.block(2):
        for dn in msg.authorities:
            w.push_opaque16(dn)
    return w.data()


# --- empty messages: ServerHelloDone (§7.4.5), HelloRequest (§7.4.1.1) -------------------


@dataclass(frozen=True, slots=True)
class ServerHelloDone:
    pass


@dataclass(frozen=True, slots=True)
class HelloRequest:
    pass


def decode_server_hello_done(body: bytes) -> ServerHelloDone:
    Reader(body).expect_end("ServerHelloDone")
    return ServerHelloDone()


def encode_server_hello_done(msg: ServerHelloDone) -> bytes:
    return b""


def decode_hello_request(body: bytes) -> HelloRequest:
    Reader(body).expect_end("HelloRequest")
    return HelloRequest()


def encode_hello_request(msg: HelloRequest) -> bytes:
    return b""


# --- CertificateVerify (RFC 5246 §7.4.8) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateVerify:
    scheme: int
    signature: bytes


def decode_certificate_verify(body: bytes) -> CertificateVerify:
    r = Reader(body)
    scheme = r.pull_uint16()
    signature = r.pull_opaque16()
    r.expect_end("CertificateVerify")
    return CertificateVerify(scheme, signature)


def encode_certificate_verify(msg: CertificateVerify) -> bytes:
    w = Writer()
    w.push_uint16(msg.scheme)
    w.push_opaque16(msg.signature)
    return w.data()


# --- Finished (RFC 5246 §7.4.9) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finished:
    verify_data: bytes


def decode_finished(body: bytes) -> Finished:
    if len(body) != VERIFY_DATA_LEN:
        raise DecodeError(f"Finished of {len(body)} bytes, expected {VERIFY_DATA_LEN}")
    return Finished(bytes(body))


def encode_finished(msg: Finished) -> bytes:
    _require(len(msg.verify_data) == VERIFY_DATA_LEN, "verify_data must be 12 bytes")
    return bytes(msg.verify_data)


# --- NewSessionTicket (RFC 5077 §3.3) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewSessionTicket:
    """An empty ticket is legal: the server changed its mind (RFC 5077 §3.3)."""

    lifetime_hint: int
    ticket: bytes


def decode_new_session_ticket(body: bytes) -> NewSessionTicket:
    r = Reader(body)
    lifetime_hint = r.pull_uint32()  # uint32 ticket_lifetime_hint
    ticket = r.pull_opaque16()  # opaque ticket<0..2^16-1>
    r.expect_end("NewSessionTicket")
    return NewSessionTicket(lifetime_hint, ticket)


def encode_new_session_ticket(msg: NewSessionTicket) -> bytes:
    w = Writer()
    w.push_uint32(msg.lifetime_hint)
    w.push_opaque16(msg.ticket)
    return w.data()
