"""The client's dialling: back-off while the server is absent, redial and resumption after
a server restart, a refused ticket, all on fake time."""

from __future__ import annotations

import itertools
import logging
import secrets
from pathlib import Path

import pytest

from dtlsvpn.daemon.dialer import BACKOFF_CAP, DIAL_TIMEOUT
from tests.fakes.packets import udp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair, secret_file
from tests.shell.conftest import CLIENT, SERVER, established

LIVENESS = {"heartbeat_interval": 1, "dead_peer_timeout": 3}


def test_backoff_is_capped_jittered_and_resolves_each_time(world: World,
                                                           tmp_path: Path) -> None:
    # (Transport = udp: the DTLS dial's back-off alone; in auto the TCP fallback would
    # reach the server first once it appears, tests/shell/test_tcp_fallback.py)
    server_conf, client_conf = psk_pair(tmp_path, transport="udp")
    client_conf.write_text(client_conf.read_text().replace(f"{SERVER}:4433",
                                                           "office.test:4433"))
    world.net.names["office.test"] = SERVER
    client = world.start(client_conf, CLIENT)
    world.run_for(400.0)
    dials = [t for t, name in client.devices.resolved if name == "office.test"]
    assert len(dials) >= 10
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    for n, gap in enumerate(gaps):
        ceiling = min(BACKOFF_CAP, 2.0 ** n)
        assert DIAL_TIMEOUT + ceiling / 2 - 1e-6 <= gap <= DIAL_TIMEOUT + ceiling + 1e-6, (n, gaps)
    capped = gaps[6:]
    assert capped and len({round(g, 3) for g in capped}) > 1  # jittered at the cap
    peer = client.peer()
    assert peer["state"] in ("down", "connecting")
    # Offline start: READY=1 at once (configured and dialling), STATUS= not connected.
    assert peer["handshakes"] == 0 and client.messages.count("READY=1") == 1
    assert client.messages.index("READY=1") < 3
    assert any(m.startswith("STATUS=0/1 peers up") and "not connected (backing off) to "
               "office at office.test:4433" in m for m in client.messages), client.messages

    # The server appears: the next dial gets through and STATUS= says so.
    server = world.start(server_conf, SERVER)
    assert world.run_until(lambda: established(client), within=BACKOFF_CAP + DIAL_TIMEOUT + 1)
    assert established(server) and client.messages.count("READY=1") == 1
    assert client.messages[-1].startswith("STATUS=1/1 peers up")
    assert client.messages[-1].endswith(f"; connected to office at {SERVER}:4433")
    assert client.peer()["resumed"] is False


def _up_with_ticket(world: World, tmp_path: Path) -> tuple[Host, Host, Path]:
    """A server and a client with liveness checks, up, the client holding a ticket
    (Transport = udp: these are the DTLS dial's ticket rules; in auto the TCP fallback's
    full handshake would bring a fresh ticket during the outage)."""
    server_conf, client_conf = psk_pair(tmp_path, transport="udp", **LIVENESS)
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client))
    assert world.run_until(lambda: any((tmp_path / "tickets").glob("*.ticket")))
    assert (tmp_path / "server-state" / "ticket.keys").exists()
    return server, client, server_conf


def _reconnected(client: Host) -> bool:
    peer = client.peer()
    return bool(peer["state"] == "established" and peer["handshakes"] >= 2)


def test_server_restart_redial_resumes_with_ticket(world: World, tmp_path: Path) -> None:
    server, client, server_conf = _up_with_ticket(world, tmp_path)
    server.crash()
    assert world.run_until(lambda: client.peer()["state"] != "established", within=10)
    server2 = world.start(server_conf, SERVER)
    assert world.run_until(lambda: _reconnected(client), within=60)
    assert client.peer()["resumed"] is True
    assert server2.peer()["resumed"] is True and server2.peer()["handshakes"] == 1
    client.tun.inject([b"\x45" + bytes(19)])  # not a valid packet: still no crash
    world.settle()


def test_refused_ticket_falls_back_to_a_full_handshake(world: World, tmp_path: Path) -> None:
    server, client, server_conf = _up_with_ticket(world, tmp_path)
    (ticket,) = (tmp_path / "tickets").glob("*.ticket")
    old_ticket = ticket.read_text()
    server.crash()
    (tmp_path / "server-state" / "ticket.keys").unlink()  # new keys: the ticket is refused
    server2 = world.start(server_conf, SERVER)
    assert world.run_until(lambda: _reconnected(client), within=60)
    assert client.peer()["resumed"] is False
    assert server2.peer()["resumed"] is False
    assert world.run_until(lambda: ticket.exists() and ticket.read_text() != old_ticket)


