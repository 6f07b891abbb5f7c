"""The TCP fallback on fake devices and a fake clock (``tcpclient.py``, ``transport.py``).

The fake network can drop all UDP (``FakeNet.udp_blocked``); TCP runs over real
loopback connections to the server's listener (``FakeDevices.tcp_connect``).  Times
printed here are fake seconds, never asserted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
from pathlib import Path

import pytest

from dtlsvpn.cli.status import summary
from dtlsvpn.daemon.status import format_prometheus
from tests.fakes.packets import seq_of, udp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair, secret_file
from tests.shell.conftest import SERVER, Pair

C_ADDR, S_ADDR = "100.64.0.2", "100.64.0.1"
RETIRE_SETTLE = 6.0  # fake seconds: a renewed link's predecessor is closed by then


def traffic(world: World, client: Host, server: Host, seconds: float, *, replies: bool = True,
            step: float = 0.05, seq: int = 0) -> list[tuple[float, int]]:
    """Client → server packets every ``step`` (and server → client ones with ``replies``);
    returns (fake time, seq) of what reached the server's TUN."""
    got: list[tuple[float, int]] = []
    end = world.clock.now + seconds
    while world.clock.now < end:
        client.tun.inject([udp(C_ADDR, S_ADDR, seq=seq)])
        if replies:
            server.tun.inject([udp(S_ADDR, C_ADDR, seq=seq)])
        seq += 1
        world.run_for(step)
        got += [(world.clock.now, seq_of(p)) for p in server.tun.drain()]
        client.tun.drain()
    return got


def carried(host: Host) -> bool:
    """The peer is up over TCP (a TCP-only peer shows ``tcp`` before it is up)."""
    peer = host.peer()
    return bool(peer["transport"] == "tcp" and peer["state"] == "established")


def _tcp_pair(world: World, tmp_path: Path, **interface: str) -> tuple[Host, Host]:
    server_conf, client_conf = psk_pair(tmp_path, transport="tcp", **interface)
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf.with_name(client_conf.name), "198.18.0.2")
    assert world.run_until(lambda: carried(client) and carried(server), within=10.0), (
        client.snapshot(), server.snapshot())
    for host in (client, server):  # the TLS handshake is in the status as a DTLS one is
        peer = host.peer()
        when = peer["last_handshake"]
        assert peer["handshakes"] == 1 and peer["resumed"] is False, peer
        assert when is not None and world.clock.wall - 10.0 <= when <= world.clock.wall, peer
    return server, client


def test_udp_blocked_moves_to_the_standby_then_back(pair: Pair) -> None:
    server, client = pair()
    world = server.world
    assert traffic(world, client, server, 1.0)
    blocked = world.clock.now
    world.net.udp_blocked = True
    got = traffic(world, client, server, 6.0, seq=1000)
    assert client.peer()["transport"] == "tcp" and server.peer()["transport"] == "tcp"
    assert got, "nothing came through after the block"
    assert client.devices.tcp_dials  # the standby was dialled ...
    assert len(server.daemon.role.tcp.owners) == 1  # ... and is the only link
    print(f"\nfake time: first packet over TCP {got[0][0] - blocked:.2f}s after the block")
    # What went out while UDP was suspect (before the move) was resent over TCP.
    moved = client.daemon.role.tcp.moved_at
    assert moved is not None
    injected_before_move = 1000 + int((moved - blocked) / 0.05) - 1
    assert min(s for _, s in got) < injected_before_move, (got[:3], moved - blocked)
    log = "\n".join(client.messages)
    assert client.peer()["handshakes"] >= 1, log

    unblocked = world.clock.now
    world.net.udp_blocked = False
    back = None
    for _ in range(200):
        traffic(world, client, server, 0.1, seq=5000)
        if client.peer()["transport"] == "udp":
            back = world.clock.now
            break
    assert back is not None, client.snapshot()
    print(f"fake time: back on UDP {back - unblocked:.2f}s after the unblock")
    assert world.run_until(lambda: server.peer()["transport"] == "udp", within=2.0)
    assert not server.daemon.role.tcp.owners  # the TCP link was closed
    after = traffic(world, client, server, 0.5, seq=9000)
    assert after and world.net.dropped.get("udp_blocked", 0) > 0


def test_no_switch_when_the_peer_just_has_nothing_to_send(pair: Pair) -> None:
    """One-way traffic: nothing comes back but the heartbeat answers; UDP keeps carrying."""
    server, client = pair()
    world = server.world
    got = traffic(world, client, server, 8.0, replies=False)
    assert len(got) > 100
    policy = client.daemon.role.tcp.policy
    assert policy.switches == 0 and client.peer()["transport"] == "udp"
    assert server.peer()["transport"] == "udp"
    assert client.devices.tcp_dials, "the silence was never suspected: the test proves nothing"


