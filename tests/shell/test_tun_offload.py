"""TUN offload (``TUNOffload``) through the whole daemon on fake devices.

Bulk TCP flows both ways (several flows interleaved, full-size segments with the odd
short, pushed or pure-ACK one, and UDP beside them) arrive exactly, every packet, with
``TUNOffload`` on and off: the fake kernel (``FakeTun`` in vnet mode) cuts the daemon's
super-packets back into segments, which must be the ones sent, byte for byte.  With
offload on the receiving TUN got super-packets and the status counts them; off, none.
A kernel that refuses the header (auto: plain TUN), one that refuses coalesced writes
(one fallback, then segment by segment) and renewals mid-stream lose nothing either.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtlsvpn.daemon import compiled
from dtlsvpn.vpn.gro import coalesce
from tests.fakes.packets import ACK, PSH, tcp, tcp_fields, udp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair
from tests.shell.conftest import CLIENT, SERVER, Pair, established

C4, S4 = "100.64.0.2", "100.64.0.1"
C6, S6 = "fd00::2", "fd00::1"
MSS = 1300


def tun_counters(host: Host) -> dict[str, object]:
    iface = host.snapshot()["interface"]
    return {k: v for k, v in iface.items() if k.startswith("tun_")}


def traffic(src: str, dst: str, src6: str, dst6: str, count: int, salt: int) -> list[bytes]:
    """``count`` packets: two TCP flows (IPv4, IPv6) interleaved, mostly full segments,
    every 16th pushed, every 23rd short, a pure ACK now and then, and a UDP packet; IPv4
    ids count up per flow, as a kernel numbers a connection's DF segments."""
    seqs = [1000 * salt, 7 * salt]
    ids = [0, 0]
    out: list[bytes] = []
    for i in range(count):
        if i % 29 == 28:
            out.append(udp(src, dst, seq=i, size=200))
            continue
        f = i % 3 == 2  # one in three on the IPv6 flow
        size = 0 if i % 31 == 30 else (400 if i % 23 == 22 else MSS)
        flags = ACK | PSH if i % 16 == 15 else ACK
        out.append(tcp(src6 if f else src, dst6 if f else dst, seqs[f], os.urandom(size),
                       flags=flags, ident=ids[f], sport=40000 + salt))
        seqs[f] += size
        ids[f] += 1
    return out


def bulk(world: World, src: Host, dst: Host, packets: list[bytes], *,
         offloaded: bool = False) -> None:
    """``packets`` from ``src``'s host to ``dst``'s, 64 at a time; ``offloaded``: handed
    to the TUN as a kernel offered TSO would (super-packets, ``FakeTun.inject_offloaded``:
    finished by the fake kernel unless TSO is offered)."""
    got: list[bytes] = []
    for i in range(0, len(packets), 64):
        if offloaded:
            src.tun.inject_offloaded(coalesce(packets[i:i + 64]))
        else:
            src.tun.inject(packets[i:i + 64])
        world.settle()
        got += dst.tun.drain()
    assert len(got) == len(packets)
    if got != packets:  # another flow may come first: the order within each is kept
        assert sorted(got) == sorted(packets)
        assert flows(got) == flows(packets)


