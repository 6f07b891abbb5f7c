"""The compiled ``segment`` (``dtlsvpn/daemon/_vnet.c``) against ``vpn/vnet.segment``, byte for byte.

The TUN offers TSO on read only with the compiled one (``daemon/tun.py``), so it must
cut what a kernel hands over exactly as the Python one does, malformed frames included:
super-packets of both families with and without options (IPv4 header options too),
odd and even payload sizes, every flag, sequence numbers that wrap, NEEDS_CSUM packets
with offsets in and out of range, and random bytes and bit flips of valid frames.
Each valid super-packet's segments also verify by the word-by-word RFC 1071 reference
(``tests.fakes.packets``), independent of both implementations.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.daemon import compiled
from dtlsvpn.vpn.vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET_HDR,
    header,
    pseudo_sum,
    segment,
)
from tests.fakes.packets import ACK, CWR, FIN, PSH, TIMESTAMPS, tcp, tcp_valid, udp
from tests.shell.conftest import needs_lane

pytestmark = needs_lane

C4, S4 = "100.64.0.2", "100.64.0.1"
C6, S6 = "fd00::2", "fd00::1"


def c_segment(frame: bytes) -> list[bytes]:
    assert compiled.segment is not None
    return compiled.segment(frame)


def super_packet(v6: bool, payload: bytes, mss: int, *, seq: int, flags: int,
                 options: bytes, ip_options: bytes, ecn: bool) -> bytes:
    """One TCP packet carrying ``payload`` as a TUN offered TSO hands it over: the
    virtio-net header (NEEDS_CSUM, GSO_TCPV4/6, ``mss``) and the pseudo-header sum in
    the TCP checksum."""
    src, dst = (C6, S6) if v6 else (C4, S4)
    pkt = bytearray(tcp(src, dst, seq, payload, flags=flags, options=options,
                        ip_options=b"" if v6 else ip_options, csum=False, ident=0xFFF0))
    ihl = 40 if v6 else (pkt[0] & 0x0F) * 4
    struct.pack_into("!H", pkt, ihl + 16, pseudo_sum(pkt, len(pkt) - ihl))
    gso = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    hdr_len = ihl + 20 + len(options)
    return header(F_NEEDS_CSUM, gso, hdr_len, mss, ihl, 16) + bytes(pkt)


@st.composite
def super_packets(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    mss = draw(st.sampled_from([1, 7, 536, 1220, 1373, 1374, 1448]))
    count = draw(st.integers(1, 6))
    size = draw(st.integers(1, min(mss * count, 20000)))
    return super_packet(
        v6, draw(st.binary(min_size=size, max_size=size)), mss,
        seq=draw(st.integers(0, 2**32 - 1)),
        flags=ACK | draw(st.sampled_from([0, PSH, FIN, CWR, PSH | FIN | CWR])),
        options=draw(st.sampled_from([b"", TIMESTAMPS])),
        ip_options=draw(st.sampled_from([b"", b"\x01\x01\x01\x00"])),
        ecn=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(super_packets())
def test_super_packets_are_cut_as_python_cuts_them(frame: bytes) -> None:
    got = c_segment(frame)
    assert got == segment(frame)
    assert got and all(tcp_valid(p) for p in got)
    _, _, _, mss, _, _ = VNET_HDR.unpack_from(frame)
    assert all(len(p) - (len(got[0]) - mss) <= mss for p in got)


@st.composite
def partial_packets(draw: st.DrawFn) -> bytes:
    """NEEDS_CSUM packets (TCP or UDP, either family, odd lengths too) with the offsets
    a kernel gives, or any offsets at all."""
    v6 = draw(st.booleans())
    src, dst = (C6, S6) if v6 else (C4, S4)
    size = draw(st.integers(0, 1500))
    if draw(st.booleans()):
        pkt = tcp(src, dst, 9, draw(st.binary(min_size=size, max_size=size)), flags=ACK | PSH,
                  csum=False)
        start, offset = (40 if v6 else 20), 16
    else:
        pkt = udp(src, dst, size=max(size, 60 if v6 else 40))
        start, offset = (40 if v6 else 20), 6
    if draw(st.booleans()):
        start, offset = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    return header(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, offset) + pkt


@settings(max_examples=300, deadline=None)
@given(partial_packets())
def test_partial_checksums_are_completed_as_python_completes_them(frame: bytes) -> None:
    assert c_segment(frame) == segment(frame)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda h, body: h + body,
              st.builds(header, st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF),
                        st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
              st.binary(max_size=300))))
def test_any_bytes_give_what_python_gives(frame: bytes) -> None:
    assert c_segment(frame) == segment(frame)


@settings(max_examples=300, deadline=None)
@given(super_packets(), st.lists(st.tuples(st.integers(0, 120), st.integers(1, 255)),
                                 min_size=1, max_size=4))
def test_bit_flips_in_the_headers_give_what_python_gives(
        frame: bytes, flips: list[tuple[int, int]]) -> None:
    """Lengths, versions, header sizes and offsets that no longer fit: the same segments
    or the same empty list."""
    mutated = bytearray(frame)
    for at, mask in flips:
        if at < len(mutated):
            mutated[at] ^= mask
    assert c_segment(bytes(mutated)) == segment(bytes(mutated))


def test_a_plain_frame_is_the_packet_and_a_short_one_nothing() -> None:
    pkt = udp(C4, S4, size=100)
    assert c_segment(bytes(10) + pkt) == [pkt] == segment(bytes(10) + pkt)
    assert c_segment(bytes(10)) == [] == segment(bytes(10))
    assert c_segment(memoryview(bytes(10) + pkt)) == [pkt]  # any buffer


def test_a_completed_checksum_of_zero_is_stored_as_ffff() -> None:
    """One's complement has two zeros.  A completed NEEDS_CSUM checksum that comes out 0
    is stored as 0xFFFF, as the kernel stores it (a UDP checksum of 0 means "none", and
    IPv6 drops such a packet); a segment's TCP checksum keeps vnet.checksum's 0."""
    for body in (bytes(40), b"\x12\x34" + b"\xed\xcb" + bytes(36)):
        frame = header(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16) + bytes(20) + body
        (got,) = c_segment(frame)
        assert got == segment(frame)[0] and got[36:38] == b"\xff\xff"
