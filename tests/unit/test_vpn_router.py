"""Router: destination routing, anti-spoofing, recursive-routing guard, counters."""

from __future__ import annotations

import ipaddress

from dtlsvpn.vpn.router import Router

N = ipaddress.ip_network
A = ipaddress.ip_address


def pkt4(src: str, dst: str) -> bytes:
    return bytes([0x45]) + bytes(11) + A(src).packed + A(dst).packed + b"data"


def pkt6(src: str, dst: str) -> bytes:
    return bytes([0x60]) + bytes(7) + A(src).packed + A(dst).packed + b"data"


def make() -> Router[str]:
    r: Router[str] = Router()
    r.add_peer("alice", [N("100.64.0.2/32"), N("fd00::2/128"), N("198.51.100.0/24")])
    r.add_peer("bob", [N("100.64.0.0/24"), N("fd00::/64")])
    return r


def test_route_longest_prefix_and_drops() -> None:
    r = make()
    a = pkt4("100.64.0.1", "100.64.0.2")
    b = pkt4("100.64.0.1", "100.64.0.7")
    a6 = pkt6("fd00::1", "fd00::2")
    b6 = pkt6("fd00::1", "fd00::3")
    nowhere = pkt4("100.64.0.1", "100.65.0.1")
    out = r.route([a, b, a6, b6, nowhere, b"\x10junk", b""])
    assert out == {"alice": [a, a6], "bob": [b, b6]}
    assert r.stats.no_route == 1 and r.stats.not_ip == 2


def test_admit_anti_spoofing_per_peer() -> None:
    r = make()
    good = pkt4("100.64.0.2", "100.64.0.1")
    spoof = pkt4("100.64.0.9", "100.64.0.1")  # bob's address, sent by alice
    outside = pkt6("fd01::1", "fd00::1")
    assert r.admit("alice", [good, spoof, outside, b"\x00"]) == [good]
    st = r.peer_stats["alice"]
    assert (st.spoofed_source, st.not_ip) == (2, 1)
    assert r.admit("bob", [spoof]) == [spoof]
    assert r.admit("bob", [good]) == []  # alice's /32 is more specific than bob's /24


def test_single_peer_mode_and_recursive_guard() -> None:
    r: Router[str] = Router(single="server")
    r.add_peer("server", [N("100.64.0.0/24")])
    r.set_underlay("server", A("198.18.0.1").packed)
    loop = pkt4("100.64.0.2", "198.18.0.1")
    anywhere = pkt4("100.64.0.2", "100.65.3.3")
    assert r.route([loop, anywhere]) == {"server": [anywhere]}
    assert r.stats.recursive == 1
    r.set_underlay("server", None)
    assert r.route([loop]) == {"server": [loop]}


def test_remove_peer() -> None:
    r = make()
    r.remove_peer("alice")
    assert r.route([pkt4("100.64.0.1", "100.64.0.2")]) == {"bob": [pkt4("100.64.0.1",
                                                                         "100.64.0.2")]}
    assert r.prefixes("alice") == ()


def test_multicast_never_crosses() -> None:
    r: Router[str] = Router(single="server")
    r.add_peer("server", [N("0.0.0.0/0"), N("::/0")])
    assert r.route([pkt6("fe80::1", "ff02::2"), pkt4("100.64.0.2", "224.0.0.251")]) == {}
    assert r.stats.multicast == 2
