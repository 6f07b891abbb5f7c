"""UDP GSO/GRO through the whole daemon on fake devices: bulk data both ways arrives
exactly, in order, with ``UDPOffload`` on, off, or on at one end only; the counters in
the status snapshot say whether offload did anything; a kernel that refuses GSO costs
nothing but the fallback; renewals and a NAT rebinding (connection ID) mid-stream lose
nothing with batches in flight.

The fake kernel (``tests.fakes.devices.FakeSocket``) carries a GSO send whole and hands
it to a GRO socket as one buffer, so the production split code runs here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.packets import udp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair
from tests.shell.conftest import CLIENT, SERVER, Pair, established

C4, S4 = "100.64.0.2", "100.64.0.1"
SIZES = (1400, 1400, 1400, 1400, 1400, 1400, 1400, 1400, 1400, 1400, 1400, 600, 1400, 80)


def udp_counters(host: Host) -> dict[str, int]:
    iface = host.snapshot()["interface"]
    return {k: v for k, v in iface.items() if k.startswith("udp_")}


def bulk(world: World, src: Host, dst: Host, s: str, d: str, count: int,
         first: int = 0) -> list[bytes]:
    """``count`` packets from ``src``'s TUN in batches of 64 (mixed sizes, mostly
    full-size); returns what ``dst``'s TUN got."""
    sent = [udp(s, d, seq=first + i, size=SIZES[i % len(SIZES)]) for i in range(count)]
    got: list[bytes] = []
    for i in range(0, count, 64):
        src.tun.inject(sent[i:i + 64])
        world.settle()
        got += dst.tun.drain()
    assert got == sent  # every byte, in order
    return got


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_bulk_both_ways_exact_and_counted(pair: Pair, offload: bool) -> None:
    server, client = pair(udp_offload=offload)
    world = server.world
    bulk(world, client, server, C4, S4, 500)
    bulk(world, server, client, S4, C4, 500)
    for host in (client, server):
        counters = udp_counters(host)
        if offload:
            assert counters["udp_gso_sends"] > 0 and counters["udp_gro_receives"] > 0
            # Most of the 500 went in runs (the mixed sizes break some).
            assert counters["udp_gso_datagrams"] > 400 and counters["udp_gro_datagrams"] > 400
        else:
            assert set(counters.values()) == {0}, counters
        assert counters["udp_gso_fallbacks"] == 0
        for reason in ("send_error", "emsgsize", "send_buffer_full", "bad_mac", "replay"):
            assert reason not in host.peer()["drops"], host.peer()["drops"]
    assert client.peer()["tx_packets"] >= 500 and server.peer()["rx_packets"] >= 500


def test_offload_at_one_end_only(world: World, tmp_path: Path) -> None:
    server_conf, client_conf = psk_pair(tmp_path, udp_offload=True)
    client_conf.write_text(client_conf.read_text().replace("UdpOffload = yes",
                                                           "UdpOffload = no"))
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client) and established(server))
    bulk(world, client, server, C4, S4, 300)
    bulk(world, server, client, S4, C4, 300)
    scount, ccount = udp_counters(server), udp_counters(client)
    assert set(ccount.values()) == {0}, ccount  # no GSO, and the kernel split for it
    assert scount["udp_gso_sends"] > 0 and scount["udp_gro_receives"] == 0


def test_a_kernel_that_refuses_gso_falls_back_once_per_socket(tmp_path: Path) -> None:
    world = World(refuse_gso=True)
    try:
        server_conf, client_conf = psk_pair(tmp_path)
        server = world.start(server_conf, SERVER)
        client = world.start(client_conf, CLIENT)
        assert world.run_until(lambda: established(client) and established(server))
        bulk(world, client, server, C4, S4, 300)
        bulk(world, server, client, S4, C4, 300)
        for host in (client, server):
            counters = udp_counters(host)
            assert counters["udp_gso_fallbacks"] == 1 and counters["udp_gso_sends"] == 0
            assert "send_error" not in host.peer()["drops"]
    finally:
        world.close()


def test_no_offload_in_the_kernel_is_plain_and_works(tmp_path: Path) -> None:
    world = World(gso=False, gro=False)
    try:
        server_conf, client_conf = psk_pair(tmp_path)
        server = world.start(server_conf, SERVER)
        client = world.start(client_conf, CLIENT)
        assert world.run_until(lambda: established(client) and established(server))
        bulk(world, client, server, C4, S4, 200)
        bulk(world, server, client, S4, C4, 200)
        assert set(udp_counters(client).values()) == {0}
        assert set(udp_counters(server).values()) == {0}
    finally:
        world.close()


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_bulk_across_renewals_loses_nothing(pair: Pair, offload: bool) -> None:
    server, client = pair(rekey_interval=2, udp_offload=offload)
    world = server.world
    seq = 0
    while world.clock.now < 1000.0 + 9.0:
        bulk(world, client, server, C4, S4, 100, first=seq)
        bulk(world, server, client, S4, C4, 100, first=seq)
        seq += 100
        world.run_for(0.25)
    assert client.peer()["rekeys"] >= 3
    assert (udp_counters(client)["udp_gso_sends"] > 0) == offload
    for host in (client, server):
        for reason in ("no_session", "unbound", "send_error", "bad_mac"):
            assert reason not in host.peer()["drops"], host.peer()["drops"]


def test_bulk_after_a_nat_rebinding(pair: Pair) -> None:
    """The client's address changes under it (a NAT rebinding): its connection ID moves
    the server's peer to the new address, and GSO batches go there."""
    server, client = pair(udp_offload=True)
    world = server.world
    bulk(world, client, server, C4, S4, 100)
    (port,) = [p for p in client.devices.ports if not p.closed]
    old = port.local
    new = (CLIENT, old[1] + 1000)
    del world.net.ports[old]
    port.local = port.fake.local = new
    world.net.ports[new] = port
    bulk(world, client, server, C4, S4, 100, first=100)  # the server learns the new address
    assert server.peer()["endpoint"] == f"{CLIENT}:{new[1]}"
    before = udp_counters(server)["udp_gso_sends"]
    bulk(world, server, client, S4, C4, 200)
    assert udp_counters(server)["udp_gso_sends"] > before
    assert client.peer()["handshakes"] == 1  # no new handshake: the CID carried it
