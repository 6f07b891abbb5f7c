"""TCP coalescing toward the TUN (vpn/gro.py) and the virtio-net codec (vpn/vnet.py).

Checked against independent references (tests.fakes.packets: a word-by-word RFC 1071
sum, packets built field by field): the checksum trick, the super-packet's header and
partial checksum, segmentation back to the original segments, and every rule that keeps
a packet out of a run (flags, options, fragments, extension headers, gaps, sizes).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.vpn import gro
from dtlsvpn.vpn.gro import coalesce
from dtlsvpn.vpn.vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PLAIN_HDR,
    VNET_HDR,
    VNET_HDR_LEN,
    checksum,
    csum_add,
    segment,
)
from tests.fakes.packets import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    ref_checksum,
    ref_sum,
    tcp,
    tcp_fields,
    tcp_pseudo,
    tcp_valid,
    udp,
)
from tests.support.tcp_batches import altered_runs, batches, psh_batches

C4, S4 = "100.64.0.2", "100.64.0.1"
C6, S6 = "fd00::2", "fd00::1"
MSS = 1374


def flow(n: int, size: int = MSS, *, src: str = C4, dst: str = S4, last: int | None = None,
         first_seq: int = 1000, psh_last: bool = False, **kw: object) -> list[bytes]:
    """``n`` segments of ``size`` payload bytes (the last of ``last`` when given), ids
    counting up from 1, PSH on the last one if asked."""
    out = []
    seq = first_seq
    for i in range(n):
        plen = last if (last is not None and i == n - 1) else size
        flags = ACK | PSH if psh_last and i == n - 1 else ACK
        out.append(tcp(src, dst, seq, os.urandom(plen), ident=1 + i, flags=flags,
                       **kw))  # type: ignore[arg-type]
        seq += plen
    return out


def frames_are_plain(frames: list[bytes], packets: list[bytes]) -> bool:
    return frames == [PLAIN_HDR + p for p in packets]


# --- checksums ----------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_checksum_matches_rfc1071_word_by_word(data: bytes) -> None:
    assert csum_add(data) % 0xFFFF == ref_sum(data) % 0xFFFF
    value = checksum(data)
    # Both zeros of one's complement verify; the stored value must make the sum 0xFFFF.
    assert ref_sum(data + value.to_bytes(2, "big") if len(data) % 2 == 0
                   else data + b"\0" + value.to_bytes(2, "big")) in (0xFFFF, 0) or not data
    if data and ref_sum(data) != 0:
        assert value == ref_checksum(data) or {value, ref_checksum(data)} == {0, 0xFFFF}


@pytest.mark.parametrize("data", [b"", b"\0\0", b"\xff\xff", b"\xff\xff" * 40, b"\x01",
                                  b"\xff", bytes(1401), b"\xff" * 1401])
def test_checksum_edge_cases(data: bytes) -> None:
    if any(data):
        assert ref_sum(data + (b"\0" if len(data) & 1 else b"") +
                       checksum(data).to_bytes(2, "big")) == 0xFFFF
    else:
        assert checksum(data) == 0  # nothing to sum: -0 % 0xFFFF


# --- coalescing: the super-packet -----------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_run_becomes_one_super_packet_with_its_header(v6: bool) -> None:
    src, dst = (C6, S6) if v6 else (C4, S4)
    pkts = flow(10, src=src, dst=dst, last=500, psh_last=True)
    (frame,) = coalesce(pkts)
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack_from(frame)
    ihl = 40 if v6 else 20
    assert (flags, gso_type) == (F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4)
    assert (hdr_len, gso_size, start, offset) == (ihl + 32, MSS, ihl, 16)
    packet = frame[VNET_HDR_LEN:]
    payload = b"".join(tcp_fields(p)[3] for p in pkts)
    assert len(packet) == ihl + 32 + len(payload) and packet[ihl + 32:] == payload
    if v6:
        assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40
    else:
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet)
        assert ref_sum(packet[:20]) == 0xFFFF  # the IPv4 header checksum is right
    assert packet[ihl + 13] == ACK | PSH  # the last's PSH
    assert packet[ihl + 4:ihl + 8] == pkts[0][ihl + 4:ihl + 8]  # the first's seq
    # The checksum field holds the pseudo-header sum (not complemented): adding the rest
    # of the segment gives what a finished checksum would verify.
    tcp_part = packet[ihl:]
    partial = struct.unpack_from("!H", tcp_part, 16)[0]
    assert partial % 0xFFFF == ref_sum(tcp_pseudo(packet, len(tcp_part))) % 0xFFFF
    finished = bytearray(tcp_part)
    finished[16:18] = ref_checksum(bytes(finished)).to_bytes(2, "big")  # partial included
    assert tcp_valid(packet[:ihl] + bytes(finished))


def test_segmenting_the_super_packet_gives_the_segments_back_exactly() -> None:
    for pkts in (flow(47), flow(5, last=1), flow(3, src=C6, dst=S6, psh_last=True)):
        (frame,) = coalesce(pkts)
        assert segment(frame) == pkts


def test_a_lone_packet_and_an_empty_batch() -> None:
    (pkt,) = flow(1)
    assert coalesce([pkt]) == [PLAIN_HDR + pkt]
    assert coalesce([]) == []


def test_the_run_stays_under_64k() -> None:
    pkts = flow(64)
    frames = coalesce(pkts)
    assert len(frames) == 2
    assert all(len(f) - VNET_HDR_LEN <= 65535 for f in frames)
    assert [p for f in frames for p in segment(f)] == pkts


# --- what is never merged -------------------------------------------------------------


@pytest.mark.parametrize("flags", [ACK | SYN, ACK | FIN, ACK | RST, ACK | URG, ACK | ECE,
                                   ACK | CWR, ACK | FIN | PSH, 0, PSH])
def test_special_flags_are_never_merged(flags: int) -> None:
    pkts = flow(3)
    odd = tcp(C4, S4, 1000 + 3 * MSS, os.urandom(MSS), flags=flags, ident=4)
    after = tcp(C4, S4, 1000 + 4 * MSS, os.urandom(MSS), ident=5)
    frames = coalesce([*pkts, odd, after])
    assert frames[1] == PLAIN_HDR + odd
    assert frames[2] == PLAIN_HDR + after  # a run does not start again across it
    assert segment(frames[0]) == pkts


@pytest.mark.parametrize("change", ["tos", "ttl", "ack", "window", "options", "gap",
                                    "bigger", "df", "ports", "ip_options", "no_payload",
                                    "ecn_ce", "flow_label"])
def test_a_segment_that_differs_is_not_merged(change: str) -> None:
    v6 = change == "flow_label"
    src, dst = (C6, S6) if v6 else (C4, S4)
    pkts = flow(3, src=src, dst=dst)
    seq = 1000 + 3 * MSS
    kw: dict[str, object] = {
        "tos": {"tos": 0x10}, "ttl": {"ttl": 63}, "ack": {"ack": 8}, "window": {"window": 513},
        "options": {"options": b"\x01\x01\x08\x0a" + bytes(7) + b"\x01"}, "df": {"df": False},
        "ports": {"sport": 40001}, "ip_options": {"ip_options": b"\x01\x01\x01\x00"},
        "ecn_ce": {"tos": 0x03}, "flow_label": {"flow": 5},
    }.get(change, {})  # type: ignore[assignment]
    if change == "gap":
        seq += 1
    size = MSS + 2 if change == "bigger" else MSS
    if change == "no_payload":
        size = 0
    odd = tcp(src, dst, seq, os.urandom(size), ident=4, **kw)  # type: ignore[arg-type]
    frames = coalesce([*pkts, odd])
    assert len(frames) == 2 and frames[1] == PLAIN_HDR + odd, change
    assert segment(frames[0]) == pkts


def test_a_short_segment_ends_the_run_and_psh_too() -> None:
    short = flow(3, last=100)
    after = tcp(C4, S4, 1000 + 2 * MSS + 100, os.urandom(MSS), ident=9)
    frames = coalesce([*short, after])
    assert len(frames) == 2 and segment(frames[0]) == short
    assert frames[1] == PLAIN_HDR + after
    pushed = flow(3, psh_last=True)
    after = tcp(C4, S4, 1000 + 3 * MSS, os.urandom(MSS), ident=9)
    frames = coalesce([*pushed, after])
    assert len(frames) == 2 and segment(frames[0]) == pushed


def test_fragments_and_extension_headers_are_passed_and_close_runs() -> None:
    pkts = flow(2)
    mf = bytearray(tcp(C4, S4, 1000 + 2 * MSS, os.urandom(MSS), ident=3))
    mf[6] |= 0x20  # more fragments
    later = bytearray(udp(C4, S4, size=200))
    later[9] = 6  # a TCP fragment that is not the first (offset 8): no ports in it
    later[6:8] = b"\x00\x01"
    v6_ext = bytearray(udp(C6, S6, size=200))
    v6_ext[6] = 0  # hop-by-hop options first
    rest = flow(2, first_seq=1000 + 2 * MSS)
    for odd in (bytes(mf), bytes(later), bytes(v6_ext)):
        frames = coalesce([*pkts, odd, *rest])
        assert frames[1] == PLAIN_HDR + odd
        assert [p for f in frames[2:] for p in segment(f)] == rest  # not joined to pkts
        assert segment(frames[0]) == pkts


def test_a_flows_order_is_kept_around_its_pure_ack() -> None:
    pkts = flow(2)
    pure_ack = tcp(C4, S4, 1000 + 2 * MSS, b"", ident=3)
    rest = flow(2, first_seq=1000 + 2 * MSS)
    frames = coalesce([*pkts, pure_ack, *rest])
    assert len(frames) == 3 and frames[1] == PLAIN_HDR + pure_ack


def test_other_traffic_in_between_does_not_break_a_run() -> None:
    a = flow(4)
    b = flow(4, src=C6, dst=S6)
    icmp_like = udp(C4, S4, size=300)
    mixed = [a[0], b[0], icmp_like, a[1], b[1], a[2], b[2], a[3], b[3]]
    frames = coalesce(mixed)
    assert len(frames) == 3
    assert segment(frames[0]) == a and frames[2] == PLAIN_HDR + icmp_like
    assert segment(frames[1]) == b


# --- round trip, random -------------------------------------------------------------


def per_flow(packets: list[bytes]) -> dict[bytes, list[tuple[int, int, bytes]]]:
    flows: dict[bytes, list[tuple[int, int, bytes]]] = {}
    for p in packets:
        if p[9 if p[0] >> 4 == 4 else 6] == 6:
            key, seq, flags, payload = tcp_fields(p)
            flows.setdefault(key, []).append((seq, flags, payload))
        else:
            flows.setdefault(b"other", []).append((0, 0, p))
    return flows


@settings(max_examples=150, deadline=None)
@given(batches())
def test_coalesce_then_segment_gives_every_flow_back_in_order(packets: list[bytes]) -> None:
    frames = coalesce(packets)
    assert len(frames) <= len(packets)
    back: list[bytes] = []
    for frame in frames:
        kind = frame[1]
        if kind == GSO_NONE:
            assert frame[:VNET_HDR_LEN] == PLAIN_HDR
        assert len(frame) - VNET_HDR_LEN <= 65535 + 40
        back += segment(frame)
    assert len(back) == len(packets)
    assert per_flow(back) == per_flow(packets)  # seqs, flags, payloads, order per flow
    assert all(tcp_valid(p) for p in back if p[9 if p[0] >> 4 == 4 else 6] == 6)
    assert sorted(back) == sorted(packets)  # canonical inputs come back byte for byte


class _RefRun:
    def __init__(self, packets: list[bytes], next_seq: int, size: int, sig: bytes,
                 ipsig: int, options: bytes) -> None:
        self.packets, self.next_seq, self.size, self.total = packets, next_seq, size, size
        self.sig, self.ipsig, self.options = sig, ipsig, options
        self.sig_psh = sig[:5] + bytes((sig[5] | PSH,)) + sig[6:]


_REF_V4 = struct.Struct("!xBH2xHBB2x12sI8s")  # TOS, length, frag, TTL, proto, flow, seq, sig
_REF_V6 = struct.Struct("!IHBB36sI8s")  # class/label, length, next header, hops, ...


def coalesce_general(packets: list[bytes]) -> list[bytes]:
    """``coalesce`` as it was before its held run and before a PSH segment with no run
    open was written at once: every packet through one general path, with its own
    layouts and runs (the differential tests' plain form; only ``merge`` and
    ``_not_merged`` are shared)."""
    items: list[list[bytes]] = []
    flows: dict[bytes, _RefRun] = {}  # flow (addresses, ports) -> its open run
    for pkt in packets:
        n = len(pkt)
        b0 = pkt[0] if n else 0
        if b0 == 0x45 and n >= 40:
            tos, length, frag, ttl, proto, key, seq, sig = _REF_V4.unpack_from(pkt)
            if proto != 6 or frag & 0xBFFF or length != n:
                gro._not_merged(pkt, items, flows)  # type: ignore[arg-type]
                continue
            ihl = 20
            ipsig = (tos << 8 | ttl) << 16 | frag
            limit = 65535
        elif b0 >> 4 == 6 and n >= 60:
            ipsig, length, proto, ttl, key, seq, sig = _REF_V6.unpack_from(pkt)
            if proto != 6 or length + 40 != n:
                gro._not_merged(pkt, items, flows)  # type: ignore[arg-type]
                continue
            ihl = 40
            ipsig = ipsig << 8 | ttl
            limit = 65535 + 40
        else:
            gro._not_merged(pkt, items, flows)  # type: ignore[arg-type]
            continue
        doff = sig[4]
        flags = sig[5]
        hl = ihl + (doff >> 4) * 4
        payload = n - hl
        if (flags | PSH) != (ACK | PSH) or payload <= 0 or doff < 0x50 or doff & 0x0F:
            flows.pop(key, None)
            items.append([pkt])
            continue
        options = pkt[ihl + 20:hl]
        run = flows.get(key)
        if (run is not None and run.next_seq == seq and run.ipsig == ipsig
                and run.options == options and (sig == run.sig or sig == run.sig_psh)):
            size = run.size
            total = run.total + payload
            if payload <= size and hl + total <= limit:
                run.packets.append(pkt)
                if payload < size or flags & PSH:
                    del flows[key]
                else:
                    run.next_seq = (seq + payload) & 0xFFFFFFFF
                    run.total = total
                continue
        packets_of_run = [pkt]
        items.append(packets_of_run)
        if flags & PSH:
            flows.pop(key, None)
        else:
            flows[key] = _RefRun(packets_of_run, (seq + payload) & 0xFFFFFFFF, payload, sig,
                                 ipsig, options)
    return [PLAIN_HDR + run[0] if len(run) == 1 else gro.merge(run) for run in items]


@settings(max_examples=300, deadline=None)
@given(st.one_of(batches(), altered_runs()))
def test_coalesce_equals_the_general_path(packets: list[bytes]) -> None:
    """The held run (a continuing segment checked in one unpack) changes nothing: the
    same frames, byte for byte, as every packet through the general path."""
    assert coalesce(packets) == coalesce_general(packets)


@settings(max_examples=200, deadline=None)
@given(psh_batches())
def test_coalesce_equals_the_general_path_for_psh_segments(packets: list[bytes]) -> None:
    """A PSH segment with no run open is written as it is, with no run set up: the same
    frames, byte for byte, as the general path gives."""
    assert coalesce(packets) == coalesce_general(packets)


# --- segment: the codec on its own ---------------------------------------------------


def test_segment_completes_a_needs_csum_packet() -> None:
    pkt = tcp(C4, S4, 5, b"hello world", csum=False)
    partial = bytearray(pkt)
    partial[36:38] = (ref_sum(tcp_pseudo(pkt, len(pkt) - 20)) % 0xFFFF).to_bytes(2, "big")
    frame = VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16) + bytes(partial)
    (done,) = segment(frame)
    assert tcp_valid(done) and done[:36] == pkt[:36] and done[38:] == pkt[38:]


@pytest.mark.parametrize("frame", [b"", PLAIN_HDR, VNET_HDR.pack(F_NEEDS_CSUM, 0, 0, 0, 90, 16)
                                   + bytes(40), VNET_HDR.pack(1, GSO_TCPV4, 0, 100, 20, 16)
                                   + bytes(30), VNET_HDR.pack(1, 3, 0, 100, 20, 16) + bytes(80),
                                   VNET_HDR.pack(1, GSO_TCPV6, 0, 100, 40, 16) + bytes(80)])
def test_segment_refuses_malformed_frames(frame: bytes) -> None:
    assert segment(frame) == []
