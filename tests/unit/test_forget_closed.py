"""Closed associations leave the server's table without a walk over all of them.

* ``ServerEndpoint.forget_closed(closed)`` leaves the table and the CID index as
  ``remove_closed`` (the walk) would, touching only the associations it is given: the
  table here refuses to be iterated;
* the server daemon (the ``bench.micro_idle`` fake world) forgets peers that sent
  close_notify and peers that went silent (PeerUnresponsive), with the walk switched off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

from bench.micro_idle import SERVER, WARMUP, _Clients, _run, server_conf
from bench.pairs import Pairing, configs
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from tests.fakes.world import World


class _NoWalk(dict):  # type: ignore[type-arg]
    """A table that may be looked up and changed, never walked."""

    def _walk(self, *_a: object) -> NoReturn:
        raise AssertionError("the table was walked")

    items = values = keys = __iter__ = _walk  # type: ignore[assignment]

    def plain(self) -> dict[Any, Any]:
        return dict(dict.items(self))


def test_forget_closed_equals_the_walk_without_walking() -> None:
    client_cfg, server_cfg = configs("psk-plain", None)  # type: ignore[arg-type]
    pairing = Pairing(server_cfg)
    shakes = [pairing.handshake(client_cfg) for _ in range(8)]
    endpoint = pairing.endpoint
    now = 1.0
    for h in (shakes[2], shakes[5]):
        h.server.close(now)  # closed by the server (as on a timeout)
    shakes[3].client.close(now)  # close_notify from the client
    addr3 = endpoint.address_of(shakes[3].server)
    assert addr3 is not None
    for d in shakes[3].client.datagrams_to_send(now):
        endpoint.receive(d, addr3, now, 0.0)
    closed = [shakes[i].server for i in (2, 3, 5)]
    assert all(a.is_closed for a in closed)
    expected = {addr: a for addr, a in endpoint.associations.items() if not a.is_closed}
    expected_cids = {c: a for c, a in endpoint._by_cid.items() if not a.is_closed}
    freed = {addr for addr, a in endpoint.associations.items() if a.is_closed}
    assert len(expected) == 5 and len(expected_cids) == 5  # (connection IDs are on)
    endpoint.associations = _NoWalk(endpoint.associations)
    # Given: the closed ones, an open one (stays) and a closed one twice (no-op).
    assert set(endpoint.forget_closed([*closed, shakes[0].server, closed[0]])) == freed
    assert endpoint.associations.plain() == expected  # type: ignore[attr-defined]
    assert endpoint._by_cid == expected_cids
    assert all(endpoint.address_of(a) is None for a in closed)
    endpoint.associations = endpoint.associations.plain()  # type: ignore[attr-defined]
    assert endpoint.remove_closed() == []  # the walk finds nothing left behind


def test_forget_closed_leaves_an_address_taken_over_alone() -> None:
    """A closed association whose address a newer one holds is not in the table: the
    newer one stays (as with the walk)."""
    client_cfg, server_cfg = configs("psk-plain", None)  # type: ignore[arg-type]
    pairing = Pairing(server_cfg)
    h = pairing.handshake(client_cfg)
    endpoint = pairing.endpoint
    addr = endpoint.address_of(h.server)
    assert addr is not None
    stranger = Association(DtlsConfig(is_client=False, psk_lookup={}.get))
    stranger.close(1.0)
    assert endpoint.forget_closed([stranger]) == []
    assert endpoint.associations == {addr: h.server}


def _server_table(world: World) -> ServerEndpoint:
    role: Any = world.hosts[0].daemon.role
    endpoint = role.endpoint
    assert isinstance(endpoint, ServerEndpoint)
    return endpoint


def test_the_daemon_forgets_closing_peers_without_the_walk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(self: ServerEndpoint) -> NoReturn:
        raise AssertionError("remove_closed: a walk over every association")

    monkeypatch.setattr(ServerEndpoint, "remove_closed", walk)
    n = 8
    world = World(start=1000.0)
    world.start(server_conf(tmp_path, n), SERVER[0])
    clients = _Clients(world, n, 0.0002)
    while clients.established < n:
        _run(world, clients, world.clock.now + 1.0)
        assert world.clock.now < 1100, "the idle pairs did not come up"
    _run(world, clients, world.clock.now + WARMUP)
    endpoint = _server_table(world)
    assert len(endpoint.associations) == n
    now = world.clock.now
    for i in (1, 4):  # close_notify
        clients.assocs[i].close(now)
        clients.service(i)
    silent = 6  # goes away without a word: the server finds it unresponsive
    world.net.ports.pop(clients.addrs[silent])
    clients.assocs[silent] = Association(DtlsConfig(is_client=True, psk=b"x" * 32,
                                                    psk_identity=b"gone"))
    _run(world, clients, now + 1.0)
    assert sorted(endpoint.associations) == sorted(
        clients.addrs[i] for i in range(n) if i not in (1, 4))
    _run(world, clients, now + 300.0)
    assert sorted(endpoint.associations) == sorted(
        clients.addrs[i] for i in range(n) if i not in (1, 4, silent))
    assert len(endpoint._by_cid) == n - 3
    peers = {p["name"]: p["state"] for p in world.hosts[0].snapshot()["peers"]}
    assert sum(state == "established" for state in peers.values()) == n - 3
    assert world.hosts[0].daemon.status_line().startswith(f"{n - 3}/{n} peers up")
    world.close()
