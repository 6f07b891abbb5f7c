"""dtlsvpn.wire.record: round trips, garbage handling, RFC 9146 framing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import DTLS_1_0, DTLS_1_2, MAX_CIPHERTEXT, MAX_SEQ, ContentType
from dtlsvpn.wire.record import RECORD_HEADER, Record, encode_record, parse_datagram

records = st.builds(
    Record,
    content_type=st.integers(0, 255).filter(lambda t: t != ContentType.tls12_cid),
    version=st.sampled_from([DTLS_1_2, DTLS_1_0]) | st.integers(0, 0xFFFF),
    epoch=st.integers(0, 0xFFFF),
    seq=st.integers(0, MAX_SEQ),
    fragment=st.binary(max_size=300),
)


def _encode(rec: Record) -> bytes:
    return encode_record(rec.content_type, rec.epoch, rec.seq, rec.fragment, rec.version, rec.cid)


def test_header_layout() -> None:
    assert RECORD_HEADER.size == 13
    data = encode_record(ContentType.handshake, 1, 0x0000_0102_0304, b"abc")
    assert data == bytes.fromhex("16 fefd 0001 000001020304 0003") + b"abc"


@given(st.lists(records, max_size=5))
def test_round_trip(recs: list[Record]) -> None:
    data = b"".join(_encode(r) for r in recs)
    assert parse_datagram(data) == (recs, False)


@given(st.binary(max_size=200), st.integers(0, 4))
def test_any_bytes_never_raise(data: bytes, cid_len: int) -> None:
    recs, garbage = parse_datagram(data, cid_len)
    encoded = b"".join(_encode(r) for r in recs)
    # the records are exactly a prefix of the datagram; the rest is the garbage
    assert data.startswith(encoded)
    assert garbage == (len(encoded) != len(data))


@given(st.lists(records, min_size=1, max_size=3), st.data())
def test_b5_truncated_anywhere(recs: list[Record], data: st.DataObject) -> None:
    whole = b"".join(_encode(r) for r in recs)
    cut = data.draw(st.integers(0, len(whole) - 1))
    got, garbage = parse_datagram(whole[:cut])
    assert got == recs[:len(got)]
    ends = set()
    pos = 0
    for r in recs:
        pos += 13 + len(r.fragment)
        ends.add(pos)
    assert garbage == (cut != 0 and cut not in ends)


def test_empty_datagram() -> None:
    assert parse_datagram(b"") == ([], False)


@pytest.mark.parametrize("n", range(1, 13))
def test_truncated_header(n: int) -> None:
    good = encode_record(23, 1, 7, b"payload")
    assert parse_datagram(good[:n]) == ([], True)
    first = Record(23, DTLS_1_2, 1, 7, b"payload")
    assert parse_datagram(good + good[:n]) == ([first], True)


def test_b5_length_past_datagram_end() -> None:
    first = encode_record(22, 0, 0, b"hello")
    second = bytearray(encode_record(22, 0, 1, b"0123456789"))
    second[11:13] = (100).to_bytes(2, "big")
    third = encode_record(22, 0, 2, b"never reached")
    recs, garbage = parse_datagram(first + bytes(second) + third)
    assert garbage
    assert recs == [Record(22, DTLS_1_2, 0, 0, b"hello")]


def test_b5_length_above_max_ciphertext() -> None:
    frag = bytes(MAX_CIPHERTEXT + 1)
    assert parse_datagram(encode_record(23, 1, 1, frag)) == ([], True)
    ok = parse_datagram(encode_record(23, 1, 1, frag[:-1]))
    assert ok == ([Record(23, DTLS_1_2, 1, 1, frag[:-1])], False)


def test_accepts_memoryview_and_bytearray() -> None:
    data = encode_record(21, 2, 5, b"\x01\x00") + encode_record(23, 2, 6, b"x")
    expect = parse_datagram(data)
    assert parse_datagram(memoryview(data)) == expect
    assert parse_datagram(bytearray(data)) == expect
    assert all(type(r.fragment) is bytes for r in parse_datagram(memoryview(data))[0])


def test_cid_record_round_trip() -> None:
    cid = b"\xaa\xbb\xcc\xdd"
    data = encode_record(ContentType.tls12_cid, 1, 9, b"sealed", cid=cid)
    # RFC 9146 §4: the CID sits between the sequence number and the length
    assert data[:11] == bytes.fromhex("19 fefd 0001 000000000009")
    assert data[11:15] == cid and data[15:17] == b"\x00\x06"
    plain = encode_record(23, 1, 10, b"plain")
    recs, garbage = parse_datagram(data + plain, cid_len=4)
    assert not garbage
    assert recs == [Record(25, DTLS_1_2, 1, 9, b"sealed", cid), Record(23, DTLS_1_2, 1, 10, b"plain")]


def test_cid_record_truncated_in_cid() -> None:
    data = encode_record(ContentType.tls12_cid, 1, 9, b"", cid=b"\x01" * 8)
    assert parse_datagram(data[:15], cid_len=8) == ([], True)
    assert parse_datagram(data, cid_len=8) == ([Record(25, DTLS_1_2, 1, 9, b"", b"\x01" * 8)],
                                               False)


@pytest.mark.parametrize(("epoch", "seq"), [(0, MAX_SEQ + 1), (0, -1), (0x10000, 0), (-1, 0)])
def test_encode_rejects_out_of_range(epoch: int, seq: int) -> None:
    with pytest.raises(UsageError):
        encode_record(23, epoch, seq, b"")
