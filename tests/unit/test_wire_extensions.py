"""dtlsvpn.wire.extensions: the block codec and every typed helper."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire import extensions as x
from dtlsvpn.wire.buffer import Reader
from dtlsvpn.wire.constants import ExtensionType, HeartbeatMode, NamedGroup, SignatureScheme

u16 = st.integers(0, 0xFFFF)
extension_lists = st.lists(
    st.builds(x.Extension, type=u16, data=st.binary(max_size=40)),
    max_size=6,
    unique_by=lambda e: e.type,
)

DECODERS: list[Callable[[bytes], Any]] = [
    x.decode_supported_groups,
    x.decode_ec_point_formats,
    x.decode_signature_algorithms,
    x.decode_heartbeat,
    x.decode_extended_master_secret,
    x.decode_session_ticket,
    x.decode_renegotiation_info,
    x.decode_connection_id,
]


def _pull_whole(data: bytes) -> tuple[x.Extension, ...]:
    r = Reader(data)
    exts = x.pull_extensions(r)
    r.expect_end()
    return exts


# --- the block --------------------------------------------------------------------


@given(extension_lists)
def test_block_round_trip(exts: list[x.Extension]) -> None:
    assert _pull_whole(x.encode_extensions(exts)) == tuple(exts)


@given(st.binary(max_size=120))
def test_block_any_bytes(data: bytes) -> None:
    try:
        exts = _pull_whole(data)
    except DecodeError:
        return
    assert x.encode_extensions(exts) == data or (data == b"" and exts == ())


def test_block_absent_and_empty() -> None:
    assert _pull_whole(b"") == ()
    # a zero-length block is legal syntax (RFC 5246 §7.4.1.2: <0..2^16-1>)
    assert _pull_whole(b"\x00\x00") == ()
    assert x.encode_extensions([]) == b"\x00\x00"


def test_block_duplicate_type() -> None:
    one = bytes.fromhex("0017 0000")
    with pytest.raises(DecodeError, match="duplicate"):
        _pull_whole(b"\x00\x08" + one + one)
    with pytest.raises(UsageError):
        x.encode_extensions([x.Extension(23, b""), x.Extension(23, b"")])


@pytest.mark.parametrize(
    "hexdata",
    [
        "00",  # one byte of block length
        "0005 0017 0000",  # block longer than what follows
        "0003 0017 0000",  # block ends inside an extension header
        "0004 0017 0001",  # extension data past the block end
        "0004 0017 0001 00",  # extension data past the block end, byte outside the block
        "0005 0017 0000 00",  # a stray byte inside the block
    ],
)
def test_block_malformed(hexdata: str) -> None:
    with pytest.raises(DecodeError):
        _pull_whole(bytes.fromhex(hexdata))


def test_find_extension() -> None:
    exts = (x.Extension(10, b"a"), x.Extension(0xFF01, b"\x00"))
    assert x.find_extension(exts, 0xFF01) == b"\x00"
    assert x.find_extension(exts, 23) is None


# --- typed helpers ---------------------------------------------------------------


@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
@given(data=st.binary(max_size=64))
def test_helpers_any_bytes(decode: Callable[[bytes], Any], data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(st.lists(u16, min_size=1, max_size=40))
def test_supported_groups_round_trip(groups: list[int]) -> None:
    assert x.decode_supported_groups(x.encode_supported_groups(groups)) == tuple(groups)


@given(st.lists(u16, min_size=1, max_size=40))
def test_signature_algorithms_round_trip(schemes: list[int]) -> None:
    assert x.decode_signature_algorithms(x.encode_signature_algorithms(schemes)) == tuple(schemes)


@given(st.binary(min_size=1, max_size=255))
def test_ec_point_formats_round_trip(formats: bytes) -> None:
    assert x.decode_ec_point_formats(x.encode_ec_point_formats(formats)) == formats


@given(st.integers(0, 255))
def test_heartbeat_round_trip(mode: int) -> None:
    assert x.decode_heartbeat(x.encode_heartbeat(mode)) == mode


@given(st.binary(max_size=300))
def test_session_ticket_round_trip(ticket: bytes) -> None:
    assert x.decode_session_ticket(x.encode_session_ticket(ticket)) == ticket


@given(st.binary(max_size=255))
def test_renegotiation_info_round_trip(value: bytes) -> None:
    assert x.decode_renegotiation_info(x.encode_renegotiation_info(value)) == value


@given(st.binary(max_size=255))
def test_connection_id_round_trip(cid: bytes) -> None:
    assert x.decode_connection_id(x.encode_connection_id(cid)) == cid


def test_known_answers() -> None:
    groups = [NamedGroup.x25519, NamedGroup.secp256r1, NamedGroup.secp384r1]
    assert x.encode_supported_groups(groups) == bytes.fromhex("0006 001d 0017 0018")
    assert x.encode_signature_algorithms([SignatureScheme.ecdsa_secp256r1_sha256]) == \
        bytes.fromhex("0002 0403")
    assert x.encode_ec_point_formats(b"\x00") == b"\x01\x00"
    assert x.encode_heartbeat(HeartbeatMode.peer_allowed_to_send) == b"\x01"
    assert x.encode_extended_master_secret() == b""
    x.decode_extended_master_secret(b"")
    # RFC 5746 §3.4: the initial handshake sends an empty renegotiated_connection
    assert x.encode_renegotiation_info() == b"\x00"
    assert x.encode_connection_id(b"") == b"\x00"
    assert int(ExtensionType.renegotiation_info) == 0xFF01


@pytest.mark.parametrize(
    ("decode", "hexdata"),
    [
        (x.decode_supported_groups, ""),
        (x.decode_supported_groups, "0000"),  # <2..2^16-1>: empty list
        (x.decode_supported_groups, "0003 001d 00"),  # odd length
        (x.decode_supported_groups, "0002 001d 00"),  # trailing byte
        (x.decode_supported_groups, "0004 001d"),  # list past the end
        (x.decode_signature_algorithms, "0000"),
        (x.decode_signature_algorithms, "0001 04"),
        (x.decode_signature_algorithms, "0002 0403 0503"),
        (x.decode_ec_point_formats, "00"),  # <1..2^8-1>
        (x.decode_ec_point_formats, "02 00"),
        (x.decode_ec_point_formats, "01 00 01"),
        (x.decode_heartbeat, ""),
        (x.decode_heartbeat, "0101"),
        (x.decode_extended_master_secret, "00"),
        (x.decode_renegotiation_info, ""),
        (x.decode_renegotiation_info, "01"),
        (x.decode_renegotiation_info, "00 00"),  # must consume exactly
        (x.decode_connection_id, ""),
        (x.decode_connection_id, "02 aa"),
        (x.decode_connection_id, "01 aa bb"),
    ],
)
def test_helpers_malformed(decode: Callable[[bytes], Any], hexdata: str) -> None:
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(hexdata))


def test_encoders_reject_empty_lists() -> None:
    with pytest.raises(UsageError):
        x.encode_supported_groups([])
    with pytest.raises(UsageError):
        x.encode_signature_algorithms([])
    with pytest.raises(UsageError):
        x.encode_ec_point_formats(b"")
