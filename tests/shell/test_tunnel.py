"""A client and a server daemon in one process: handshake, data both ways, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtlsvpn.daemon.devices import Addr
from dtlsvpn.dtls.epoch import REKEY_RECORDS
from tests.fakes.packets import seq_of, udp
from tests.fakes.world import World
from tests.netns.harness import psk_pair
from tests.shell.conftest import CLIENT, SERVER, Pair, established
from tests.shell.pipeline import measure


def test_data_both_ways_v4_v6_and_spoofing_dropped(pair: Pair) -> None:
    server, client = pair()
    client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=1),
                       udp("fd00::2", "fd00::1", seq=2, size=1200)])
    server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=3),
                       udp("fd00::1", "fd00::2", seq=4)])
    world = server.world
    got_server: list[bytes] = []
    got_client: list[bytes] = []

    def arrived() -> bool:
        got_server.extend(server.tun.drain())
        got_client.extend(client.tun.drain())
        return len(got_server) >= 2 and len(got_client) >= 2

    assert world.run_until(arrived, within=1.0)
    assert sorted(map(seq_of, got_server)) == [1, 2]
    assert sorted(map(seq_of, got_client)) == [3, 4]
    assert len(next(p for p in got_server if seq_of(p) == 2)) == 1200

    # A source address outside the client's AllowedIPs on the server: dropped, counted.
    client.tun.inject([udp("100.64.0.77", "100.64.0.1", seq=5)])
    world.settle()
    assert server.tun.drain() == []
    assert server.peer()["drops"]["spoofed_source"] == 1

    speer, cpeer = server.peer(), client.peer()
    assert speer["endpoint"].startswith(f"{CLIENT}:")
    assert cpeer["endpoint"] == f"{SERVER}:4433"
    assert speer["rx_packets"] == 2 and speer["tx_packets"] == 2
    assert cpeer["rx_packets"] == 2 and cpeer["tx_packets"] == 3
    assert "READY=1" in client.messages and "READY=1" in server.messages


def test_pipeline_measurement_runs(tmp_path: Path) -> None:
    result = measure(tmp_path, packets=300, size=1400)
    assert result["client_to_server_received"] == 300
    assert result["server_to_client_received"] == 300


def test_the_server_endpoint_table_is_sized_for_its_peers(pair: Pair) -> None:
    server, _ = pair()
    endpoint = server.daemon.datapath.endpoint
    assert endpoint is not None
    assert endpoint.max_associations == 1024  # one peer: the floor


def test_neither_side_probes_above_its_route_mtu(world: World, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's PMTU search is bounded by its connected socket's IP_MTU (1500 here):
    no probe above it goes out (a real kernel refuses one with EMSGSIZE, which every
    association used to count once), and the search ends at that MTU."""
    sent: list[tuple[str, int]] = []  # (source host, IP size) of the datagrams too big
    deliver = world.net.deliver

    def watched(data: bytes, src: Addr, dst: Addr, gso: int = 0) -> None:
        size = min(gso or len(data), len(data)) + (40 if ":" in dst[0] else 20) + 8
        if size > world.net.path_mtu:
            sent.append((src[0], size))
        deliver(data, src, dst, gso)

    monkeypatch.setattr(world.net, "deliver", watched)
    server_conf, client_conf = psk_pair(tmp_path, transport="udp")
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client) and established(server))
    assert world.run_until(lambda: client.peer()["plpmtu"] == 1500, within=30.0), (
        client.peer())  # (the ceiling itself, not 1496)
    world.run_for(5.0)
    assert not [s for s in sent if s[0] == CLIENT], sent
    assert "emsgsize" not in client.peer()["drops"]
    # The server too, whose listening socket is unconnected: it asks the kernel's path
    # MTU towards the peer at the handshake (it probed above it once per association).
    assert world.run_until(lambda: server.peer()["plpmtu"] == 1500, within=30.0), (
        server.peer())
    assert not [s for s in sent if s[0] == SERVER], sent
    assert "emsgsize" not in server.peer()["drops"]


def test_a_bug_in_one_batch_is_contained_counted_and_the_tunnel_goes_on(
        pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's loop contains what escapes a handler (``Loop(contain=True)``, as
    ``Daemon`` makes it; the fake world's loop is strict, so it is switched here): the
    batch that met the bug is lost, counted ``internal_error`` and logged with its
    traceback, and the next packets cross as before."""
    server, client = pair()
    world = server.world
    client.loop.contain = True
    router = client.daemon.datapath.router
    real = router.route_single
    calls = {"n": 0}

    def once_broken(packets: list[bytes]) -> list[bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise IndexError("a bug")
        return real(packets)

    monkeypatch.setattr(router, "route_single", once_broken)
    client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=1),
                       udp("100.64.0.2", "100.64.0.1", seq=2)])
    world.settle()
    assert server.tun.drain() == []
    assert client.snapshot()["interface"]["drops"].get("internal_error") == 1
    assert any("internal error in" in r.getMessage() and r.exc_info for r in caplog.records)
    client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=3),
                       udp("100.64.0.2", "100.64.0.1", seq=4)])
    world.settle()
    assert sorted(map(seq_of, server.tun.drain())) == [3, 4]
    assert established(client) and established(server)


def test_the_write_budget_running_out_starts_the_renewal_at_once(pair: Pair) -> None:
    """The client's last record number of its keys' budget sent from the TUN: the
    renewal starts in the same wake-up, not at whatever timer comes next (a data-only
    wake-up runs no service unless the connection asks for it)."""
    server, client = pair()
    world = server.world
    dp = client.daemon.datapath
    assert dp is not None and dp.client_peer is not None and dp.client_peer.conn is not None
    conn = dp.client_peer.conn
    client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=0)])  # (the seal is made on use)
    assert world.run_until(lambda: len(server.tun.drain()) == 1, within=1.0)
    world.run_for(0.25)  # (what was due now has run: the next timer is ahead)
    deadline = client.next_deadline()
    assert deadline is None or deadline > world.clock.now
    seal = conn.current.fast_seal
    assert seal is not None and seal.state.protection is not None
    seal.state.next_seq = REKEY_RECORDS[seal.state.protection.suite.aead] - 1
    old = conn.current
    client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=1)])
    before = world.clock.now
    world.settle()  # no time passes (and the fake network has no delay)
    assert world.clock.now == before
    assert conn.current is not old and client.peer()["rekeys"] == 1
    assert [seq_of(p) for p in server.tun.drain()] == [1]