def test_the_server_shows_where_a_tcp_only_peer_is(world: World, tmp_path: Path) -> None:
    """A peer that only ever came over TCP has no UDP address: the server's status shows
    the TCP connection's (it showed ``endpoint: -``, seen trying TCP-only by hand)."""
    server, client = _tcp_pair(world, tmp_path)
    (link,) = client.daemon.role.tcp.owners  # the fake carries TCP over real loopback
    host, port = link.sock.getsockname()[:2]
    assert server.peer()["endpoint"] == f"{host}:{port}", server.peer()
    assert client.peer()["endpoint"] == f"{SERVER}:4433", client.peer()
    for side in (server, client):  # no PMTU search over TCP: not "no discovery yet"
        text = summary(json.loads(json.dumps(side.snapshot(), default=str)))
        assert "  path mtu: -, TCP carries" in text, text


def test_tcp_only_by_hostname_server_without_udp(world: World, tmp_path: Path) -> None:
    server_conf, client_conf = psk_pair(tmp_path, transport="tcp")
    text = client_conf.read_text()
    client_conf.write_text(re.sub(r"Endpoint = \S+:4433", "Endpoint = office.test:4433", text))
    world.net.names["office.test"] = SERVER
    server = world.start(server_conf, SERVER)
    assert (SERVER, 4433) not in world.net.ports  # Transport = tcp: no UDP socket
    assert (SERVER, 4433) in world.net.tcp
    assert any(m.startswith("READY=1") for m in server.messages)
    assert any("(TCP only)" in m for m in server.messages), server.messages
    client = world.start(client_conf, "198.18.0.2")
    assert world.run_until(lambda: carried(server), within=10.0), (
        client.snapshot(), server.snapshot())
    assert client.devices.tcp_dials == [(SERVER, 4433)]
    got = traffic(world, client, server, 1.0)
    assert len(got) >= 15
    assert client.peer()["rx_packets"] >= 15
    assert not client.devices.ports  # a TCP-only client opens no UDP socket either

    # A reload that removes the peer closes its TCP link.
    conf = server.conf
    conf.write_text(conf.read_text().replace("= branch", "= other"))  # (name, identity)
    server.daemon.on_reload(world.clock.now)
    assert [p["name"] for p in server.snapshot()["peers"]] == ["other"]
    world.run_for(0.5)
    tcp = server.daemon.role.tcp
    assert not any(owner is not None for owner in tcp.owners.values())
    assert not carried(client) and client.peer()["transport"] == "tcp"  # (TCP only)


def test_udp_only_server_does_not_listen_on_tcp(world: World, tmp_path: Path) -> None:
    server_conf, _ = psk_pair(tmp_path, transport="udp")
    server = world.start(server_conf, SERVER)
    assert (SERVER, 4433) in world.net.ports
    assert not server.devices.tcp_listeners and not world.net.tcp


def test_keys_over_tcp_are_renewed_make_before_break(world: World, tmp_path: Path) -> None:
    """RekeyInterval over TCP: a new TLS connection (full handshake, no ticket), the
    traffic moves to it, the old one closes; nothing is lost across the renewals."""
    server, client = _tcp_pair(world, tmp_path, rekey_interval="2")
    first = client.daemon.role.tcp.link
    got = traffic(world, client, server, 7.0, step=0.02)
    seqs = [s for _, s in got]
    assert seqs == list(range(len(seqs))) and len(seqs) > 300  # in order, no gap
    peer = client.peer()
    assert peer["rekey_generation"] >= 2 and peer["rekeys"] == peer["rekey_generation"]
    assert peer["handshakes"] == 1 + peer["rekeys"]  # (every TLS handshake counts)
    far = server.peer()
    assert far["rekeys"] == peer["rekeys"] and far["handshakes"] == peer["handshakes"], far
    tcp = client.daemon.role.tcp
    assert tcp.link is not first and tcp.link is not None and tcp.link.ready
    world.run_for(RETIRE_SETTLE)
    assert len(tcp.owners) <= 2  # the carrier (and at most a renewal under way)
    owners = server.daemon.role.tcp.owners
    assert len(owners) <= 2 and all(o is not None for o in owners.values())
    assert client.peer()["transport"] == server.peer()["transport"] == "tcp"


