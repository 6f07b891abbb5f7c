"""dtlsvpn.wire.handshake: fragments, every message, round trips and malformed input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.crypto.suites import KeyExchangeKind
from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire import handshake as hs
from dtlsvpn.wire import key_exchange as kxw
from dtlsvpn.wire.buffer import Reader
from dtlsvpn.wire.constants import DTLS_1_0, DTLS_1_2, ExtensionType, HandshakeType

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)
randoms = st.binary(min_size=32, max_size=32)
session_ids = st.binary(max_size=32)
extensions = st.lists(
    st.builds(hs.Extension, type=u16, data=st.binary(max_size=30)),
    max_size=6,
    unique_by=lambda e: e.type,
).map(tuple)
points = st.binary(min_size=1, max_size=255)
ALL_KX = list(KeyExchangeKind)
ECDHE_SIGNED = (KeyExchangeKind.ECDHE_ECDSA, KeyExchangeKind.ECDHE_RSA)

client_hellos = st.builds(
    hs.ClientHello,
    version=st.sampled_from([DTLS_1_2, DTLS_1_0]) | u16,
    random=randoms,
    session_id=session_ids,
    cookie=st.binary(max_size=255),
    cipher_suites=st.lists(u16, min_size=1, max_size=30).map(tuple),
    compression_methods=st.binary(min_size=1, max_size=4),
    extensions=extensions,
)
server_hellos = st.builds(
    hs.ServerHello,
    version=u16,
    random=randoms,
    session_id=session_ids,
    cipher_suite=u16,
    compression_method=u8,
    extensions=extensions,
)
hello_verify_requests = st.builds(hs.HelloVerifyRequest, version=u16, cookie=st.binary(max_size=255))
certificates = st.builds(
    hs.Certificate, chain=st.lists(st.binary(min_size=1, max_size=200), max_size=4).map(tuple)
)
certificate_requests = st.builds(
    hs.CertificateRequest,
    certificate_types=st.binary(min_size=1, max_size=5),
    signature_schemes=st.lists(u16, min_size=1, max_size=10).map(tuple),
    authorities=st.lists(st.binary(min_size=1, max_size=60), max_size=4).map(tuple),
)
certificate_verifies = st.builds(hs.CertificateVerify, scheme=u16, signature=st.binary(max_size=300))
finisheds = st.builds(hs.Finished, verify_data=st.binary(min_size=12, max_size=12))
new_session_tickets = st.builds(
    hs.NewSessionTicket, lifetime_hint=st.integers(0, 2**32 - 1), ticket=st.binary(max_size=300)
)


@st.composite
def server_key_exchanges(draw: st.DrawFn) -> tuple[KeyExchangeKind, kxw.ServerKeyExchange]:
    kx = draw(st.sampled_from(ALL_KX))
    psk = kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK)
    hint = draw(st.binary(max_size=64)) if psk else None
    group = draw(u16) if kx is not KeyExchangeKind.PSK else None
    public = draw(points) if kx is not KeyExchangeKind.PSK else None
    signed = kx in ECDHE_SIGNED
    scheme = draw(u16) if signed else None
    signature = draw(st.binary(max_size=300)) if signed else None
    return kx, kxw.ServerKeyExchange(hint, group, public, scheme, signature)


@st.composite
def client_key_exchanges(draw: st.DrawFn) -> tuple[KeyExchangeKind, kxw.ClientKeyExchange]:
    kx = draw(st.sampled_from(ALL_KX))
    psk = kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK)
    identity = draw(st.binary(max_size=64)) if psk else None
    public = draw(points) if kx is not KeyExchangeKind.PSK else None
    return kx, kxw.ClientKeyExchange(identity, public)


@st.composite
def fragments(draw: st.DrawFn) -> hs.HandshakeFragment:
    length = draw(st.integers(0, 400))
    offset = draw(st.integers(0, length))
    body = draw(st.binary(min_size=0, max_size=length - offset))
    return hs.HandshakeFragment(draw(u8), length, draw(u16), offset, body)


# (decoder, encoder, strategy) for the messages that need no key-exchange kind
PLAIN_MESSAGES: list[tuple[Callable[[bytes], Any], Callable[[Any], bytes], Any]] = [
    (hs.decode_client_hello, hs.encode_client_hello, client_hellos),
    (hs.decode_server_hello, hs.encode_server_hello, server_hellos),
    (hs.decode_hello_verify_request, hs.encode_hello_verify_request, hello_verify_requests),
    (hs.decode_certificate, hs.encode_certificate, certificates),
    (hs.decode_certificate_request, hs.encode_certificate_request, certificate_requests),
    (hs.decode_server_hello_done, hs.encode_server_hello_done, st.just(hs.ServerHelloDone())),
    (hs.decode_hello_request, hs.encode_hello_request, st.just(hs.HelloRequest())),
    (hs.decode_certificate_verify, hs.encode_certificate_verify, certificate_verifies),
    (hs.decode_finished, hs.encode_finished, finisheds),
    (hs.decode_new_session_ticket, hs.encode_new_session_ticket, new_session_tickets),
]
PLAIN_IDS = [d.__name__ for d, _, _ in PLAIN_MESSAGES]
PLAIN_DECODERS = [d for d, _, _ in PLAIN_MESSAGES]


def _parses_or_decode_error(decode: Callable[..., Any], *args: Any) -> Any:
    """Anything but a clean result or DecodeError fails the test."""
    try:
        return decode(*args)
    except DecodeError:
        return None


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize(("decode", "encode", "strategy"), PLAIN_MESSAGES, ids=PLAIN_IDS)
@given(data=st.data())
def test_round_trip(decode: Callable[[bytes], Any], encode: Callable[[Any], bytes],
                    strategy: Any, data: st.DataObject) -> None:
    msg = data.draw(strategy)
    body = encode(msg)
    assert decode(body) == msg
    assert encode(decode(body)) == body


@given(server_key_exchanges())
def test_server_key_exchange_round_trip(
    case: tuple[KeyExchangeKind, kxw.ServerKeyExchange],
) -> None:
    kx, msg = case
    body = kxw.encode_server_key_exchange(msg, kx)
    assert kxw.decode_server_key_exchange(body, kx) == msg


@given(client_key_exchanges())
def test_client_key_exchange_round_trip(
    case: tuple[KeyExchangeKind, kxw.ClientKeyExchange],
) -> None:
    kx, msg = case
    body = kxw.encode_client_key_exchange(msg, kx)
    assert kxw.decode_client_key_exchange(body, kx) == msg


@given(st.lists(fragments(), min_size=1, max_size=4))
def test_fragments_round_trip(frags: list[hs.HandshakeFragment]) -> None:
    data = b"".join(hs.encode_handshake_fragment(f) for f in frags)
    assert hs.parse_handshake_fragments(data) == frags


# --- any bytes either parse or raise DecodeError --------------------------------------


@pytest.mark.parametrize("decode", PLAIN_DECODERS, ids=PLAIN_IDS)
@given(data=st.binary(max_size=300))
def test_any_bytes(decode: Callable[[bytes], Any], data: bytes) -> None:
    _parses_or_decode_error(decode, data)


@pytest.mark.parametrize("kx", ALL_KX, ids=lambda k: k.name)
@given(data=st.binary(max_size=300))
def test_any_bytes_key_exchange(kx: KeyExchangeKind, data: bytes) -> None:
    _parses_or_decode_error(kxw.decode_server_key_exchange, data, kx)
    _parses_or_decode_error(kxw.decode_client_key_exchange, data, kx)


@given(st.binary(max_size=300))
def test_any_bytes_fragments(data: bytes) -> None:
    frags = _parses_or_decode_error(hs.parse_handshake_fragments, data)
    if frags is not None:
        assert b"".join(hs.encode_handshake_fragment(f) for f in frags) == data
        assert all(f.fragment_offset + f.fragment_length <= f.length for f in frags)
    _parses_or_decode_error(hs.pull_handshake_fragment, Reader(data))


@pytest.mark.parametrize(("decode", "encode", "strategy"), PLAIN_MESSAGES, ids=PLAIN_IDS)
@given(data=st.data())
def test_mutated_valid_messages(decode: Callable[[bytes], Any], encode: Callable[[Any], bytes],
                                strategy: Any, data: st.DataObject) -> None:
    """Truncations and byte flips of a valid body hit the length checks deep inside."""
    body = bytearray(encode(data.draw(strategy)))
    if body:
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(u8)
    cut = data.draw(st.integers(0, len(body)))
    for candidate in (bytes(body), bytes(body[:cut]), bytes(body) + b"\x00"):
        msg = _parses_or_decode_error(decode, candidate)
        if msg is not None:
            # the encodings are canonical, except that a hello with an empty
            # extension block is re-encoded with the block absent
            empty_block = isinstance(msg, (hs.ClientHello, hs.ServerHello)) and not msg.extensions
            assert encode(msg) == candidate or (empty_block and encode(msg) + b"\0\0" == candidate)


# --- fragments ------------------------------------------------------------------------


def test_fragment_header_layout() -> None:
    data = hs.encode_handshake(HandshakeType.server_hello_done, 3, b"")
    assert data == bytes.fromhex("0e 000000 0003 000000 000000")
    assert hs.transcript_bytes(HandshakeType.finished, 5, b"x" * 12) == \
        hs.encode_handshake(HandshakeType.finished, 5, b"x" * 12)
    frag = hs.parse_handshake_fragments(data)[0]
    assert frag.is_whole and frag.fragment_length == 0


def test_b3_1_fragment_overrun_cve_2014_0195() -> None:
    # message length 10, fragment at offset 8 with 4 bytes: reaches byte 12
    data = bytes.fromhex("01 00000a 0000 000008 000004") + b"ABCD"
    with pytest.raises(DecodeError, match="overruns"):
        hs.parse_handshake_fragments(data)
    # an offset alone past the end, with an empty body
    with pytest.raises(DecodeError):
        hs.parse_handshake_fragments(bytes.fromhex("01 00000a 0000 00000b 000000"))
    # exactly at the end is fine
    ok = bytes.fromhex("01 00000a 0000 000006 000004") + b"ABCD"
    assert hs.parse_handshake_fragments(ok) == [hs.HandshakeFragment(1, 10, 0, 6, b"ABCD")]
    with pytest.raises(UsageError):
        hs.encode_handshake_fragment(hs.HandshakeFragment(1, 10, 0, 8, b"ABCD"))


def test_fragment_body_past_record_end() -> None:
    data = bytes.fromhex("01 000010 0000 000000 000010") + b"short"
    with pytest.raises(DecodeError):
        hs.parse_handshake_fragments(data)


def test_several_fragments_in_one_record() -> None:
    a = hs.encode_handshake_fragment(hs.HandshakeFragment(11, 6, 1, 0, b"abc"))
    b = hs.encode_handshake_fragment(hs.HandshakeFragment(11, 6, 1, 3, b"def"))
    c = hs.encode_handshake(14, 2, b"")
    got = hs.parse_handshake_fragments(a + b + c)
    assert [(f.msg_type, f.message_seq, f.fragment_offset, f.body) for f in got] == [
        (11, 1, 0, b"abc"), (11, 1, 3, b"def"), (14, 2, 0, b""),
    ]
    with pytest.raises(DecodeError):
        hs.parse_handshake_fragments(a + b + c[:-1])


def test_empty_handshake_record() -> None:
    with pytest.raises(DecodeError):
        hs.parse_handshake_fragments(b"")


# --- ClientHello -----------------------------------------------------------------------


def _client_hello(**changes: Any) -> hs.ClientHello:
    fields: dict[str, Any] = dict(
        version=DTLS_1_2, random=bytes(range(32)), session_id=b"", cookie=b"",
        cipher_suites=(0xC02B, 0x00FF), compression_methods=b"\x00",
        extensions=(hs.Extension(ExtensionType.extended_master_secret, b""),),
    )
    fields.update(changes)
    return hs.ClientHello(**fields)


def test_client_hello_known_answer() -> None:
    body = hs.encode_client_hello(_client_hello(cookie=b"\xc0\x0c"))
    assert body == (bytes.fromhex("fefd") + bytes(range(32)) + bytes.fromhex(
        "00 02c00c 0004c02b00ff 0100 0004 00170000"))
    msg = hs.decode_client_hello(body)
    assert msg.ext(ExtensionType.extended_master_secret) == b""
    assert msg.ext(ExtensionType.heartbeat) is None


def test_b3_8_client_hello_cookie_past_end_cve_2022_35409() -> None:
    body = hs.encode_client_hello(_client_hello(extensions=()))
    cookie_at = 2 + 32 + 1
    # cookie length 255 with only the rest of the message behind it
    bad = body[:cookie_at] + b"\xff" + body[cookie_at + 1:]
    with pytest.raises(DecodeError):
        hs.decode_client_hello(bad)
    # message cut just after the cookie length byte
    with pytest.raises(DecodeError):
        hs.decode_client_hello(body[:cookie_at] + b"\x20")


def test_client_hello_vector_bounds() -> None:
    with pytest.raises(DecodeError, match="session_id"):
        hs.decode_client_hello(
            bytes.fromhex("fefd") + bytes(32) + b"\x21" + bytes(33) + bytes.fromhex("00 0002c02b 0100")
        )
    base = bytes.fromhex("fefd") + bytes(32) + b"\x00\x00"
    for tail in ("0000 0100", "0001c0 0100", "0003c02b00 0100", "0002c02b 00", "0002c02b"):
        with pytest.raises(DecodeError):
            hs.decode_client_hello(base + bytes.fromhex(tail))
    assert hs.decode_client_hello(base + bytes.fromhex("0002c02b 0100")).extensions == ()


def test_client_hello_zero_length_extension_block() -> None:
    body = hs.encode_client_hello(_client_hello(extensions=()))
    msg = hs.decode_client_hello(body + b"\x00\x00")
    assert msg.extensions == () and msg == hs.decode_client_hello(body)
    with pytest.raises(DecodeError):
        hs.decode_client_hello(body + b"\x00")  # a lone byte is neither absent nor a block
    with pytest.raises(DecodeError):
        hs.decode_client_hello(body + b"\x00\x00\x00")  # trailing byte after the block


def test_client_hello_duplicate_extension() -> None:
    body = hs.encode_client_hello(_client_hello(extensions=()))
    with pytest.raises(DecodeError, match="duplicate"):
        hs.decode_client_hello(body + bytes.fromhex("0008 0017 0000 0017 0000"))


def test_client_hello_encoder_checks() -> None:
    for bad in (dict(random=b"short"), dict(session_id=bytes(33)), dict(cipher_suites=()),
                dict(compression_methods=b"")):
        with pytest.raises(UsageError):
            hs.encode_client_hello(_client_hello(**bad))


# --- ServerHello, HelloVerifyRequest ----------------------------------------------------


def test_server_hello_without_extensions() -> None:
    body = bytes.fromhex("fefd") + bytes(32) + bytes.fromhex("00 c02b 00")
    msg = hs.decode_server_hello(body)
    assert msg == hs.ServerHello(DTLS_1_2, bytes(32), b"", 0xC02B, 0, ())
    assert hs.encode_server_hello(msg) == body
    with pytest.raises(DecodeError):
        hs.decode_server_hello(body[:-1])
    with pytest.raises(DecodeError):
        hs.decode_server_hello(body + b"\x00")


def test_hello_verify_request_known_answer() -> None:
    body = hs.encode_hello_verify_request(hs.HelloVerifyRequest(DTLS_1_0, b"\x01\x02"))
    assert body == bytes.fromhex("feff 02 0102")
    for bad in ("feff 03 0102", "feff 01 0102", "fe"):
        with pytest.raises(DecodeError):
            hs.decode_hello_verify_request(bytes.fromhex(bad))


# --- Certificate, CertificateRequest, CertificateVerify -------------------------------


def test_certificate_known_answer() -> None:
    body = hs.encode_certificate(hs.Certificate((b"AB", b"C")))
    assert body == bytes.fromhex("000009 000002 4142 000001 43")
    assert hs.decode_certificate(bytes.fromhex("000000")) == hs.Certificate(())
    for bad in ("000003 000000",  # empty certificate
                "00000a 000002 4142 000001 43",  # list past the end
                "000009 000002 4142 000002 43",  # certificate past the list
                "000008 000002 4142 000001 43",  # list ends inside a certificate
                "0000", "000000 00"):
        with pytest.raises(DecodeError):
            hs.decode_certificate(bytes.fromhex(bad))


def test_certificate_request_known_answer() -> None:
    msg = hs.CertificateRequest(b"\x40", (0x0403, 0x0807), (b"DN",))
    body = hs.encode_certificate_request(msg)
    assert body == bytes.fromhex("01 40 0004 0403 0807 0004 0002 444e")
    assert hs.decode_certificate_request(body) == msg
    for bad in ("00 0002 0403 0000",  # no certificate types
                "01 40 0000 0000",  # no schemes
                "01 40 0003 040308 0000",  # odd scheme list
                "01 40 0002 0403 0002 0000",  # empty DN
                "01 40 0002 0403 0003 0002 44",  # DN past the block
                "01 40 0002 0403 0000 00"):  # trailing byte
        with pytest.raises(DecodeError):
            hs.decode_certificate_request(bytes.fromhex(bad))


def test_certificate_verify_and_empty_messages() -> None:
    body = hs.encode_certificate_verify(hs.CertificateVerify(0x0403, b"sig"))
    assert body == bytes.fromhex("0403 0003") + b"sig"
    with pytest.raises(DecodeError):
        hs.decode_certificate_verify(body + b"x")
    for decode in (hs.decode_server_hello_done, hs.decode_hello_request):
        with pytest.raises(DecodeError):
            decode(b"\x00")


def test_finished_and_ticket() -> None:
    with pytest.raises(DecodeError):
        hs.decode_finished(bytes(11))
    with pytest.raises(DecodeError):
        hs.decode_finished(bytes(13))
    body = hs.encode_new_session_ticket(hs.NewSessionTicket(7200, b""))
    assert body == bytes.fromhex("00001c20 0000")
    with pytest.raises(DecodeError):
        hs.decode_new_session_ticket(bytes.fromhex("00001c20 0001"))


# --- key exchanges -------------------------------------------------------------------


def test_server_key_exchange_ecdhe_known_answer() -> None:
    msg = kxw.ServerKeyExchange(None, 29, b"\x11" * 32, 0x0403, b"sig")
    body = kxw.encode_server_key_exchange(msg, KeyExchangeKind.ECDHE_ECDSA)
    params = bytes.fromhex("03 001d 20") + b"\x11" * 32
    assert msg.params_bytes() == params
    assert body == params + bytes.fromhex("0403 0003") + b"sig"
    for kx in ECDHE_SIGNED:
        assert kxw.decode_server_key_exchange(body, kx) == msg
        with pytest.raises(DecodeError):
            kxw.decode_server_key_exchange(b"\x01" + body[1:], kx)  # explicit_prime curve
        with pytest.raises(DecodeError):
            kxw.decode_server_key_exchange(body + b"\x00", kx)
        with pytest.raises(DecodeError):
            kxw.decode_server_key_exchange(bytes.fromhex("03 001d 00 0403 0000"), kx)


def test_server_key_exchange_psk_forms() -> None:
    psk = kxw.ServerKeyExchange(b"hint", None, None, None, None)
    assert kxw.encode_server_key_exchange(psk, KeyExchangeKind.PSK) == b"\x00\x04hint"
    with pytest.raises(DecodeError):
        kxw.decode_server_key_exchange(b"\x00\x04hint\x00", KeyExchangeKind.PSK)
    # RFC 5489 §2: hint, then ServerECDHParams, and no signature
    ecdhe_psk = kxw.ServerKeyExchange(b"", 23, b"\x04" + b"\x22" * 64, None, None)
    body = kxw.encode_server_key_exchange(ecdhe_psk, KeyExchangeKind.ECDHE_PSK)
    assert body == b"\x00\x00" + ecdhe_psk.params_bytes()
    assert kxw.decode_server_key_exchange(body, KeyExchangeKind.ECDHE_PSK) == ecdhe_psk
    with pytest.raises(DecodeError):
        kxw.decode_server_key_exchange(body + bytes.fromhex("0403 0000"), KeyExchangeKind.ECDHE_PSK)
    with pytest.raises(UsageError):
        psk.params_bytes()
    with pytest.raises(UsageError):
        kxw.encode_server_key_exchange(psk, KeyExchangeKind.ECDHE_PSK)


def test_client_key_exchange_forms() -> None:
    ecdhe = kxw.ClientKeyExchange(None, b"\x33" * 32)
    assert kxw.encode_client_key_exchange(ecdhe, KeyExchangeKind.ECDHE_RSA) == b"\x20" + b"\x33" * 32
    psk = kxw.ClientKeyExchange(b"alice", None)
    assert kxw.encode_client_key_exchange(psk, KeyExchangeKind.PSK) == b"\x00\x05alice"
    both = kxw.ClientKeyExchange(b"alice", b"\x33" * 32)
    body = kxw.encode_client_key_exchange(both, KeyExchangeKind.ECDHE_PSK)
    assert body == b"\x00\x05alice\x20" + b"\x33" * 32
    assert kxw.decode_client_key_exchange(body, KeyExchangeKind.ECDHE_PSK) == both
    for kx, bad in ((KeyExchangeKind.ECDHE_ECDSA, b"\x00"),  # empty point
                    (KeyExchangeKind.ECDHE_ECDSA, b"\x02\x01"),
                    (KeyExchangeKind.PSK, b"\x00\x05alic"),
                    (KeyExchangeKind.PSK, b"\x00\x05alice\x00"),
                    (KeyExchangeKind.ECDHE_PSK, b"\x00\x05alice")):
        with pytest.raises(DecodeError):
            kxw.decode_client_key_exchange(bad, kx)
    with pytest.raises(UsageError):
        kxw.encode_client_key_exchange(psk, KeyExchangeKind.ECDHE_PSK)
