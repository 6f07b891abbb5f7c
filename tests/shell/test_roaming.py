"""The client follows its own address changes (netwatch.py) on fake devices and fake time.

The fake kernel (``FakeDevices.move``) deletes the client's address and adds a new one:
sockets on the old address fail their sends with EADDRNOTAVAIL, datagrams to it are
dropped, ``route_source`` names the new address and the fake netlink monitor reports the
change.  With a connection ID the client moves its socket and sends a heartbeat at once:
the server follows with no handshake.  Without one it resumes with its ticket at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dtlsvpn.daemon.netwatch import DEBOUNCE, DEBOUNCE_MAX, Move, PathWatch
from tests.fakes.packets import udp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair
from tests.shell.conftest import CLIENT, SERVER, Pair, established

C4, S4 = "100.64.0.2", "100.64.0.1"
NEW = "198.18.0.3"


def through(world: World, src: Host, dst: Host, s: str, d: str, seq: int) -> bool:
    src.tun.inject([udp(s, d, seq=seq)])
    world.settle()
    return bool(dst.tun.drain())


def test_path_watch_decisions_and_debounce() -> None:
    w = PathWatch()
    w.dialled("198.18.0.2")
    assert w.changed(10.0) == 10.0 + DEBOUNCE
    assert w.changed(10.04) == pytest.approx(10.04 + DEBOUNCE)
    for t in (10.08, 10.12, 10.16, 10.2, 10.24):  # a chatty burst: capped
        due = w.changed(t)
    assert due == pytest.approx(10.0 + DEBOUNCE_MAX)
    w.checked()
    assert w.changed(20.0) == 20.0 + DEBOUNCE  # a new burst
    assert w.decide("198.18.0.2", "198.18.0.2", up=True) is Move.STAY
    assert w.decide(None, "198.18.0.2", up=True) is Move.WAIT
    assert w.decide("198.18.0.3", "198.18.0.2", up=True) is Move.REBIND
    w.dialled("198.18.0.3")
    assert w.decide("198.18.0.3", "198.18.0.3", up=False) is Move.STAY
    assert w.decide("198.18.1.2", "198.18.0.3", up=False) is Move.REDIAL
    assert w.decide(None, None, up=False) is Move.WAIT
    assert w.decide("198.18.1.2", None, up=False) is Move.REDIAL  # a route appeared


@pytest.mark.parametrize("cid", [True, False], ids=["cid", "no-cid"])
def test_new_address_moves_at_once(pair: Pair, cid: bool) -> None:
    server, client = pair(connection_id=cid)
    world = server.world
    assert through(world, client, server, C4, S4, 1)
    handshakes = client.peer()["handshakes"]
    moved_at = world.clock.now
    client.devices.move(NEW)
    # Within a debounce and one round trip the tunnel carries traffic again.
    assert world.run_until(lambda: established(client) and established(server)
                           and server.peer()["endpoint"].startswith(NEW), within=2.0), (
        client.peer(), server.peer())
    took = world.clock.now - moved_at
    assert through(world, client, server, C4, S4, 2)
    assert through(world, server, client, S4, C4, 3)
    assert client.peer()["roams"] == 1
    if cid:  # the server followed the CID: no handshake at all
        assert client.peer()["handshakes"] == handshakes
    else:  # a resumption with the ticket, not a full handshake
        assert client.peer()["handshakes"] == handshakes + 1
        assert client.peer()["resumed"] is True
    print(f"fake time from the kernel's event to traffic ({'CID' if cid else 'ticket'}): "
          f"{took * 1000:.0f} ms")


def test_send_errors_alone_find_the_new_address(pair: Pair) -> None:
    """No notification (a monitor that missed it): the failed send triggers the check."""
    server, client = pair()
    world = server.world
    client.devices.move(NEW, notify=False)
    client.tun.inject([udp(C4, S4, seq=1)])  # fails with EADDRNOTAVAIL
    world.settle()
    assert world.run_until(lambda: server.peer()["endpoint"].startswith(NEW), within=1.0)
    assert through(world, client, server, C4, S4, 2)


def test_no_route_waits_then_moves_when_an_address_comes(pair: Pair) -> None:
    server, client = pair(connection_id=True)
    world = server.world
    client.devices.move(None)  # the old address is gone, no new one yet
    for seq in range(20):
        client.tun.inject([udp(C4, S4, seq=seq)])
        world.run_for(0.1)
    assert client.peer()["roams"] == 0  # nothing to move to
    checks = client.daemon.role.roamer.watch.signals  # type: ignore[union-attr]
    assert checks <= 4, checks  # failed sends do not make a check every packet
    client.devices.move(NEW)
    assert world.run_until(lambda: server.peer()["endpoint"].startswith(NEW), within=2.0)
    assert through(world, client, server, C4, S4, 100)


def test_network_appearing_ends_the_back_off(world: World, tmp_path: Path) -> None:
    """Offline (no route, no server reachable): back-off; the network comes: dial now."""
    server_conf, client_conf = psk_pair(tmp_path)
    client = world.start(client_conf, CLIENT)
    client.devices.online = False
    world.run_for(120.0)  # several failed dials: the back-off is long now
    dials = len(client.devices.resolved)
    assert dials >= 5 and "unreachable" in (client.peer()["last_error"] or "")
    server = world.start(server_conf, SERVER)
    client.devices.online = True
    assert client.devices.monitor is not None
    client.devices.monitor.notify()
    assert world.run_until(lambda: established(client), within=2.0)
    assert len(client.devices.resolved) == dials + 1
    assert established(server)


def test_full_tunnel_marks_the_socket_sets_dns_and_undoes_both(world: World,
                                                               tmp_path: Path) -> None:
    server_conf, client_conf = psk_pair(tmp_path)
    text = client_conf.read_text().replace("AllowedIPs = 100.64.0.0/24, fd00::/64",
                                           "AllowedIPs = 0.0.0.0/0, ::/0")
    client_conf.write_text(text.replace("[Peer]", "DNS = 100.64.0.1\nKillSwitch = yes\n\n"
                                        "[Peer]", 1))
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client) and established(server))
    policy, resolvers = client.devices.policy, client.devices.resolvers
    assert policy is not None and resolvers is not None
    assert (policy.active, policy.families, policy.mark, policy.table, policy.kill_switch) == (
        True, {4, 6}, 51820, 51820, True)
    assert resolvers.applied and resolvers.entries == ("100.64.0.1",)
    assert resolvers.full_tunnel
    (port,) = [p for p in client.devices.ports if not p.closed]
    assert port.mark == 51820
    assert client.link.routes == []  # the /0 routes are the policy's, not the main table's
    client.stop()
    assert not policy.active and not resolvers.applied


def test_split_tunnel_has_no_policy_and_no_mark(pair: Pair) -> None:
    _, client = pair()
    assert client.devices.policy is None and client.devices.resolvers is None
    assert all(p.mark == 0 for p in client.devices.ports)


def test_reload_applies_safe_interface_changes(world: World, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Address, a fixed MTU, DNS and MSSClamp change on SIGHUP with the session kept;
    ConnectionID needs a restart: a warning, the running value stays."""
    server_conf, client_conf = psk_pair(tmp_path, mtu="1300")
    text = client_conf.read_text()
    client_conf.write_text(text.replace("[Peer]", "DNS = 100.64.0.1\n\n[Peer]", 1))
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: established(client) and established(server))
    first = client.devices.resolvers
    assert first is not None and first.applied
    client_conf.write_text(
        text.replace("Address = 100.64.0.2/24, fd00::2/64", "Address = 100.64.0.2/24, "
                     "fd00::2/64, 100.64.9.2/24")
        .replace("MTU = 1300", "MTU = 1280")
        .replace("[Peer]", "DNS = 100.64.0.53\nMSSClamp = no\nConnectionID = no\n\n[Peer]", 1))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    client.daemon.on_reload(world.clock.now)
    assert "100.64.9.2/24" in [str(a) for a in client.link.addresses]
    assert client.link.mtu == 1280 and client.daemon.tunmtu.mtu == 1280
    assert not first.applied  # the old resolvers restored...
    second = client.devices.resolvers
    assert second is not first and second is not None and second.applied
    assert second.entries == ("100.64.0.53",)  # ... and the new ones set
    iface = client.daemon.cfg.interface
    assert iface.connection_id is True and iface.mss_clamp is False and iface.mtu == 1280
    assert client.daemon.datapath is not None and client.daemon.datapath.mss4 == 0
    assert "ConnectionID changed: needs a restart" in caplog.text
    assert "[Interface] Address, MTU, MSSClamp, DNS applied" in caplog.text, caplog.text
    assert established(client) and client.peer()["handshakes"] == 1  # the session stayed
    assert through(world, client, server, C4, S4, 7)
