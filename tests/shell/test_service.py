"""The data path defers the role's slow-path service only when an association needs
it (``needs_service``): a data-only wake-up runs none, a heartbeat's does."""

from __future__ import annotations

from collections.abc import Callable

from tests.fakes.packets import udp
from tests.fakes.world import Host
from tests.shell.conftest import Pair


def count_services(host: Host) -> list[int]:
    """Wrap the service the data path defers; return the live call count."""
    dp = host.daemon.datapath
    assert dp is not None and dp.service is not None
    calls = [0]
    inner: Callable[[float, float], None] = dp.service

    def counted(now: float, wall: float) -> None:
        calls[0] += 1
        inner(now, wall)

    dp.service = counted
    return calls


def test_data_only_wakeups_run_no_service_heartbeats_do(pair: Pair) -> None:
    server, client = pair()
    world = server.world
    world.run_for(20.0)  # the PMTU search settles, the first data opened the fast path
    for i in range(3):  # warm: the first data each way opens the fast path
        client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=i)])
        server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=i)])
        world.settle()
    server.tun.drain()
    client.tun.drain()
    at_server, at_client = count_services(server), count_services(client)
    for i in range(10):  # ping-pong without letting time pass
        client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=100 + i)])
        world.settle()
        assert len(server.tun.drain()) == 1
        server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=100 + i)])
        world.settle()
        assert len(client.tun.drain()) == 1
    assert (at_server[0], at_client[0]) == (0, 0)
    sent = server.daemon.datapath.endpoint.associations  # type: ignore[union-attr]
    def beats() -> int:  # keepalives the server sent or answered (the client runs them)
        return sum(a.stats.heartbeats_sent + a.stats.heartbeat_answered for a in sent.values())

    before = beats()
    world.run_for(5.0)  # idle past the keepalive interval: a keepalive exchange
    assert beats() > before
    assert at_server[0] >= 1 and at_client[0] >= 1  # requests and responses serviced
