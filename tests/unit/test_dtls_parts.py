"""Unit tests for the small pieces of the DTLS core: replay window,
reassembly, flight packing, flight timer and config validation."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.dtls.config import MIN_MTU, DtlsConfig
from dtlsvpn.dtls.flight import CCS, FlightTimer, OutMessage, pack_flight
from dtlsvpn.dtls.reassembly import (
    DENSE_SHARE,
    INTERVAL_COST,
    MAX_FRAGMENT_GAPS,
    Reassembler,
)
from dtlsvpn.dtls.replay import WINDOW_SIZE, ReplayWindow
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import (
    MAX_BUFFERED_HANDSHAKE_BYTES,
    MAX_FUTURE_MESSAGES,
    MAX_HANDSHAKE_MESSAGE,
    CipherSuite,
    ContentType,
)
from dtlsvpn.wire.handshake import HandshakeFragment, parse_handshake_fragments
from dtlsvpn.wire.record import MAX_RECORDS_PER_DATAGRAM, encode_record, parse_datagram

# --- replay window (RFC 6347 §4.1.2.6) ------------------------------------------


def test_replay_duplicates_and_window_edge() -> None:
    w = ReplayWindow()
    for seq in (0, 1, 5, 3):
        assert w.check(seq)
        w.commit(seq)
    for seq in (0, 1, 5, 3):
        assert not w.check(seq)
    assert w.check(2) and w.check(4) and w.check(6)
    w.commit(1000)
    assert not w.check(1000 - WINDOW_SIZE)  # left of the window
    assert w.check(1000 - WINDOW_SIZE + 1)
    assert not w.check(1000)


def test_b3_5_replay_check_does_not_move_window() -> None:
    # CVE-2016-2181: only commit() moves the window.
    w = ReplayWindow()
    w.commit(10)
    assert w.check(2**48 - 1)
    assert w.check(11) and w.top == 10


def test_a_jump_to_the_last_sequence_number_empties_the_window_at_once() -> None:
    # The peer picks the sequence number (48 bits): one authenticated record far ahead
    # must not shift the bitmask by the jump (2^48 bits: a MemoryError or minutes).
    w = ReplayWindow()
    w.commit(0)
    w.commit(2**48 - 1)
    assert (w.top, w.bits) == (2**48 - 1, 1)
    assert not w.check(2**48 - 1) and not w.check(0)
    assert w.check(2**48 - 2) and not w.check(2**48 - 1 - WINDOW_SIZE)
    w.commit(2**48 - 2)
    assert w.bits == 0b11


_SEQS = st.one_of(st.integers(min_value=0, max_value=400),
                  st.integers(min_value=2**48 - 400, max_value=2**48 - 1))


@given(st.lists(_SEQS, max_size=200))
def test_replay_matches_reference(seqs: list[int]) -> None:
    w = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for s in seqs:
        expected = s not in seen and s > top - WINDOW_SIZE
        assert w.check(s) == expected
        if expected:
            w.commit(s)
            seen.add(s)
            top = max(top, s)


def test_records_past_the_limit_are_left_unparsed_as_garbage() -> None:
    one = encode_record(ContentType.application_data, 1, 0, b"x")
    records, garbage = parse_datagram(one * MAX_RECORDS_PER_DATAGRAM)
    assert len(records) == MAX_RECORDS_PER_DATAGRAM and not garbage
    records, garbage = parse_datagram(one * 5000)
    assert len(records) == MAX_RECORDS_PER_DATAGRAM and garbage
    records, garbage = parse_datagram(one * 3, limit=1)
    assert len(records) == 1 and garbage


# --- reassembly (RFC 6347 §4.2.3) --------------------------------------------


def _frags(msg_type: int, seq: int, body: bytes, cuts: list[tuple[int, int]]) -> list[
        HandshakeFragment]:
    return [HandshakeFragment(msg_type, len(body), seq, a, body[a:b]) for a, b in cuts]


def test_reassembly_overlapping_out_of_order() -> None:
    body = bytes(range(200))
    r = Reassembler()
    for f in reversed(_frags(11, 0, body, [(0, 50), (40, 120), (100, 200)])):
        assert r.add(f) is None
    assert r.pop_ready() == (11, 0, body)
    assert r.pop_ready() is None and r.next_receive_seq == 1


@given(st.integers(1, 3000), st.sampled_from([1, 3, 8, 100, 1000]),
       st.randoms(use_true_random=False))
def test_reassembly_any_cover_completes(length: int, most: int, rnd: random.Random) -> None:
    """Random covers (overlapping, out of order, repeated, stray extra pieces) of a
    random message reassemble to it byte for byte; junk whose bytes disagree where
    pieces overlap reassembles to what a byte-wise model holds: the first byte to
    arrive at each offset wins.  Every delivery round
    is a retransmission of all pieces in a new order; a piece is dropped only when it
    touches nothing covered and MAX_FRAGMENT_GAPS intervals are there already; what is
    charged stays within DENSE_SHARE x the bytes received."""
    cuts = []
    pos = 0
    while pos < length:
        start = max(0, pos - rnd.randint(0, 10))
        end = min(length, pos + rnd.randint(1, most))
        cuts.append((start, end))
        pos = end
    for _ in range(rnd.randint(0, 20)):
        start = rnd.randrange(length)
        cuts.append((start, min(length, start + rnd.randint(1, most))))
    cuts += rnd.sample(cuts, rnd.randint(0, len(cuts)))
    body = rnd.randbytes(length)
    agree = rnd.random() < 0.5  # the pieces of one message (or junk that disagrees)
    r = Reassembler()
    model = bytearray(length)
    have = bytearray(length)  # 1 where covered
    for _round in range(length + 1):
        rnd.shuffle(cuts)
        for start, end in cuts:
            data = body[start:end] if agree else rnd.randbytes(end - start)
            got = r.add(HandshakeFragment(1, length, 0, start, data))
            if got is None:
                for k in range(start, end):
                    if not have[k]:
                        model[k], have[k] = data[k - start], 1
            else:
                assert got == "buffer_full"
                assert not any(have[max(0, start - 1):end + 1])
                assert (b"\0" + bytes(have)).count(b"\0\1") == MAX_FRAGMENT_GAPS
            covered = sum(have)
            assert r.buffered <= DENSE_SHARE * covered + INTERVAL_COST * MAX_FRAGMENT_GAPS
        if all(have):
            break
    assert r.pop_ready() == (1, 0, body if agree else bytes(model))
    assert r.buffered == 0


def test_reassembly_caps_disjoint_intervals_and_still_completes() -> None:
    # The audit's flood: 1-byte fragments at every other offset of one 64 KiB message
    # (32 768 of them cost 41 s of CPU when each rebuilt the whole interval list).
    length = MAX_HANDSHAKE_MESSAGE
    r = Reassembler()
    got = [r.add(HandshakeFragment(11, length, 0, off, b"a")) for off in range(1, 4001, 2)]
    assert got[:MAX_FRAGMENT_GAPS] == [None] * MAX_FRAGMENT_GAPS
    assert set(got[MAX_FRAGMENT_GAPS:]) == {"buffer_full"}
    assert r.buffered == MAX_FRAGMENT_GAPS * (1 + INTERVAL_COST)
    # What touches the covered bytes merges, so the peer's whole message still gets in.
    assert r.add(HandshakeFragment(11, length, 0, 0, b"b")) is None
    body = bytes(range(256)) * (length // 256)
    assert r.add(HandshakeFragment(11, length, 0, 0, body)) is None
    expected = bytearray(body)
    expected[0] = ord("b")
    expected[1:2 * MAX_FRAGMENT_GAPS:2] = b"a" * MAX_FRAGMENT_GAPS  # first arrival wins
    assert r.pop_ready() == (11, 0, bytes(expected))
    assert r.buffered == 0


def _min_mtu_fragments(body: bytes) -> list[HandshakeFragment]:
    dgrams = pack_flight([OutMessage(0, 11, 0, body)], MIN_MTU, lambda e: 0, _plain_seal)
    return [f for d in dgrams for rec in parse_datagram(d)[0]
            for f in parse_handshake_fragments(rec.fragment)]


@pytest.mark.parametrize("order", ["in order", "reverse", "every other lost, then all"])
def test_reassembly_64k_certificate_at_smallest_fragments(order: str) -> None:
    # Our flight's smallest fragments (MIN_MTU datagrams) cut a 64 KiB message into far
    # more pieces than MAX_FRAGMENT_GAPS, yet only disjoint pieces count: adjacent ones
    # merge, and a retransmission fills the gaps a lossy first try left.
    body = random.Random(7).randbytes(MAX_HANDSHAKE_MESSAGE)
    frags = _min_mtu_fragments(body)
    assert len(frags) > 4 * MAX_FRAGMENT_GAPS
    r = Reassembler()
    if order == "reverse":
        frags.reverse()
    elif order != "in order":
        first = [r.add(f) for f in frags[::2]]
        assert first.count(None) == MAX_FRAGMENT_GAPS and r.pop_ready() is None
    assert [r.add(f) for f in frags] == [None] * len(frags)
    assert r.pop_ready() == (11, 0, body)


def test_reassembly_charges_received_bytes_not_declared_length() -> None:
    # The audit's 65-byte datagram: four 1-byte fragments of messages declared 64 KiB
    # long held 4 x 64 KiB per half-open association.
    r = Reassembler()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for seq in range(4):
            frag = HandshakeFragment(16, MAX_HANDSHAKE_MESSAGE, seq, MAX_HANDSHAKE_MESSAGE - 1,
                                     b"x")
            assert r.add(frag) is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert r.buffered == 4 * (1 + INTERVAL_COST)
    assert held < 8 * r.buffered, held  # the message objects are not charged (10 at most)
    # So every slot of the window takes such a message, and nothing is full.
    assert [r.add(HandshakeFragment(1, 60000, s, 0, b"x"))
            for s in range(4, MAX_FUTURE_MESSAGES)] == [None] * (MAX_FUTURE_MESSAGES - 4)


def test_b3_2_reassembly_rejects_mismatched_type_or_length() -> None:
    # CVE-2014-0195 / GnuTLS #1839: fragments of one message_seq must agree.
    r = Reassembler()
    assert r.add(HandshakeFragment(11, 100, 0, 0, b"a" * 10)) is None
    assert r.add(HandshakeFragment(12, 100, 0, 10, b"b" * 10)) == "malformed"
    assert r.add(HandshakeFragment(11, 5000, 0, 10, b"b" * 10)) == "malformed"
    # An overrun (the parser refuses it first) never reaches past the message either.
    assert r.add(HandshakeFragment(11, 100, 0, 95, b"c" * 10)) == "malformed"
    assert r.pop_ready() is None


def test_b3_3_b3_4_reassembly_caps_and_zero_length_fragments() -> None:
    r = Reassembler()
    assert r.add(HandshakeFragment(1, 10, MAX_FUTURE_MESSAGES, 0, b"x" * 10)) == "buffer_full"
    big = MAX_HANDSHAKE_MESSAGE + 1
    assert r.add(HandshakeFragment(1, big, 0, 0, b"x")) == "buffer_full"
    # CVE-2022-29190: a zero-length fragment of a non-empty message is dropped.
    assert r.add(HandshakeFragment(1, 10, 0, 5, b"")) == "malformed"
    # A zero-length message (ServerHelloDone) is complete with one empty fragment.
    assert r.add(HandshakeFragment(14, 0, 0, 0, b"")) is None
    assert r.pop_ready() == (14, 0, b"")


def test_b3_3_reassembly_total_buffer_cap() -> None:
    # Future messages of 64 KiB sent in full while message 0 is missing: four fill the
    # budget, the rest are refused, and message 0 still gets in (evicting the furthest).
    body = bytes(range(256)) * (MAX_HANDSHAKE_MESSAGE // 256)
    r = Reassembler()
    results = []
    for s in range(1, MAX_FUTURE_MESSAGES):
        for off in range(0, len(body), 1000):
            results.append(r.add(HandshakeFragment(1, len(body), s, off, body[off:off + 1000])))
            assert r.buffered <= MAX_BUFFERED_HANDSHAKE_BYTES
    assert results.count("buffer_full") == 5 * len(range(0, len(body), 1000))
    assert r.buffered == MAX_BUFFERED_HANDSHAKE_BYTES
    assert r.add(HandshakeFragment(1, len(body), 0, 0, body)) is None
    assert [r.pop_ready() for _ in range(3)] == [(1, 0, body), (1, 1, body), (1, 2, body)]
    assert r.pop_ready() is None and r.buffered == 0


# --- flight packing -------------------------------------------------------------


def _plain_seal(ctype: int, epoch: int, payload: bytes) -> bytes:
    return encode_record(ctype, epoch, 0, payload)


@pytest.mark.parametrize("mtu", [200, 300, 548, 1400])
def test_pack_flight_respects_mtu_and_reassembles(mtu: int) -> None:
    bodies = [bytes([i]) * n for i, n in enumerate([90, 1500, 0, 700, 3000])]
    msgs = [OutMessage(0, 11 + i, i, b) for i, b in enumerate(bodies)]
    msgs.append(OutMessage(0, CCS, 0, b""))
    msgs.append(OutMessage(1, 20, 5, b"f" * 12))
    dgrams = pack_flight(msgs, mtu, lambda e: 24 if e else 0, _plain_seal)
    assert all(len(d) <= mtu for d in dgrams)
    r = Reassembler()
    ccs = 0
    for d in dgrams:
        records, garbage = parse_datagram(d)
        assert not garbage
        for rec in records:
            if rec.content_type == ContentType.change_cipher_spec:
                ccs += 1
                continue
            for f in parse_handshake_fragments(rec.fragment):
                assert r.add(f) is None
    assert ccs == 1
    got = []
    while (m := r.pop_ready()) is not None:
        got.append(m[2])
    assert got == [*bodies, b"f" * 12]


def test_flight_timer_backoff_and_reset() -> None:
    t = FlightTimer(1.0, 60.0)
    t.start(0.0)
    assert t.deadline == 1.0
    timeouts = []
    now = 0.0
    for _ in range(8):
        now = t.deadline or 0.0
        assert t.expired(now)
        t.backoff(now)
        timeouts.append(t.timeout)
    assert timeouts == [2, 4, 8, 16, 32, 60, 60, 60]  # RFC 6347 §4.2.4.1
    t.start(now)  # the last flight needed retransmissions: keep the backed-off value
    assert t.timeout == 60
    t.start(now)  # a flight that went through without loss resets it
    assert t.timeout == 1.0


# --- config validation ---------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(UsageError):
        DtlsConfig(is_client=True)  # nothing to authenticate with
    with pytest.raises(UsageError):
        DtlsConfig(is_client=True, psk=b"k" * 16)  # no identity
    with pytest.raises(UsageError):
        DtlsConfig(is_client=True, psk=b"k" * 16, psk_identity=b"i", mtu=100)
    with pytest.raises(UsageError):
        DtlsConfig(is_client=False)  # server without credentials
    c = DtlsConfig(is_client=True, psk=b"k" * 16, psk_identity=b"i")
    assert c.suites == (CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,)
    s = DtlsConfig(is_client=False, psk=b"k" * 16, psk_identity=b"i")
    assert s.lookup_psk(b"i") == b"k" * 16 and s.lookup_psk(b"other") is None
