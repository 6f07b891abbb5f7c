"""Rekey switch-over, reload, PMTU → TUN MTU and the status snapshot, on fake devices."""

from __future__ import annotations

import re
from pathlib import Path

from dtlsvpn.daemon.status import format_prometheus
from tests.fakes.packets import seq_of, udp
from tests.fakes.world import World
from tests.shell.conftest import Pair, established


def test_rekey_switch_over_loses_nothing(pair: Pair) -> None:
    server, client = pair(rekey_interval=2)
    world = server.world
    tuns = client.tun, server.tun
    sent = 0
    got_server: set[int] = set()
    got_client: set[int] = set()
    while world.clock.now < 1000.0 + 10.0:
        client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=sent)])
        server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=sent)])
        sent += 1
        world.run_for(0.05)
        got_server.update(map(seq_of, server.tun.drain()))
        got_client.update(map(seq_of, client.tun.drain()))
    world.settle()
    got_server.update(map(seq_of, server.tun.drain()))
    got_client.update(map(seq_of, client.tun.drain()))
    assert got_server == set(range(sent)) and got_client == set(range(sent))
    cpeer, speer = client.peer(), server.peer()
    assert cpeer["rekey_generation"] >= 3 and cpeer["rekeys"] == cpeer["rekey_generation"]
    assert (speer["rekeys"], speer["rekey_generation"]) == (cpeer["rekeys"],
                                                           cpeer["rekey_generation"])
    for peer in (cpeer, speer):
        assert peer["state"] == "established" and peer["resumed"] is False
        assert peer["handshakes"] == 1 + peer["rekeys"]
        assert peer["last_rekey"] is not None
        for reason in ("no_session", "unbound", "send_error", "tun_write", "bad_mac"):
            assert reason not in peer["drops"], peer["drops"]
    assert "unbound" not in server.snapshot()["interface"]["drops"]
    # Renewals leave the interfaces alone: same TUN, and the MTU never dipped (the new
    # association's first PMTU report is not a measurement).
    assert (client.tun, server.tun) == tuns and len(client.devices.links) == 1
    for host in (client, server):
        assert host.link.mtu_history == sorted(host.link.mtu_history), host.link.mtu_history


def test_reload_adds_and_removes_a_peer_leaving_the_other(pair: Pair, tmp_path: Path) -> None:
    server, client = pair()
    world = server.world
    daemon = server.daemon
    before = daemon.peers["branch"].assoc
    conf = server.conf
    original = conf.read_text()
    routes = list(server.link.routes)
    conf.write_text(original + f"""
[Peer]
Name = other
PSKIdentity = other
PSKFile = {tmp_path / "psk.hex"}
AllowedIPs = 100.64.0.3/32, 100.64.9.0/24
""")
    daemon.on_reload(world.clock.now)
    assert server.messages[-3:-1] == ["RELOADING=1", "READY=1"]
    assert server.messages[-1].startswith("STATUS=1/2 peers up")
    added = [str(r) for r in server.link.routes if r not in routes]
    assert added == ["100.64.0.3/32", "100.64.9.0/24"]
    snap = server.snapshot()
    assert [p["name"] for p in snap["peers"]] == ["branch", "other"]
    assert server.peer("other")["state"] == "down"
    world.run_for(3.0)
    assert daemon.peers["branch"].assoc is before
    assert server.peer("branch")["handshakes"] == 1 and client.peer()["handshakes"] == 1
    server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=9)])
    assert world.run_until(lambda: bool(client.tun.drain()), within=1.0)

    conf.write_text(original)
    daemon.on_reload(world.clock.now)
    assert server.link.routes == routes
    assert [p["name"] for p in server.snapshot()["peers"]] == ["branch"]
    world.run_for(3.0)
    assert daemon.peers["branch"].assoc is before and established(client)