def test_the_record_limit_renews_the_tcp_link(world: World, tmp_path: Path) -> None:
    server, client = _tcp_pair(world, tmp_path)
    tcp = client.daemon.role.tcp
    first = tcp.link
    assert first is not None
    first.assoc.config = dataclasses.replace(first.assoc.config, rekey_records=50)
    got = traffic(world, client, server, 3.0)
    assert len(got) >= 50
    assert tcp.link is not first and client.peer()["rekeys"] >= 1


def test_a_stalled_flow_is_resumed_by_the_replay(pair: Pair) -> None:
    """After the block an inner TCP only retransmits, at its backed-off times (≈0.2,
    0.6, 1.4, 3.0 s): the sampling keeps up with such a flow, the 1.4 s retransmission
    goes out while UDP is suspect and reaches the server over TCP at the move."""
    server, client = pair()
    world = server.world
    assert traffic(world, client, server, 1.0)
    blocked = world.clock.now
    world.net.udp_blocked = True
    for seq, at in ((1, 0.2), (2, 0.6), (3, 1.4), (4, 3.0)):
        world.run_for(blocked + at - world.clock.now)
        client.tun.inject([udp(C_ADDR, S_ADDR, seq=20000 + seq)])
    world.run_for(1.0)
    got = [seq_of(p) - 20000 for p in server.tun.drain()]
    assert client.peer()["transport"] == "tcp"
    assert 3 in got and 4 in got, got  # (1 and 2 went out before UDP was suspect)


def test_an_idle_checker_sleeps_and_the_first_send_wakes_it(pair: Pair) -> None:
    """No wake-ups every quarter second on an idle laptop: after IDLE_AFTER without a
    send the checker sleeps (up to IDLE_CHECK); the next send wakes it, so UDP blocked
    during the idle spell is still left within the usual time after traffic resumes."""
    server, client = pair()
    world = server.world
    tcp = client.daemon.role.tcp
    assert traffic(world, client, server, 1.0)
    world.run_for(12.0)  # idle: keepalives only
    peer = client.daemon.role.peer
    check = tcp._check.when
    assert peer.on_send is not None and check is not None
    assert check - world.clock.now > 5.0, check - world.clock.now
    world.net.udp_blocked = True  # blocked while idle: nothing notices yet
    world.run_for(1.0)
    assert client.peer()["transport"] == "udp"
    resumed = world.clock.now
    got = traffic(world, client, server, 4.0, seq=2000)
    assert client.peer()["transport"] == "tcp" and got
    moved = tcp.moved_at
    assert moved is not None
    print(f"\nfake time: moved to TCP {moved - resumed:.2f}s after the first send of an "
          f"idle spell")
    assert moved - resumed < 2.5  # the fake clock: the policy's own bound (1 s + 0.6 s)
    assert peer.on_send is None  # awake while sending


