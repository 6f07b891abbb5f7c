"""Known answers: first-flight ClientHellos captured from OpenSSL and GnuTLS.

The datagrams come from tests/vectors/*_clienthello.json ("how" gives the exact
command; tests/vectors/capture_clienthello.py regenerates them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtlsvpn.wire import extensions as x
from dtlsvpn.wire.constants import (
    DTLS_1_0,
    DTLS_1_2,
    CipherSuite,
    ContentType,
    ExtensionType,
    HandshakeType,
    NamedGroup,
    SignatureScheme,
)
from dtlsvpn.wire.handshake import (
    ClientHello,
    decode_client_hello,
    encode_client_hello,
    encode_handshake_fragment,
    parse_handshake_fragments,
)
from dtlsvpn.wire.record import encode_record, parse_datagram

VECTORS = Path(__file__).resolve().parents[1] / "vectors"

EMS = ExtensionType.extended_master_secret
GROUPS = ExtensionType.supported_groups
SIGALGS = ExtensionType.signature_algorithms
TICKET = ExtensionType.session_ticket
POINTS = ExtensionType.ec_point_formats
RENEG = ExtensionType.renegotiation_info
ETM = ExtensionType.encrypt_then_mac



@dataclass(frozen=True, slots=True)
class Expected:
    record_version: int
    ext_order: list[int]
    suites_include: list[int]
    suite_count: int


# what each capture carries (cross-checked with tshark, which also finds nothing malformed)
EXPECTED = {
    "openssl": Expected(
        record_version=DTLS_1_0,  # OpenSSL sends its first ClientHello in a DTLS 1.0 record
        ext_order=[POINTS, GROUPS, TICKET, ETM, EMS, SIGALGS],
        suites_include=[CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                        CipherSuite.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                        CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV],
        suite_count=28,
    ),
    "gnutls": Expected(
        record_version=DTLS_1_2,
        ext_order=[5, GROUPS, POINTS, SIGALGS, ETM, EMS, TICKET, RENEG, 28],
        suites_include=[CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                        CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                        CipherSuite.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384],
        suite_count=25,
    ),
}


def _load(tool: str) -> tuple[dict[str, str], bytes]:
    vector = json.loads((VECTORS / f"{tool}_clienthello.json").read_text())
    assert vector["how"].startswith("timeout 5 ")
    return vector, bytes.fromhex(vector["datagram_hex"])


def _client_hello(datagram: bytes) -> tuple[ClientHello, bytes]:
    records, garbage = parse_datagram(datagram)
    assert not garbage and len(records) == 1
    (rec,) = records
    assert rec.content_type == ContentType.handshake
    assert (rec.epoch, rec.seq) == (0, 0)
    frags = parse_handshake_fragments(rec.fragment)
    assert len(frags) == 1
    (frag,) = frags
    assert frag.msg_type == HandshakeType.client_hello
    assert frag.message_seq == 0 and frag.is_whole
    return decode_client_hello(frag.body), frag.body


@pytest.mark.parametrize("tool", sorted(EXPECTED))
def test_captured_client_hello(tool: str) -> None:
    expected = EXPECTED[tool]
    _, datagram = _load(tool)
    records, _ = parse_datagram(datagram)
    assert records[0].version == expected.record_version
    hello, body = _client_hello(datagram)

    assert hello.version == DTLS_1_2
    assert hello.cookie == b"" and hello.session_id == b""
    assert hello.compression_methods == b"\x00"
    assert len(hello.cipher_suites) == expected.suite_count
    for suite in expected.suites_include:
        assert suite in hello.cipher_suites
    assert [e.type for e in hello.extensions] == expected.ext_order

    # the typed helpers accept what real stacks send
    x.decode_extended_master_secret(hello.ext(EMS) or b"")
    groups = x.decode_supported_groups(hello.ext(GROUPS) or b"")
    assert {NamedGroup.x25519, NamedGroup.secp256r1, NamedGroup.secp384r1} <= set(groups)
    schemes = x.decode_signature_algorithms(hello.ext(SIGALGS) or b"")
    assert SignatureScheme.ecdsa_secp256r1_sha256 in schemes
    assert SignatureScheme.rsa_pss_rsae_sha256 in schemes
    assert x.decode_ec_point_formats(hello.ext(POINTS) or b"")[0] == 0  # uncompressed first
    assert x.decode_session_ticket(hello.ext(TICKET) or b"") == b""
    reneg = hello.ext(RENEG)
    if reneg is not None:
        assert x.decode_renegotiation_info(reneg) == b""

    # re-encoding gives back the captured bytes, body and datagram
    assert encode_client_hello(hello) == body
    rec = records[0]
    frag = parse_handshake_fragments(rec.fragment)[0]
    assert encode_handshake_fragment(frag) == rec.fragment
    assert encode_record(rec.content_type, rec.epoch, rec.seq, rec.fragment, rec.version) == datagram


def test_gnutls_record_size_limit_is_kept_as_unknown() -> None:
    _, datagram = _load("gnutls")
    hello, _ = _client_hello(datagram)
    assert hello.ext(28) == b"\x40\x00"  # RFC 8449 record_size_limit = 16384
    assert hello.ext(5) == bytes.fromhex("0100000000")  # RFC 6066 status_request (OCSP)