def test_tun_mtu_follows_the_path_mtu(tmp_path: Path) -> None:
    from tests.netns.harness import psk_pair
    from tests.shell.conftest import CLIENT, SERVER

    world = World(path_mtu=1400)
    try:
        server_conf, client_conf = psk_pair(tmp_path)
        server = world.start(server_conf, SERVER)
        client = world.start(client_conf, CLIENT)
        assert world.run_until(lambda: established(client) and established(server))
        assert client.snapshot()["interface"]["mtu_policy"] == "auto"
        wants = {}
        for host in (client, server):
            wants[host] = 1400 - 20 - 8 - host.peer()["record_overhead"]

        def settled() -> bool:
            return all(h.link.mtu == w for h, w in wants.items())

        assert world.run_until(settled, within=30), (client.link.mtu_history,
                                                     server.link.mtu_history)
        for host, want in wants.items():
            snap = host.snapshot()
            assert snap["interface"]["mtu"] == want
            assert snap["interface"]["mtu_policy"] == "pmtu"
            peer = snap["peers"][0]
            assert peer["plpmtu"] == 1400 and peer["inner_mtu"] == want
            assert peer["mtu_limit"] == want
            mss = snap["interface"]["mss_clamp"]
            assert mss == {"ipv4": want - 40, "ipv6": want - 60}
            # Raised once when the search settled, never stepped through every probe size.
            assert len(host.link.mtu_history) <= 3, host.link.mtu_history
        # A DF packet above the tunnel MTU: dropped with an ICMP "too big" back to the host.
        big = udp("100.64.0.2", "100.64.0.1", seq=1, size=wants[client] + 50)
        client.tun.inject([big])
        world.settle()
        (icmp,) = client.tun.drain()
        assert icmp[9] == 1 and icmp[20] == 3 and icmp[21] == 4  # ICMP frag-needed
        assert client.peer()["drops"]["too_big"] == 1
    finally:
        world.close()


INTERFACE_KEYS = {"name", "device", "role", "listen", "addresses", "mtu", "mtu_policy",
                  "rekey_interval", "pid", "uptime", "config", "mss_clamp", "mss_clamped",
                  "fragmented", "icmp_too_big_sent", "icmp_too_big_rate_limited",
                  "udp_gso_sends", "udp_gso_datagrams", "udp_gso_fallbacks",
                  "udp_gro_receives", "udp_gro_datagrams", "tun_offload", "compiled_lane", "tun_gso_writes",
                  "tun_gso_segments", "tun_gso_fallbacks", "tun_tso", "tun_tso_reads",
                  "tun_tso_malformed", "drops",
                  "handshake_failures", "tcp_closes", "untrusted_closes"}
PEER_KEYS = {"name", "endpoint", "state", "transport", "transport_since", "suite",
             "last_handshake", "last_handshake_ago", "resumed", "handshakes", "roams",
             "rekey_generation", "rekeys",
             "last_rekey", "last_rekey_ago", "rekeying", "heartbeat_rtt_ms", "plpmtu",
             "record_overhead", "inner_mtu", "mtu_limit", "allowed_ips", "rx_bytes",
             "rx_packets", "tx_bytes", "tx_packets", "retransmissions", "last_error",
             "drops", "dtls"}


def test_status_snapshot_fields(pair: Pair) -> None:
    server, client = pair()
    server.world.run_for(5.0)
    for host, role in ((server, "server"), (client, "client")):
        snap = host.snapshot()
        assert list(snap) == ["interface", "peers"]
        iface = snap["interface"]
        assert set(iface) == INTERFACE_KEYS | ({"endpoint"} if role == "server" else set())
        assert iface["role"] == role and iface["mtu_policy"] in ("auto", "pmtu")
        assert iface["device"] == ("dvs0" if role == "server" else "dvc0")
        (peer,) = snap["peers"]
        assert set(peer) == PEER_KEYS
        assert peer["state"] == "established" and peer["transport"] == "udp"
        assert "PSK" in peer["suite"] and peer["heartbeat_rtt_ms"] is not None
        assert peer["last_handshake_ago"] == 5.0 or peer["last_handshake_ago"] >= 4.9
        assert peer["rekeying"] is False and peer["dtls"]["rx_records"] > 0
    assert server.snapshot()["interface"]["listen"] == "198.18.0.1:4433"
    endpoint = server.snapshot()["interface"]["endpoint"]
    assert endpoint["hello_verify_sent"] >= 1 and endpoint["cookie_accepted"] >= 1
    assert endpoint["table_full"] == endpoint["hvr_rate_limited"] == 0
    prom = format_prometheus([server.snapshot()])
    assert re.search(r'^dtlsvpn_endpoint_events_total\{instance="[^"]*",'
                     r'event="cookie_accepted"\} [1-9]', prom, re.M), prom
    assert client.snapshot()["interface"]["listen"] is None
    assert any(m.startswith("STATUS=1/1 peers up") for m in client.messages)
    assert "WATCHDOG=1" in client.messages and "WATCHDOG=1" in server.messages