def test_a_ticket_made_under_other_credentials_is_not_offered(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The client's PSK is replaced while it is stopped.  Its stored ticket resumes the
    old PSK's session, so offering it would get the client in with the credential it no
    longer has (it did): the ticket is deleted unused, and the full handshake with the
    new PSK is refused by a server still holding the old one."""
    caplog.set_level(logging.INFO)
    server, client, server_conf = _up_with_ticket(world, tmp_path)
    (ticket,) = (tmp_path / "tickets").glob("*.ticket")
    client.stop()
    secret_file(tmp_path / "psk.hex", secrets.token_hex(32) + "\n")  # the server keeps the old
    again = world.start(client.conf, CLIENT)
    world.run_for(10.0)
    assert not established(again), again.peer()
    assert again.peer()["handshakes"] == 0 and not ticket.exists()
    assert "made under other credentials" in caplog.text
    server.stop()  # the server gets the new PSK too: a full handshake, and a new ticket
    world.start(server_conf, SERVER)
    assert world.run_until(lambda: established(again), within=60)
    assert again.peer()["resumed"] is False
    assert world.run_until(ticket.exists)


def test_a_removed_peer_backs_off_to_the_cap(world: World, tmp_path: Path) -> None:
    """The server is reloaded without the client's [Peer]: every redial is refused (the
    ticket's resumption, then full handshakes), and the redials back off to the cap
    instead of coming about once a second."""
    server_conf, client_conf = psk_pair(tmp_path)
    client_conf.write_text(client_conf.read_text().replace(f"{SERVER}:4433",
                                                           "office.test:4433"))
    world.net.names["office.test"] = SERVER
    original = server_conf.read_text()
    other = f"""
[Peer]
Name = other
PSKIdentity = other
PSKFile = {tmp_path / "psk.hex"}
AllowedIPs = 100.64.0.3/32
"""
    server_conf.write_text(original + other)
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client))
    assert world.run_until(lambda: any((tmp_path / "tickets").glob("*.ticket")))
    start = world.clock.now
    server_conf.write_text(original.split("[Peer]")[0] + other)  # without "branch"
    server.daemon.on_reload(world.clock.now)
    assert [p["name"] for p in server.snapshot()["peers"]] == ["other"]
    world.run_for(300.0)
    dials = [t for t, name in client.devices.resolved if name == "office.test" and t >= start]
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    print(f"\nredials of a removed peer in 300 s: {len(dials)}; gaps (fake s): "
          + ", ".join(f"{g:.1f}" for g in gaps))
    assert 6 <= len(dials) <= 20, gaps
    assert max(gaps) <= BACKOFF_CAP + DIAL_TIMEOUT + 1e-6
    assert min(gaps[-3:]) >= BACKOFF_CAP / 2  # at the cap, jittered
    assert client.peer()["state"] != "established"


def test_a_name_with_both_families_takes_the_one_with_a_route(world: World,
                                                              tmp_path: Path) -> None:
    """office.test has AAAA and A records; this network has no IPv6 route: the first
    dial goes to the IPv4 address, not into a dial timeout on the IPv6 one."""
    server_conf, client_conf = psk_pair(tmp_path)
    client_conf.write_text(client_conf.read_text().replace(f"{SERVER}:4433",
                                                           "office.test:4433"))
    world.net.names["office.test"] = ["2001:db8::1", SERVER]
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    client.devices.families = {4}
    assert world.run_until(lambda: established(client), within=2.0)
    assert established(server) and client.peer()["endpoint"] == f"{SERVER}:4433"
    assert len(client.devices.resolved) == 1


@pytest.mark.parametrize("mode", ["udp", "tcp", "auto"])
def test_a_reload_with_a_new_key_dials_at_once(world: World, tmp_path: Path, mode: str) -> None:
    """A wrong PSK: the client's redials back off.  The operator fixes the PSK file and
    reloads: the peer's credentials changed, so its back-off starts afresh and it dials at
    once (DTLS or TLS), not when the backed-off timer would have fired."""
    server_conf, client_conf = psk_pair(tmp_path, transport=mode)
    right = (tmp_path / "psk.hex").read_text()
    wrong = secret_file(tmp_path / "wrong.hex", secrets.token_hex(32) + "\n")
    text = client_conf.read_text()
    client_conf.write_text(text.replace(f"PSKFile = {tmp_path / 'psk.hex'}",
                                        f"PSKFile = {wrong}"))
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    world.run_for(40.0)
    assert not established(client)
    role = client.daemon.role
    waits = ([role.dialer.deadline] if mode == "udp"
             else [role.tcp.not_before, role.tcp._redial.when])
    backed_off = max(w for w in waits if w is not None) - world.clock.now
    assert backed_off > 2.0, waits  # the next dial is a while away
    secret_file(wrong, right)  # fixed in place: same path, the right key
    client.daemon.on_reload(world.clock.now)
    assert world.run_until(lambda: established(client) and established(server),
                           within=1.0), (backed_off, client.snapshot())
    print(f"\n{mode}: the fixed key dialled at the reload, not {backed_off:.1f} s later")


def test_before_a_session_the_router_counts_its_own_drops(world: World, tmp_path: Path) -> None:
    """A client with no session yet: a unicast packet is ``no_session``, but the kernel's
    router solicitation on the new TUN (multicast) is counted as the router counts it,
    not as a packet lost for want of a session (every fresh client showed
    ``no_session=1`` for it)."""
    _server_conf, client_conf = psk_pair(tmp_path, transport="udp")
    client = world.start(client_conf, CLIENT)  # no server: it stays unconnected
    client.tun.inject([udp("fe80::1", "ff02::2", seq=1)])
    world.run_for(0.5)
    client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=2),
                       udp("fe80::1", "ff02::2", seq=3)])
    world.run_for(0.5)
    assert client.peer()["drops"].get("no_session") == 1, client.peer()["drops"]
    assert client.snapshot()["interface"]["drops"].get("multicast") == 2