def test_a_wrong_psk_over_tcp_is_said_and_redials_back_off(world: World, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """TCP only with the wrong PSK: the client says why, as over DTLS (counted as wrong_key in
    handshake_failures), and its TLS redials back off (1 s doubling to 30 s) instead of
    coming every second."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = psk_pair(tmp_path, transport="tcp")
    wrong = secret_file(tmp_path / "wrong.hex", secrets.token_hex(32) + "\n")
    text = client_conf.read_text()
    assert f"PSKFile = {tmp_path / 'psk.hex'}" in text
    client_conf.write_text(text.replace(f"PSKFile = {tmp_path / 'psk.hex'}",
                                        f"PSKFile = {wrong}"))
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, "198.18.0.2")
    world.run_for(60.0)
    assert server.peer()["state"] != "established"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
             and "peer office: handshake failed" in r.getMessage()]
    assert lines and "bad_record_mac" in lines[0] and "wrong PSK or key?" in lines[0], lines
    assert client.snapshot()["interface"]["handshake_failures"].get("wrong_key", 0) >= 1
    dials = len(client.devices.tcp_dials)
    print(f"\nwrong PSK over TCP: {dials} TLS dials in 60 s (fake clock); {lines[0]}")
    assert 4 <= dials <= 10  # 1, 2, 4, 8, 16, 30 s apart; a fixed 1 s would be ~60


def _budget(host: Host, records: int) -> None:
    """A small record budget on every TLS link of ``host`` (the config has no key for it)."""
    for link in host.daemon.role.tcp.owners:
        link.assoc.config = dataclasses.replace(link.assoc.config, rekey_records=records)


def test_keys_unrenewed_stop_at_twice_the_record_budget(world: World, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """The renewal cannot get through (dials refused): the link carries on past the budget,
    and at twice it both sides send close_notify, count ``record_limit`` in tcp_closes,
    and the client dials again at once, resuming with its ticket."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server, client = _tcp_pair(world, tmp_path)
    first = client.daemon.role.tcp.link
    _budget(client, 20)
    _budget(server, 20)
    client.devices.online = False  # the renewal's dial fails (and is retried in 30 s)
    dials = len(client.devices.tcp_dials)
    got = traffic(world, client, server, 1.0, replies=False, step=0.05)
    assert len(client.devices.tcp_dials) == dials + 1  # the renewal, refused
    assert client.daemon.role.tcp.link is first and first is not None and first.ready
    client.devices.online = True
    got += traffic(world, client, server, 3.0, replies=False, step=0.05)
    assert client.daemon.role.tcp.link is not first
    assert first.assoc.close_cause == "record_limit"
    assert first.assoc.record_limit == 40 and first.assoc.stats.tx_records <= 41
    for host in (client, server):
        assert host.snapshot()["interface"]["tcp_closes"].get("record_limit") == 1, (
            host.snapshot()["interface"]["tcp_closes"])
    assert client.peer()["transport"] == server.peer()["transport"] == "tcp"
    metrics = format_prometheus([server.snapshot()])
    assert re.search(r'^dtlsvpn_tcp_closes_total\{instance="[^"]*",reason="record_limit"\} 1$',
                     metrics, re.M), metrics
    log = [r.getMessage() for r in caplog.records]
    assert any("TLS keys used up over TCP and not renewed" in m and r.levelno == logging.WARNING
               for m, r in zip(log, caplog.records, strict=True)), log
    up = [m for m in log if "TLS over TCP up" in m]
    assert len(up) == 2 and "full" in up[0] and "resumed" in up[1], up
    for host in (client, server):
        assert host.peer()["handshakes"] == 2 and host.peer()["resumed"], host.peer()
    seqs = [s for _, s in got]
    assert seqs and max(seqs) > 50  # traffic went on after the redial


def test_a_renewal_retried_keeps_its_cause(world: World, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The record limit starts a renewal whose dial is refused: the retry 30 s later is
    logged with the record limit as its cause, not as the rekey interval."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server, client = _tcp_pair(world, tmp_path)
    first = client.daemon.role.tcp.link
    _budget(client, 20)
    _budget(server, 20)
    client.devices.online = False
    dials = len(client.devices.tcp_dials)
    traffic(world, client, server, 1.0, replies=False, step=0.05)
    assert len(client.devices.tcp_dials) == dials + 1  # the renewal, refused
    client.devices.online = True
    world.run_for(31.0)  # no traffic: the retry is the timer's
    assert client.daemon.role.tcp.link is not first
    renewing = [r.getMessage() for r in caplog.records
                if "renewing the keys over TCP" in r.getMessage()]
    assert len(renewing) == 2 and all("(record limit)" in m for m in renewing), renewing


def test_keys_unrenewed_stop_at_twice_the_rekey_interval(world: World, tmp_path: Path) -> None:
    server, client = _tcp_pair(world, tmp_path, rekey_interval="2")
    first = client.daemon.role.tcp.link
    assert first is not None
    client.devices.online = False
    traffic(world, client, server, 2.5)  # the renewal at 2 s is refused
    assert client.daemon.role.tcp.link is first and first.ready
    client.devices.online = True
    traffic(world, client, server, 2.5)  # 4 s: the keys are closed (2 x RekeyInterval)
    assert first.closed and client.daemon.role.tcp.link is not first
    for host in (client, server):
        closes = host.snapshot()["interface"]["tcp_closes"]
        assert closes.get("key_age") == 1, closes
    assert world.run_until(lambda: carried(client) and carried(server), within=2.0)
    assert traffic(world, client, server, 0.5)


def test_a_silent_peer_over_tcp_is_closed_as_dead(world: World, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The client vanishes without a word (its process stopped; its socket stays open, so
    TCP says nothing): the server closes the link after DeadPeerTimeout (8 s) of silence,
    at WARNING, counted ``dead_peer``; the peer is down."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server, client = _tcp_pair(world, tmp_path)
    assert traffic(world, client, server, 1.0)
    gone = world.clock.now
    client.crash()
    assert world.run_until(lambda: not server.daemon.role.tcp.owners, within=12.0)
    print(f"\nfake time: the silent client's TCP link closed {world.clock.now - gone:.2f}s "
          "after its last word")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "unresponsive over TCP" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert re.fullmatch(r"peer branch unresponsive over TCP \(nothing from 127\.0\.0\.1:\d+ "
                        r"for 8\.\ds\): TCP link closed", warnings[0]), warnings
    snap = server.snapshot()
    assert snap["interface"]["tcp_closes"] == {"dead_peer": 1}
    assert snap["peers"][0]["state"] == "down" and snap["peers"][0]["transport"] == "tcp"  # (TCP only)
    assert "dtlsvpn_tcp_closes_total" in format_prometheus([snap])


def test_spoofed_inner_sources_over_tcp_are_dropped_as_over_udp(world: World,
                                                               tmp_path: Path) -> None:
    """The same anti-spoofing on both carriers: an inner packet from outside the client's
    AllowedIPs that came over TLS never reaches the server's TUN (``spoofed_source``)."""
    server, client = _tcp_pair(world, tmp_path)
    client.tun.inject([udp("100.64.0.9", S_ADDR, seq=1), udp(C_ADDR, S_ADDR, seq=2)])
    world.run_for(0.2)
    assert [seq_of(p) for p in server.tun.drain()] == [2]
    assert server.peer()["drops"].get("spoofed_source") == 1, server.peer()["drops"]
    assert server.peer()["transport"] == "tcp"


def test_what_the_client_never_sends_over_udp_it_never_sends_over_tcp(
        world: World, tmp_path: Path) -> None:
    """The client's router runs before either carrier: a multicast packet (the kernel's
    IPv6 router solicitation on the TUN) and one to the server's own underlay address
    are dropped and counted at the client over TCP as over UDP.  Over TCP they went out
    and the server counted them as the peer's ``spoofed_source`` (seen by hand, with a
    TCP-only client in namespaces)."""
    server, client = _tcp_pair(world, tmp_path)
    solicitation = udp("fe80::1", "ff02::2", seq=1)
    client.tun.inject([solicitation, udp(C_ADDR, SERVER, seq=2), udp(C_ADDR, S_ADDR, seq=3)])
    world.run_for(0.2)
    client.tun.inject([solicitation])  # alone too (a one-packet read)
    world.run_for(0.2)
    assert [seq_of(p) for p in server.tun.drain()] == [3]
    assert "spoofed_source" not in server.peer()["drops"], server.peer()["drops"]
    drops = client.snapshot()["interface"]["drops"]
    assert (drops.get("multicast"), drops.get("recursive")) == (2, 1), drops
    assert client.peer()["tx_packets"] == 1, client.peer()


def test_the_stale_dtls_association_is_not_called_unresponsive_after_the_move(
        pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """After the move to TCP the server's DTLS association of that peer falls silent as
    expected: it is closed at info ("silent since the move to TCP"), not reported as an
    unresponsive peer at WARNING, and the peer stays up over TCP."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server, client = pair()
    world = server.world
    assert traffic(world, client, server, 1.0)
    world.net.udp_blocked = True
    traffic(world, client, server, 3.0, seq=1000)
    assert server.peer()["transport"] == "tcp"
    traffic(world, client, server, 12.0, seq=2000)  # past DeadPeerTimeout (8 s)
    assert server.peer()["transport"] == "tcp" and server.peer()["state"] == "established"
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "unresponsive" in m], lines
    assert any("peer branch: DTLS association silent since the move to TCP: closed" in m
               for m in lines), lines
    assert server.peer()["last_error"] != "PeerUnresponsive"


@pytest.mark.parametrize(("mode", "first"), [("tcp", "tcp"), ("udp", "udp"), ("auto", "udp")])
def test_a_peer_not_connected_shows_the_carrier_its_transport_tries_first(
        world: World, tmp_path: Path, mode: str, first: str) -> None:
    """Before anything is connected (no server yet) the peer's carrier is the one
    ``Transport`` dials first (a TCP-only client is not shown ``(udp)``), and the MSS
    clamp it starts with is the one it keeps once the TCP link carries."""
    server_conf, client_conf = psk_pair(tmp_path, transport=mode)
    client = world.start(client_conf, "198.18.0.2")
    world.run_for(1.0)
    assert client.peer()["state"] != "established"
    assert client.peer()["transport"] == first, client.peer()
    clamp = client.snapshot()["interface"]["mss_clamp"]
    assert clamp is not None
    if mode != "tcp":
        return
    server = world.start(server_conf, SERVER)
    assert world.run_until(lambda: carried(client) and carried(server), within=40.0)
    assert client.snapshot()["interface"]["mss_clamp"] == clamp
    server.crash()  # the link goes: still a TCP-only client
    assert world.run_until(lambda: client.peer()["state"] != "established"
                           and client.daemon.role.tcp.link is None, within=30.0)
    assert client.peer()["transport"] == "tcp", client.peer()