def test_old_keys_retired_after_the_grace_period(pair: Pair) -> None:
    server, client = pair(rekey_interval=10)  # grace: 5 s
    world = server.world
    seq = 0

    def traffic(seconds: float) -> None:
        nonlocal seq
        end = world.clock.now + seconds
        while world.clock.now < end:
            client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=seq)])
            seq += 1
            world.run_for(0.25)
            server.tun.drain()

    while client.peer()["rekeys"] < 1:
        traffic(0.25)
    assert server.peer()["rekeys"] == 1
    assert server.peer()["rekeying"] is True and client.peer()["rekeying"] is True
    traffic(5.5)
    assert server.peer()["rekeying"] is False and client.peer()["rekeying"] is False
    assert server.daemon.peers["branch"].previous is None
    assert server.peer()["state"] == "established" and server.peer()["handshakes"] == 2


def test_client_reload_with_a_changed_peer_redials(pair: Pair) -> None:
    server, client = pair()
    world = client.world
    assert world.run_until(lambda: any(client.daemon.cfg.interface.ticket_store.glob("*")))
    conf = client.conf
    conf.write_text(conf.read_text().replace("AllowedIPs = 100.64.0.0/24, fd00::/64",
                                             "AllowedIPs = 100.64.0.0/24, fd00::/64, "
                                             "100.64.7.0/24"))
    client.daemon.on_reload(world.clock.now)
    assert "100.64.7.0/24" in client.peer()["allowed_ips"]
    assert world.run_until(lambda: established(client) and established(server), within=5)
    assert client.peer()["handshakes"] == 1 and client.peer()["resumed"] is True
    assert server.peer()["handshakes"] == 2
    server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=1)])
    assert world.run_until(lambda: bool(client.tun.drain()), within=1.0)


def test_two_clients_and_a_peer_removed_by_reload(pair: Pair, tmp_path: Path) -> None:
    server, client = pair()
    world = server.world
    conf = server.conf
    original = conf.read_text()
    conf.write_text(original + f"""
[Peer]
Name = other
PSKIdentity = other
PSKFile = {tmp_path / "psk.hex"}
AllowedIPs = 100.64.0.3/32
""")
    server.daemon.on_reload(world.clock.now)
    other_conf = tmp_path / "other.conf"
    other_conf.write_text(
        client.conf.read_text().replace("PSKIdentity = branch", "PSKIdentity = other")
        .replace("dvc0", "dvc1").replace("100.64.0.2/24", "100.64.0.3/24")
        .replace("client.sock", "other.sock").replace("/tickets", "/other-tickets"))
    other = world.start(other_conf, "198.18.0.3")
    assert world.run_until(lambda: established(other) and established(server))
    server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=1),
                       udp("100.64.0.1", "100.64.0.3", seq=2)])
    got: dict[str, list[int]] = {"client": [], "other": []}

    def delivered() -> bool:
        got["client"] += map(seq_of, client.tun.drain())
        got["other"] += map(seq_of, other.tun.drain())
        return bool(got["client"] and got["other"])

    assert world.run_until(delivered, within=1.0)
    assert got == {"client": [1], "other": [2]}  # each to its own peer, by destination

    conf.write_text(original)
    server.daemon.on_reload(world.clock.now)
    world.settle()
    assert other.peer()["state"] != "established"  # close_notify reached it
    assert [p["name"] for p in server.snapshot()["peers"]] == ["branch"]
    world.run_for(5.0)
    assert established(client) and server.peer("branch")["handshakes"] == 1


def test_reload_keeps_status_saying_connected(pair: Pair) -> None:
    """STATUS= after SIGHUP is the role's line: a connected client still says so, both
    after a reload that changed nothing and after one refused for a config error."""
    _server, client = pair()
    world = client.world
    assert world.run_until(lambda: established(client))
    client.daemon.on_reload(world.clock.now)
    assert client.messages[-2] == "READY=1"
    assert client.messages[-1].startswith("STATUS=1/1 peers up")
    assert "; connected to office at " in client.messages[-1], client.messages[-1]
    good = client.conf.read_text()
    client.conf.write_text(good + "\nNoSuchKey = 1\n")
    client.daemon.on_reload(world.clock.now)
    assert "; connected to " in client.messages[-1], client.messages[-1]
    client.conf.write_text(good)
