"""TCP MSS clamping on hand-built SYNs: values, RFC 1624 checksums, what is left alone."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.vpn.mss import clamp_batch, clamp_lone, clamp_syn, mss_for_mtu

SRC4, DST4 = ipaddress.ip_address("100.64.1.10").packed, ipaddress.ip_address("100.64.2.10").packed
SRC6, DST6 = ipaddress.ip_address("fd00:1::10").packed, ipaddress.ip_address("fd00:2::10").packed
SYN, ACK = 0x02, 0x10


def ref_checksum(data: bytes) -> int:
    """RFC 1071 word by word (independent of the module under test)."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mss_option(value: int) -> bytes:
    return struct.pack("!BBH", 2, 4, value)


def tcp_segment(src: bytes, dst: bytes, options: bytes, flags: int = SYN,
                payload: bytes = b"") -> bytes:
    options += b"\0" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", 40000, 5001, 1234, 0, doff << 4, flags, 64240, 0, 0)
    seg = hdr + options + payload
    pseudo = src + dst + (struct.pack("!BBH", 0, 6, len(seg)) if len(src) == 4
                          else struct.pack("!I3xB", len(seg), 6))
    csum = ref_checksum(pseudo + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def ipv4(options: bytes, flags: int = SYN, frag: int = 0x4000, payload: bytes = b"") -> bytes:
    seg = tcp_segment(SRC4, DST4, options, flags, payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, frag, 64, 6, 0, SRC4, DST4)
    hdr = hdr[:10] + struct.pack("!H", ref_checksum(hdr)) + hdr[12:]
    return hdr + seg


def ipv6(options: bytes, flags: int = SYN, payload: bytes = b"") -> bytes:
    seg = tcp_segment(SRC6, DST6, options, flags, payload)
    return struct.pack("!IHBB16s16s", 0x60000000, len(seg), 6, 64, SRC6, DST6) + seg


def tcp_checksum_ok(pkt: bytes) -> bool:
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        seg = pkt[ihl:]
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    else:
        seg = pkt[40:]
        pseudo = pkt[8:40] + struct.pack("!I3xB", len(seg), 6)
    return ref_checksum(pseudo + seg) == 0


def mss_of(pkt: bytes) -> int | None:
    tcp = (pkt[0] & 15) * 4 if pkt[0] >> 4 == 4 else 40
    end = tcp + (pkt[tcp + 12] >> 4) * 4
    pos = tcp + 20
    while pos < end:
        kind = pkt[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if kind == 2:
            return int(struct.unpack_from("!H", pkt, pos + 2)[0])
        pos += pkt[pos + 1]
    return None


def test_clamp_values_for_mtu() -> None:
    assert mss_for_mtu(1347) == (1307, 1287)
    assert mss_for_mtu(1280) == (1240, 1220)


def test_v4_syn_is_clamped_and_checksum_verified() -> None:
    pkt = ipv4(mss_option(1460) + b"\x01\x01\x04\x02")  # MSS, NOP, NOP, SACK permitted
    assert tcp_checksum_ok(pkt)
    batch = [pkt]
    assert clamp_batch(batch, 1307, 1287) == 1
    out = batch[0]
    assert mss_of(out) == 1307 and tcp_checksum_ok(out)
    assert len(out) == len(pkt) and out[:20] == pkt[:20]  # IP header (and its checksum) kept
    diff = [i for i in range(len(pkt)) if pkt[i] != out[i]]
    assert diff and all(i in (36, 37, 42, 43) for i in diff)  # checksum and MSS bytes only


def test_v6_syn_ack_is_clamped_and_checksum_verified() -> None:
    pkt = ipv6(b"\x01" + mss_option(1440) + b"\x01\x01\x01", flags=SYN | ACK)
    assert tcp_checksum_ok(pkt)
    batch = [pkt]
    assert clamp_batch(batch, 1307, 1287) == 1
    assert mss_of(batch[0]) == 1287 and tcp_checksum_ok(batch[0])


def test_odd_offset_mss_checksum() -> None:
    # One NOP before the option puts the MSS value at an odd offset of the header.
    for pkt, mss in ((ipv4(b"\x01" + mss_option(8960)), 1307),
                     (ipv6(b"\x01" + mss_option(0xFF01)), 0x01FF)):
        batch = [pkt]
        assert clamp_batch(batch, mss, mss) == 1
        assert mss_of(batch[0]) == mss and tcp_checksum_ok(batch[0])


def test_clamp_lone_clamps_a_syn_and_leaves_the_rest() -> None:
    """``clamp_lone`` (the lone lanes' clamp, and ``clamp_batch``'s per packet): a SYN
    (IPv4 and IPv6, SYN-ACK too) above the limit comes back clamped with a correct
    checksum; an ACK, a short packet and a SYN already below the limit give None."""
    for syn, limit in ((ipv4(mss_option(1460)), 1360), (ipv6(mss_option(1440), SYN | ACK), 1340)):
        out = clamp_lone(syn, 1360, 1340)
        assert out is not None and mss_of(out) == limit and tcp_checksum_ok(out)
        assert len(out) == len(syn) and out[:16] == syn[:16]
    assert clamp_lone(ipv4(mss_option(1460), ACK), 1360, 1340) is None
    assert clamp_lone(ipv6(mss_option(1460), ACK), 1360, 1340) is None
    assert clamp_lone(ipv4(mss_option(1300)), 1360, 1340) is None
    assert clamp_lone(ipv4(mss_option(1460))[:39], 1360, 1340) is None
    assert clamp_lone(ipv6(mss_option(1460))[:59], 1360, 1340) is None
    assert clamp_lone(b"", 1360, 1340) is None


def test_syn_without_mss_option_is_untouched() -> None:
    for pkt in (ipv4(b""), ipv4(b"\x01\x01\x04\x02"), ipv6(b""), ipv6(b"\x04\x02\x00\x00")):
        batch = [pkt]
        assert clamp_batch(batch, 1000, 1000) == 0
        assert batch[0] is pkt


def test_small_mss_is_never_raised() -> None:
    pkt = ipv4(mss_option(536))
    batch = [pkt]
    assert clamp_batch(batch, 1307, 1287) == 0 and batch[0] is pkt


def test_only_syns_are_touched() -> None:
    packets = [
        ipv4(mss_option(1460), flags=ACK, payload=b"x" * 100),  # data segment
        ipv6(mss_option(1460), flags=ACK),
        ipv4(mss_option(1460), frag=0x0010),  # a non-first fragment that looks like a SYN
        b"\x45" + bytes(60),  # protocol 0
        bytes(80),  # not IP
        b"\x45\x00",  # truncated
    ]
    batch = list(packets)
    assert clamp_batch(batch, 100, 100) == 0
    assert all(a is b for a, b in zip(batch, packets, strict=True))


def test_malformed_options_left_alone() -> None:
    for opts in (b"\x08\x00" + mss_option(1460),  # zero length before the MSS option
                 b"\x08\x40" + mss_option(1460),  # length beyond the header
                 b"\x00" + b"\x00\x00\x00" + mss_option(1460)):  # end of list first
        pkt = ipv4(opts)
        assert clamp_syn(pkt, 20, 100) is None


_option = st.one_of(
    st.just(b"\x01"),
    st.binary(min_size=0, max_size=6).map(lambda b: bytes([8, len(b) + 2]) + b),
)


@given(st.lists(_option, max_size=5), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.booleans(), st.lists(_option, max_size=3))
def test_any_layout_keeps_a_valid_checksum(before: list[bytes], value: int, clamp: int,
                                           v6: bool, after: list[bytes]) -> None:
    opts = b"".join(before) + mss_option(value) + b"".join(after)
    if len(opts) > 40:
        return
    pkt = ipv6(opts) if v6 else ipv4(opts)
    batch = [pkt]
    n = clamp_batch(batch, clamp, clamp)
    assert n == (1 if value > clamp else 0)
    assert mss_of(batch[0]) == min(value, clamp)
    assert tcp_checksum_ok(batch[0])


# --- the rest of "packets that don't fit": fragmentation, ICMP source, MTU debounce -------

def test_fragment_v4_without_df() -> None:
    from dtlsvpn.vpn.ip import fragment_v4

    pkt = ipv4(b"", flags=ACK, frag=0, payload=bytes(range(256)) * 6)
    frags = fragment_v4(pkt, 576)
    assert frags is not None and [len(f) for f in frags] == [572, 572, 472]
    assert all(ref_checksum(f[:20]) == 0 for f in frags)
    assert b"".join(f[20:] for f in frags) == pkt[20:]
    offsets = [struct.unpack_from("!H", f, 6)[0] for f in frags]
    assert offsets == [0x2000 | 0, 0x2000 | 69, 138]  # MF on all but the last; units of 8
    assert fragment_v4(ipv4(b"", payload=bytes(1000)), 576) is None  # DF set
    assert fragment_v4(pkt, 2000) == [pkt]


def test_too_big_reply_comes_from_the_destination() -> None:
    from dtlsvpn.vpn.ip import TooBigResponder

    r = TooBigResponder(None, None, reply_from_destination=True)
    reply = r.reply(ipv4(b"", flags=ACK, payload=bytes(1400)), 1343, 0.0)
    assert reply is not None and reply[12:16] == DST4 and reply[16:20] == SRC4
    assert reply[20:22] == b"\x03\x04" and struct.unpack_from("!H", reply, 26)[0] == 1343
    reply6 = r.reply(ipv6(b"", flags=ACK, payload=bytes(1400)), 1343, 0.0)
    assert reply6 is not None and reply6[8:24] == DST6 and reply6[24:40] == SRC6
    assert reply6[40] == 2 and struct.unpack_from("!I", reply6, 44)[0] == 1343


def test_mtu_follower_lowers_at_once_and_raises_when_settled() -> None:
    from dtlsvpn.daemon.mtu import MtuFollower

    f = MtuFollower(settle=1.0, max_hold=4.0)
    a, b = object(), object()
    # A new association's first report (BASE) is held, like a raise.
    assert not f.report(a, 1147, 0.0) and f.applied is None and f.due == 1.0
    assert not f.report(a, 1227, 0.3) and f.due == 1.3
    assert not f.report(a, 1347, 0.5)
    assert not f.poll(1.4) and f.poll(1.5) and f.applied == 1347
    # Black hole: lower than the last report of the same association → at once.
    assert f.report(a, 1147, 10.0) and f.applied == 1147 and f.due is None
    # A slow climb is applied every max_hold seconds at the latest.
    for t in (20.0, 20.9, 21.8, 22.7, 23.6):
        f.report(a, 1147 + int(t), t)
    assert f.due == 24.0 and f.poll(24.0) and f.applied == 1147 + 23
    # A rekey's fresh association starts at BASE again: held, not a dip.
    assert not f.report(b, 1000, 30.0) and f.applied == 1170
    assert not f.report(b, 1170, 30.2) and f.due is None


def test_mtu_follower_applies_the_report_that_ends_the_search_at_once() -> None:
    from dtlsvpn.daemon.mtu import MtuFollower

    f = MtuFollower(settle=1.0, max_hold=4.0)
    a, b = object(), object()
    assert not f.report(a, 1147, 0.0) and not f.report(a, 1347, 0.05)  # held climb
    assert f.report(a, 1435, 0.06, final=True) and f.applied == 1435 and f.due is None
    assert not f.poll(5.0) and f.applied == 1435  # nothing left held behind it
    # A renewal's search that ends where the old one did changes nothing ...
    assert not f.report(b, 1147, 10.0) and f.applied == 1435
    assert not f.report(b, 1435, 10.1, final=True) and f.due is None
    # ... and one that ends lower (a new, narrower path) is applied at once, too.
    c = object()
    assert not f.report(c, 1147, 20.0)
    assert f.report(c, 1335, 20.1, final=True) and f.applied == 1335 and f.due is None