def flows(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    """The packets of each TCP flow (addresses, ports) in order, and the rest."""
    out: dict[bytes, list[bytes]] = {}
    for p in packets:
        tcp_packet = p[9 if p[0] >> 4 == 4 else 6] == 6
        out.setdefault(tcp_fields(p)[0] if tcp_packet else b"", []).append(p)
    return out


@pytest.mark.parametrize("offload", ["on", "off", "auto"])
def test_bulk_tcp_both_ways_exact_with_and_without_tun_offload(pair: Pair, offload: str
                                                               ) -> None:
    server, client = pair(tun_offload=offload)
    world = server.world
    bulk(world, client, server, traffic(C4, S4, C6, S6, 640, 1))
    bulk(world, server, client, traffic(S4, C4, S6, C6, 640, 2))
    for host in (server, client):
        counters = tun_counters(host)
        on = offload != "off"
        assert counters["tun_offload"] == ("on" if on else "off")
        assert host.tun.vnet is on
        if on:
            assert host.tun.gso_frames > 20, (host.tun.gso_frames, counters)
            assert counters["tun_gso_writes"] == host.tun.gso_frames
            assert counters["tun_gso_segments"] == host.tun.gso_segments
        else:
            assert host.tun.gso_frames == 0
            assert counters["tun_gso_writes"] == counters["tun_gso_segments"] == 0
        assert counters["tun_gso_fallbacks"] == 0
        assert "tun_write" not in host.peer()["drops"]


def test_a_kernel_without_the_header_gives_a_plain_tun_in_auto(world: World,
                                                                tmp_path: Path) -> None:
    server_conf, client_conf = psk_pair(tmp_path, tun_offload="auto")
    server = world.start(server_conf, SERVER, tun={"vnet_refused": True})
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client) and established(server))
    assert tun_counters(server)["tun_offload"] == "off"
    assert tun_counters(client)["tun_offload"] == "on"
    bulk(world, client, server, traffic(C4, S4, C6, S6, 300, 3))
    bulk(world, server, client, traffic(S4, C4, S6, C6, 300, 4))
    assert server.tun.gso_frames == 0 and client.tun.gso_frames > 0


def test_a_kernel_that_refuses_coalesced_writes_falls_back_once(world: World,
                                                                tmp_path: Path) -> None:
    """The first batch's super-packets are refused and written segment by segment;
    later batches are not coalesced at all."""
    server_conf, client_conf = psk_pair(tmp_path, tun_offload="on")
    server = world.start(server_conf, SERVER, tun={"refuse_gso": True})
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client) and established(server))
    bulk(world, client, server, traffic(C4, S4, C6, S6, 64, 5))
    first = tun_counters(server)["tun_gso_fallbacks"]
    assert isinstance(first, int) and first >= 1
    bulk(world, client, server, traffic(C4, S4, C6, S6, 400, 6))
    counters = tun_counters(server)
    assert counters["tun_gso_fallbacks"] == first and server.tun.gso_frames == 0, counters
    assert counters["tun_gso_writes"] == counters["tun_gso_segments"] == 0, counters
    assert "tun_write" not in server.peer()["drops"]
    assert tun_counters(server)["tun_offload"] == "on"  # the header stays, unused


def test_bulk_across_renewals_with_tun_offload(pair: Pair) -> None:
    server, client = pair(rekey_interval=2, tun_offload="on")
    world = server.world
    salt = 10
    while world.clock.now < 1000.0 + 7.0:
        bulk(world, client, server, traffic(C4, S4, C6, S6, 100, salt))
        bulk(world, server, client, traffic(S4, C4, S6, C6, 100, salt + 1))
        salt += 2
        world.run_for(0.25)
    assert client.peer()["rekeys"] >= 2
    assert server.tun.gso_frames > 0 and client.tun.gso_frames > 0


@pytest.mark.parametrize("compiled_lane", [True, False], ids=["compiled", "python"])
def test_bulk_from_tso_reads_across_renewals(pair: Pair, compiled_lane: bool) -> None:
    """The hosts' TCP hands the TUN super-packets (TSO on read, with the compiled module)
    across key renewals both ways; every packet arrives as sent.  Without the compiled
    module TSO is not offered and the fake kernel finishes them, as a real one does."""
    server, client = pair(rekey_interval=2, tun_offload="on", compiled_lane=compiled_lane)
    world = server.world
    salt = 30
    while world.clock.now < 1000.0 + 7.0:
        bulk(world, client, server, traffic(C4, S4, C6, S6, 100, salt), offloaded=True)
        bulk(world, server, client, traffic(S4, C4, S6, C6, 100, salt + 1), offloaded=True)
        salt += 2
        world.run_for(0.25)
    assert client.peer()["rekeys"] >= 2
    tso = compiled_lane and compiled.segment is not None
    for host in (server, client):
        counters = tun_counters(host)
        assert counters["tun_tso"] == ("on" if tso else "off"), counters
        reads = counters["tun_tso_reads"]
        assert isinstance(reads, int) and (reads > 20) == tso, counters
        assert counters["tun_tso_malformed"] == 0 and host.tun.gso_frames > 0, counters
