"""PrefixTable against a slow reference (wireguard-go allowedips_rand_test.go idea)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.vpn.prefixes import CACHE_SIZE, PrefixTable


def _net(version: int, value: int, length: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    bits = 32 if version == 4 else 128
    value &= ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
    if version == 4:
        return ipaddress.IPv4Network((value, length))
    return ipaddress.IPv6Network((value, length))


def slow_lookup(entries: dict, packed: bytes) -> object:
    """Linear scan: the longest prefix that contains the address wins."""
    if len(packed) not in (4, 16):
        return None
    addr = ipaddress.ip_address(packed)
    best = None
    for net, value in entries.items():
        if net.version == addr.version and addr in net and (
            best is None or net.prefixlen > best[0].prefixlen
        ):
            best = (net, value)
    return None if best is None else best[1]


# Addresses drawn near a few bases so that prefixes really overlap.
_BASES4 = [0x64400000, 0xC6120000, 0x0A000000]
_BASES6 = [0xFD00 << 112, 0x20010DB8 << 96]


@st.composite
def prefix(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    version = draw(st.sampled_from([4, 6]))
    if version == 4:
        base = draw(st.sampled_from(_BASES4)) | draw(st.integers(0, 0xFFFF))
        return _net(4, base, draw(st.integers(0, 32)))
    base = draw(st.sampled_from(_BASES6)) | draw(st.integers(0, 0xFFFFFFFF))
    return _net(6, base, draw(st.integers(0, 128)))


@st.composite
def address(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        v = draw(st.sampled_from(_BASES4)) | draw(st.integers(0, 0xFFFF))
        return v.to_bytes(4, "big")
    v = draw(st.sampled_from(_BASES6)) | draw(st.integers(0, 0xFFFFFFFF))
    return v.to_bytes(16, "big")


@settings(max_examples=200)
@given(
    ops=st.lists(st.tuples(st.booleans(), prefix(), st.integers(0, 5)), max_size=40),
    probes=st.lists(address(), max_size=40),
)
def test_matches_slow_reference(ops: list, probes: list[bytes]) -> None:
    table: PrefixTable[int] = PrefixTable()
    entries: dict = {}
    for insert, net, value in ops:
        if insert:
            table.insert(net, value)
            entries[net] = value
        else:
            assert table.remove(net) == entries.pop(net, None)
        for packed in probes:  # also exercises the cache across changes
            assert table.lookup(packed) == slow_lookup(entries, packed)
    assert len(table) == len(entries)
    assert dict(table.items()) == entries


def test_remove_value_and_cache_bound() -> None:
    table: PrefixTable[str] = PrefixTable()
    table.insert(ipaddress.ip_network("100.64.0.0/24"), "a")
    table.insert(ipaddress.ip_network("100.64.0.2/32"), "b")
    table.insert(ipaddress.ip_network("fd00::/64"), "b")
    assert table.lookup(bytes([100, 64, 0, 2])) == "b"
    assert table.remove_value("b") == 2
    assert table.lookup(bytes([100, 64, 0, 2])) == "a"
    assert table.lookup(ipaddress.ip_address("fd00::1").packed) is None
    for i in range(CACHE_SIZE + 10):
        table.lookup(i.to_bytes(4, "big"))
    assert len(table._cache) <= CACHE_SIZE


@pytest.mark.parametrize("junk", [b"", b"\x01", b"\x00" * 5, b"\x00" * 17])
def test_odd_lengths_match_nothing(junk: bytes) -> None:
    table: PrefixTable[str] = PrefixTable()
    table.insert(ipaddress.ip_network("0.0.0.0/0"), "all4")
    table.insert(ipaddress.ip_network("::/0"), "all6")
    assert table.lookup(junk) is None
