"""The client's PMTU ceiling follows the underlay's MTU after the dial (daemon/client.py).

At the dial the connected socket's path MTU (``IP_MTU``) caps the DPLPMTUD search.  When
the interface MTU towards the server falls later (``ip link set dev X mtu N``, a route's
``mtu``) without a new address or route source, the client reads it again when netlink
reports a change that leads to no rebind or redial, and when a send fails with
EMSGSIZE, and moves the association's ceiling: the search drops and finds the new
size with the same association (no redial, no handshake); when the MTU rises again a
search that had reached the old ceiling climbs at once.

The fake kernel (``FakeNet.link_mtu``): the client's sockets report the lower MTU and
refuse larger datagrams with EMSGSIZE; nothing is put on the error queue, so only the
new reading can tell the association.
"""

from __future__ import annotations

from dtlsvpn.daemon.client import ClientRole
from tests.fakes.packets import udp
from tests.fakes.world import Host, World
from tests.shell.conftest import CLIENT, Pair, established

C4, S4 = "100.64.0.2", "100.64.0.1"
LOWER = 1400
NEW = "198.18.0.3"  # the client's address after a move


def _settled_at_1500(client: Host, server: Host) -> None:
    world = client.world
    assert world.run_until(lambda: client.peer()["plpmtu"] == 1500, within=30.0), client.peer()
    world.run_for(5.0)
    assert client.peer()["plpmtu"] == 1500 and established(server)


def _followed_down(client: Host, handshakes: int, dials: int) -> None:
    world = client.world
    assert world.run_until(lambda: client.peer()["plpmtu"] == LOWER, within=5.0), (
        client.peer())
    want = LOWER - 20 - 8 - client.peer()["record_overhead"]
    assert world.run_until(lambda: client.snapshot()["interface"]["mtu"] == want,
                           within=10.0), client.link.mtu_history
    assert established(client)
    assert client.peer()["handshakes"] == handshakes  # the same association
    assert len(client.devices.resolved) == dials  # no redial
    role = client.daemon.role
    assert isinstance(role, ClientRole)
    conn = role.peer.conn
    assert conn is not None and conn.config.pmtu is not None
    assert conn.config.pmtu.local_mtu == LOWER  # the renewals' ceiling too


def test_a_lower_interface_mtu_reported_by_netlink_is_followed(pair: Pair) -> None:
    """An idle tunnel (no data: no confirmation probes, so no black-hole detection)
    whose interface MTU falls: the netlink notification alone brings the search down."""
    server, client = pair()
    world = server.world
    _settled_at_1500(client, server)
    handshakes, dials = client.peer()["handshakes"], len(client.devices.resolved)
    world.net.link_mtu[CLIENT] = LOWER
    assert client.devices.monitor is not None
    client.devices.monitor.notify()  # RTM_NEWLINK: same address, same route source
    _followed_down(client, handshakes, dials)
    assert client.peer()["roams"] == 0
    assert client.peer()["drops"].get("emsgsize", 0) == 0


def test_emsgsize_alone_makes_the_client_read_the_mtu_again(pair: Pair) -> None:
    """No notification (a monitor that missed it): the send the kernel refused with
    EMSGSIZE makes the client read the socket's MTU again."""
    server, client = pair()
    world = server.world
    _settled_at_1500(client, server)
    handshakes, dials = client.peer()["handshakes"], len(client.devices.resolved)
    world.net.link_mtu[CLIENT] = LOWER
    big = udp(C4, S4, seq=1, size=1420)  # fits the old tunnel MTU, not the new path
    client.tun.inject([big])
    world.settle()
    assert client.peer()["drops"].get("emsgsize") == 1
    _followed_down(client, handshakes, dials)
    world.settle()
    server.tun.drain()
    client.tun.inject([udp(C4, S4, seq=2)])
    world.settle()
    assert len(server.tun.drain()) == 1


