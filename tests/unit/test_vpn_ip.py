"""Inner IP peeks and ICMP "too big" synthesis (RFC 792/1191/1812, RFC 4443)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.vpn.ip import (
    RateLimiter,
    TooBigResponder,
    addresses,
    checksum,
    too_big_v4,
    too_big_v6,
    version,
)

A = ipaddress.ip_address
LOCAL4 = A("100.64.0.1").packed
LOCAL6 = A("fd00::1").packed


def slow_checksum(data: bytes) -> int:
    """RFC 1071 word by word."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(max_size=300))
def test_checksum_matches_reference(data: bytes) -> None:
    assert checksum(data) == slow_checksum(data)


def ipv4(src: str, dst: str, payload: bytes, *, df: bool = True, proto: int = 17,
         frag_offset: int = 0) -> bytes:
    flags = (0x4000 if df else 0) | frag_offset
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, flags, 64, proto, 0,
                      A(src).packed, A(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: str, dst: str, payload: bytes, next_header: int = 17) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, 64,
                       A(src).packed, A(dst).packed) + payload


def test_peeks() -> None:
    p4 = ipv4("100.64.0.2", "100.64.0.1", b"x" * 8)
    p6 = ipv6("fd00::2", "fd00::1", b"y" * 8)
    assert version(p4) == 4 and version(p6) == 6
    assert addresses(p4) == (A("100.64.0.2").packed, A("100.64.0.1").packed)
    assert addresses(p6) == (A("fd00::2").packed, A("fd00::1").packed)
    assert version(b"\x45" * 10) == 0 and addresses(b"") is None


def test_too_big_v4_fields_and_checksums() -> None:
    pkt = ipv4("100.64.0.2", "100.64.1.9", b"z" * 1400)
    reply = too_big_v4(pkt, 1300, LOCAL4)
    assert reply is not None
    assert len(reply) == 576  # RFC 1812 §4.3.2.3 cap
    assert checksum(reply[:20]) == 0
    assert reply[9] == 1 and reply[12:16] == LOCAL4 and reply[16:20] == pkt[12:16]
    icmp = reply[20:]
    assert checksum(icmp) == 0
    typ, code, _, _, mtu = struct.unpack("!BBHHH", icmp[:8])
    assert (typ, code, mtu) == (3, 4, 1300)
    assert icmp[8:] == pkt[: len(icmp) - 8]


@pytest.mark.parametrize(
    "pkt",
    [
        ipv4("100.64.0.2", "100.64.1.9", b"z" * 100, df=False),  # fragmentable
        ipv4("100.64.0.2", "100.64.1.9", b"z" * 100, frag_offset=5),  # not first fragment
        ipv4("100.64.0.2", "100.64.1.9", b"\x03\x04" + b"z" * 98, proto=1),  # ICMP error
        ipv4("0.0.0.0", "100.64.1.9", b"z" * 100),  # not unicast
        ipv4("224.0.0.5", "100.64.1.9", b"z" * 100),
    ],
)
def test_too_big_v4_never_for(pkt: bytes) -> None:
    assert too_big_v4(pkt, 1300, LOCAL4) is None


def test_too_big_v4_answers_echo_request() -> None:
    assert too_big_v4(ipv4("100.64.0.2", "100.64.1.9", b"\x08\x00" + b"z" * 98, proto=1),
                      1300, LOCAL4) is not None


def test_too_big_v6_fields_and_checksum() -> None:
    pkt = ipv6("fd00::2", "fd00:1::9", b"q" * 1500)
    reply = too_big_v6(pkt, 1380, LOCAL6)
    assert reply is not None
    assert len(reply) == 1280  # RFC 4443 §2.4(c)
    assert reply[6] == 58 and reply[8:24] == LOCAL6 and reply[24:40] == pkt[8:24]
    icmp = reply[40:]
    assert struct.unpack("!H", reply[4:6])[0] == len(icmp)
    pseudo = LOCAL6 + pkt[8:24] + struct.pack("!IxxxB", len(icmp), 58)
    assert checksum(pseudo + icmp) == 0
    assert struct.unpack("!BBHI", icmp[:8]) == (2, 0, struct.unpack("!H", icmp[2:4])[0], 1380)
    assert icmp[8:] == pkt[: len(icmp) - 8]


def test_too_big_v6_never_for_errors_or_multicast_source() -> None:
    err = ipv6("fd00::2", "fd00::9", b"\x01\x00" + b"q" * 100, next_header=58)
    assert too_big_v6(err, 1280, LOCAL6) is None
    echo = ipv6("fd00::2", "fd00::9", b"\x80\x00" + b"q" * 100, next_header=58)
    assert too_big_v6(echo, 1280, LOCAL6) is not None
    assert too_big_v6(ipv6("ff02::1", "fd00::9", b"q"), 1280, LOCAL6) is None
    assert too_big_v6(ipv6("::", "fd00::9", b"q"), 1280, LOCAL6) is None


def test_rate_limit() -> None:
    lim = RateLimiter(rate=2.0, burst=3.0)
    assert [lim.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow(0.5) is True and lim.allow(0.5) is False
    assert sum(lim.allow(10.0) for _ in range(10)) == 3


def test_responder_counts_and_families() -> None:
    r = TooBigResponder(LOCAL4, None, rate=1.0, burst=1.0)
    pkt4 = ipv4("100.64.0.2", "100.64.1.9", b"z" * 100)
    assert r.reply(pkt4, 1000, 0.0) is not None
    assert r.reply(pkt4, 1000, 0.1) is None
    assert (r.sent, r.rate_limited) == (1, 1)
    assert r.reply(ipv6("fd00::2", "fd00::9", b"q" * 10), 1280, 5.0) is None  # no v6 source
