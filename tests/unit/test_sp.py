"""SP framing (vpn/sp.py): header checks, frames cut anywhere, bounded buffers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.errors import UsageError
from dtlsvpn.vpn.sp import (
    SP_HEADER_LEN,
    SP_PROTOCOL_DTLSVPN,
    SendQueue,
    SpError,
    SpReceiver,
    check_header,
    encode_frame,
    encode_header,
)

MTU = 1400
HEADER = encode_header()


def test_header_bytes_are_the_seed_layout() -> None:
    assert HEADER == b"\x00SP\x00\x44\x56\x00\x00"
    assert SP_PROTOCOL_DTLSVPN == 0x4456
    check_header(HEADER)


@pytest.mark.parametrize("bad, words", [
    (b"\x00SQ\x00\x44\x56\x00\x00", "invalid SP protocol header"),
    (b"GET / HT", "invalid SP protocol header"),
    (b"\x00SP\x00\x44\x56\x00\x01", "invalid SP protocol header"),  # reserved bytes
    (b"\x00SP\x01\x44\x56\x00\x00", "unknown SP version 1"),
    (b"\x00SP\x00\x00\x10\x00\x00", "SP protocol 0x0010"),  # an NNG pair socket
])
def test_bad_header_is_refused_naming_what_was_sent(bad: bytes, words: str) -> None:
    with pytest.raises(SpError, match=words) as err:
        SpReceiver(MTU).feed(bad)
    assert bad.hex()[:6] in str(err.value)


def test_bad_magic_fails_on_the_first_bytes() -> None:
    rx = SpReceiver(MTU)
    with pytest.raises(SpError):
        rx.feed(b"\x16")  # a TLS record where the SP header should be


def test_oversized_and_empty_frames_are_refused() -> None:
    rx = SpReceiver(MTU)
    rx.feed(HEADER)
    with pytest.raises(SpError, match="1401 bytes"):
        rx.feed((MTU + 1).to_bytes(8, "big"))
    rx = SpReceiver(MTU)
    with pytest.raises(SpError, match="0 bytes"):
        rx.feed(HEADER + bytes(8))
    rx = SpReceiver(MTU)
    with pytest.raises(SpError):
        rx.feed(HEADER + b"\xff" * 8)  # 2^64 - 1
    with pytest.raises(UsageError):
        encode_frame(bytes(MTU + 1), MTU)


def test_byte_by_byte() -> None:
    packets = [b"\x45" + bytes([i]) * i for i in range(1, 40)]
    wire = HEADER + b"".join(encode_frame(p, MTU) for p in packets)
    rx = SpReceiver(MTU)
    got = []
    for b in wire:
        got += rx.feed(bytes([b]))
    assert got == packets and rx.buffered == 0


def test_truncated_frame_delivers_nothing_and_waits() -> None:
    rx = SpReceiver(MTU)
    frame = encode_frame(b"\x45" * 100, MTU)
    assert rx.feed(HEADER + frame[:-1]) == []
    assert rx.buffered == len(frame) - 1 - 8  # the length is consumed, the body is held
    assert rx.feed(frame[-1:]) == [b"\x45" * 100]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=MTU), max_size=12),
       st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=50))
def test_any_split_gives_the_same_messages(packets: list[bytes], cuts: list[int]) -> None:
    wire = HEADER + b"".join(encode_frame(p, MTU) for p in packets)
    rx = SpReceiver(MTU)
    got: list[bytes] = []
    i = 0
    k = 0
    while i < len(wire):
        n = cuts[k % len(cuts)]
        got += rx.feed(wire[i:i + n])
        assert rx.buffered <= SP_HEADER_LEN + 8 + MTU
        i += n
        k += 1
    assert got == packets


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_parses_or_raises_sp_error(data: bytes) -> None:
    rx = SpReceiver(MTU)
    try:
        rx.feed(data)
    except SpError:
        return
    assert rx.buffered <= len(data)


def test_stalled_peer_is_bounded_on_both_sides() -> None:
    # Receiving: a peer announcing a full frame and trickling it holds one frame at most.
    rx = SpReceiver(MTU)
    rx.feed(HEADER + MTU.to_bytes(8, "big"))
    for _ in range(MTU - 1):
        rx.feed(b"\x00")
        assert rx.buffered <= MTU
    # Sending: a peer that stops reading: the queue keeps to its limit and counts drops.
    q = SendQueue(limit=10_000)
    frame = encode_frame(bytes(1400), MTU)
    accepted = sum(q.push(frame) for _ in range(1000))
    assert accepted == 10_000 // len(frame) and q.size <= 10_000
    assert q.dropped == 1000 - accepted
    assert q.push(HEADER, force=True) and q.size > len(frame) * accepted


def test_send_queue_partial_writes() -> None:
    q = SendQueue(limit=100)
    q.push(b"abc")
    q.push(b"defg")
    assert q.peek(5) == b"abcde"
    q.consume(2)
    assert q.peek() == b"cdefg"
    q.consume(4)
    assert q.peek() == b"g" and len(q) == 1
    q.consume(1)
    assert q.peek() == b"" and len(q) == 0
    with pytest.raises(UsageError):
        q.consume(1)
