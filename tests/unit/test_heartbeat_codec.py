"""dtlsvpn.wire.heartbeat: RFC 6520 §4 codec and the Heartbleed checks (security.md B2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.constants import HeartbeatMessageType
from dtlsvpn.wire.heartbeat import (
    MAX_HEARTBEAT_LEN,
    HeartbeatMessage,
    decode_heartbeat,
    encode_heartbeat,
    heartbeat_length,
)

REQ = HeartbeatMessageType.heartbeat_request
RESP = HeartbeatMessageType.heartbeat_response

# security.md B2 / tlsfuzzer test-heartbeat.py: payload_length values that must be dropped
# when the record does not actually hold them (+ 16 bytes of padding).
HEARTBLEED_LENGTHS = [0xFFFF, 0x00FF, 29, 30, 31, 32, 64, 0x0100, 0x3FFC, 0x3FFD, 0x3FFE, 0x4000]


def test_known_answer() -> None:
    wire = encode_heartbeat(REQ, b"abc", bytes(16))
    assert wire == b"\x01\x00\x03abc" + bytes(16)
    assert decode_heartbeat(wire) == HeartbeatMessage(1, b"abc")
    assert heartbeat_length(3, 16) == len(wire)


def test_empty_payload_is_valid() -> None:
    assert decode_heartbeat(b"\x01\x00\x00" + bytes(16)) == HeartbeatMessage(1, b"")


def test_padding_is_ignored_and_may_be_large() -> None:
    wire = encode_heartbeat(REQ, b"ping", b"\xaa" * (MAX_HEARTBEAT_LEN - 7))
    assert len(wire) == MAX_HEARTBEAT_LEN
    assert decode_heartbeat(wire) == HeartbeatMessage(1, b"ping")


@pytest.mark.parametrize("padding", range(16))
def test_short_padding_dropped(padding: int) -> None:
    # RFC 6520 §4: padding_length MUST be at least 16.
    with pytest.raises(DecodeError):
        decode_heartbeat(b"\x01\x00\x04ping" + bytes(padding))


@pytest.mark.parametrize("hb_type", [0, 3, 0x7F, 0xFF])
def test_unknown_type_returned_raw(hb_type: int) -> None:
    msg = decode_heartbeat(bytes((hb_type, 0, 1)) + b"x" + bytes(16))
    assert msg == HeartbeatMessage(hb_type, b"x")


def test_over_limit_dropped() -> None:
    ok = encode_heartbeat(RESP, b"", bytes(MAX_HEARTBEAT_LEN - 3))
    assert decode_heartbeat(ok).payload == b""
    with pytest.raises(DecodeError):
        decode_heartbeat(ok + b"\x00")
    with pytest.raises(DecodeError):
        decode_heartbeat(encode_heartbeat(REQ, b"", bytes(600)), max_length=512)


@pytest.mark.parametrize("payload_length", HEARTBLEED_LENGTHS)
@pytest.mark.parametrize("present", [0, 1, 2, 16, 17, 28])
def test_heartbleed_short_records(payload_length: int, present: int) -> None:
    # `01 | payload_length | present bytes`: nothing may be echoed past what arrived.
    record = bytes((REQ, payload_length >> 8, payload_length & 0xFF)) + b"\xee" * present
    with pytest.raises(DecodeError):
        decode_heartbeat(record)


@pytest.mark.parametrize("payload_length", HEARTBLEED_LENGTHS)
def test_heartbleed_one_byte_short(payload_length: int) -> None:
    # The longest record that is still one byte short of payload + 16 padding.
    n = min(3 + payload_length + 15, MAX_HEARTBEAT_LEN)
    record = bytes((REQ, payload_length >> 8, payload_length & 0xFF)) + b"\xee" * (n - 3)
    with pytest.raises(DecodeError):
        decode_heartbeat(record)


@given(st.sampled_from(HEARTBLEED_LENGTHS), st.data())
def test_heartbleed_any_short_length(payload_length: int, data: st.DataObject) -> None:
    limit = min(3 + payload_length + 16, MAX_HEARTBEAT_LEN + 1)
    body = data.draw(st.binary(max_size=limit - 1 - 3))
    with pytest.raises(DecodeError):
        decode_heartbeat(bytes((REQ, payload_length >> 8, payload_length & 0xFF)) + body)


@given(st.binary(max_size=MAX_HEARTBEAT_LEN + 64))
def test_any_bytes(data: bytes) -> None:
    try:
        msg = decode_heartbeat(data)
    except DecodeError:
        if 19 <= len(data) <= MAX_HEARTBEAT_LEN:
            assert int.from_bytes(data[1:3], "big") + 19 > len(data)
    else:
        assert isinstance(msg, HeartbeatMessage)
        assert msg.type == data[0]
        assert len(msg.payload) == int.from_bytes(data[1:3], "big")
        assert msg.payload == data[3 : 3 + len(msg.payload)]
        assert len(data) - 3 - len(msg.payload) >= 16


@given(
    st.integers(0, 255),
    st.binary(max_size=2048),
    st.integers(16, 4096),
)
def test_round_trip(hb_type: int, payload: bytes, padding_len: int) -> None:
    wire = encode_heartbeat(hb_type, payload, b"\x5a" * padding_len)
    assert len(wire) == heartbeat_length(len(payload), padding_len)
    assert decode_heartbeat(wire) == HeartbeatMessage(hb_type, payload)


def test_encode_refuses_what_we_must_not_send() -> None:
    with pytest.raises(UsageError):
        encode_heartbeat(REQ, b"x", bytes(15))  # RFC 6520 §4: padding >= 16
    with pytest.raises(UsageError):
        encode_heartbeat(REQ, b"x", bytes(MAX_HEARTBEAT_LEN))  # over 2^14
    with pytest.raises(UsageError):
        encode_heartbeat(256, b"x", bytes(16))
    with pytest.raises(UsageError):
        encode_heartbeat(REQ, bytes(0x10000), bytes(16))