def test_a_higher_mtu_again_is_found_at_once(pair: Pair) -> None:
    """Back up: the ceiling is lifted and the search that had reached the old one
    resumes at once (not at its 600 s raise timer); the size is confirmed by probes."""
    server, client = pair()
    world = server.world
    _settled_at_1500(client, server)
    handshakes, dials = client.peer()["handshakes"], len(client.devices.resolved)
    world.net.link_mtu[CLIENT] = LOWER
    assert client.devices.monitor is not None
    client.devices.monitor.notify()
    _followed_down(client, handshakes, dials)
    _climbs_back(client, handshakes, dials)


def test_a_tunnel_dialled_under_a_lower_mtu_climbs_when_it_rises(world: World,
                                                                  pair: Pair) -> None:
    """Dialled while the link's MTU was 1400 (the search capped there from the start,
    as no probe the kernel would refuse is sent): when the link is back at 1500 the
    same association climbs, instead of waiting for its renewal an hour later."""
    world.net.link_mtu[CLIENT] = LOWER
    _server, client = pair()
    assert world.run_until(lambda: client.peer()["plpmtu"] == LOWER, within=30.0), (
        client.peer())
    world.run_for(5.0)
    assert client.peer()["plpmtu"] == LOWER
    handshakes, dials = client.peer()["handshakes"], len(client.devices.resolved)
    _climbs_back(client, handshakes, dials)


def _climbs_back(client: Host, handshakes: int, dials: int) -> None:
    world = client.world
    del world.net.link_mtu[CLIENT]
    assert client.devices.monitor is not None
    client.devices.monitor.notify()  # RTM_NEWLINK: the MTU is back at 1500
    assert world.run_until(lambda: client.peer()["plpmtu"] == 1500, within=10.0), (
        client.peer())
    role = client.daemon.role
    assert isinstance(role, ClientRole) and role.path_mtu == 1500
    conn = role.peer.conn
    assert conn is not None and conn.config.pmtu is not None
    assert conn.config.pmtu.local_mtu == 1500
    want = 1500 - 20 - 8 - client.peer()["record_overhead"]
    assert world.run_until(lambda: client.snapshot()["interface"]["mtu"] == want,
                           within=10.0), client.link.mtu_history
    assert client.peer()["handshakes"] == handshakes  # (the renewal is an hour away)
    assert len(client.devices.resolved) == dials
    assert client.peer()["drops"].get("emsgsize", 0) == 0


def test_the_server_follows_a_moved_peer_to_a_larger_path_mtu(world: World,
                                                              pair: Pair) -> None:
    """The server's search towards a client is bounded by its kernel's path MTU
    towards the client's address; when the client moves (RFC 9146) to an address with
    a larger path MTU, the server's search climbs to it with the same association."""
    world.net.route_mtu[CLIENT] = LOWER
    server, client = pair(connection_id=True)
    assert world.run_until(lambda: server.peer()["plpmtu"] == LOWER, within=30.0), (
        server.peer())
    world.run_for(5.0)
    assert server.peer()["plpmtu"] == LOWER
    handshakes = server.peer()["handshakes"]
    client.devices.move(NEW)  # no route_mtu entry: the 1500 path
    assert world.run_until(lambda: server.peer()["endpoint"].startswith(NEW), within=5.0)
    assert world.run_until(lambda: server.peer()["plpmtu"] == 1500, within=10.0), (
        server.peer())
    assert server.peer()["handshakes"] == handshakes
    assert server.peer()["drops"].get("emsgsize", 0) == 0


def test_a_search_that_ends_at_its_ceiling_sets_the_tun_mtu_at_once(pair: Pair) -> None:
    """The report that completes the search (the ceiling acked) is applied with no
    settle delay: the TUN goes from its start-up MTU to the final one in one step, as
    soon as the PLPMTU is known, on both ends (a raise in mid-search is still held)."""
    server, client = pair()
    world = server.world
    for host in (client, server):
        assert world.run_until(lambda h=host: h.peer()["plpmtu"] == 1500, within=30.0)
    for host in (client, server):
        want = 1500 - 20 - 8 - host.peer()["record_overhead"]
        assert world.run_until(lambda h=host, w=want: h.snapshot()["interface"]["mtu"] == w,
                               within=0.05), host.link.mtu_history
        assert host.link.mtu_history[-1] == want and len(host.link.mtu_history) <= 2, (
            host.link.mtu_history)
