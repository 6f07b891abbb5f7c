"""A server receive batch that mixes a busy peer's data with idle peers' keepalives.

The ``bench.micro_idle`` world (a real server daemon on the fakes, a busy daemon client,
idle sans-I/O clients): the busy peer's GSO runs (coalesced by the fake kernel's GRO),
idle keepalive requests, a replayed request and a replayed data record all wait on the
server's socket at once.  Read as one batch (``Datapath.server_udp`` as a wake-up does
it: the fast lane takes the busy runs) or one datagram per wake-up (through
``ServerEndpoint.receive`` each), the server must write the same packets to its TUN,
send the same records to every peer (type, epoch, sequence number, size: the ECDHE
keys, and so the ciphertexts, differ from run to run) and count the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.micro_datapath import tcp_packet
from bench.micro_idle import (
    BUSY_ADDR,
    BUSY_HOST,
    BUSY_TARGET,
    SERVER,
    WARMUP,
    _busy_up,
    _Clients,
    _run,
    busy_conf,
    server_conf,
)
from tests.fakes.world import Host, World

IDLE = 6


def _world(tmp: Path) -> tuple[World, Host, Host, _Clients]:
    world = World(start=1000.0)
    server = world.start(server_conf(tmp, IDLE, busy=True), SERVER[0])
    client = world.start(busy_conf(tmp), BUSY_HOST)
    clients = _Clients(world, IDLE, 0.0002)
    while clients.established < IDLE or not _busy_up(client):
        _run(world, clients, world.clock.now + 1.0)
        assert world.clock.now < 1100, "the pairs did not come up"
    _run(world, clients, world.clock.now + WARMUP)
    return world, server, client, clients


def _counters(snap: dict[str, Any]) -> list[Any]:
    return [{k: p[k] for k in ("name", "rx_bytes", "rx_packets", "tx_bytes", "tx_packets",
                               "drops", "dtls")} for p in snap["peers"]]


def _scenario(tmp: Path, one_by_one: bool) -> tuple[Any, ...]:
    world, server, client, clients = _world(tmp)
    net = world.net
    sent: list[tuple[Any, bytes, int, int]] = []  # what the server sends: to, header, size
    real_deliver = net.deliver
    caught: list[tuple[bytes, Any]] = []  # a busy peer's data record, for the replay

    def deliver(data: bytes, src: Any, dst: Any, gso: int = 0) -> None:
        if src == SERVER:
            sent.append((dst, bytes(data[:13]), len(data), gso))  # (keys differ per run)
        elif src[0] == BUSY_HOST and gso and not caught:
            caught.append((bytes(data[:gso]), src))
        real_deliver(data, src, dst, gso)

    net.deliver = deliver  # type: ignore[method-assign]
    role = server.daemon.role
    dp = server.daemon.datapath
    assert role is not None and dp is not None
    sock = role.sock  # type: ignore[attr-defined]
    pending: list[Any] = []
    real_recv = sock.recvfrom_batch
    reads: list[int] = []  # datagrams per read of the real socket

    def counted(budget: int) -> tuple[list[Any], OSError | None]:
        got, error = real_recv(budget)
        reads.append(len(got))
        return got, error

    def one_at_a_time(budget: int) -> tuple[list[Any], OSError | None]:
        if not pending:
            pending.extend(counted(budget)[0])
        return ([pending.pop(0)] if pending else []), None

    sock.recvfrom_batch = one_at_a_time if one_by_one else counted
    tun_out = []
    for r in range(3):
        now = world.clock.now
        batch = [tcp_packet(BUSY_ADDR, BUSY_TARGET, r * 128 + j) for j in range(64)]
        client.tun.inject(batch[:32])
        client.loop.run_once(max_wait=0)  # its records wait on the server's socket
        for i in range(IDLE):  # keepalive requests of every idle peer, in between
            ka = clients.assocs[i]._keepalive
            assert ka is not None
            ka.probe_now(now)
            clients.service(i)
        requests = [entry for entry in clients.out]
        for _t, _s, i, d in sorted(clients.out):
            net.deliver(d, clients.addrs[i], SERVER)
        clients.out.clear()
        _t, _s, i, d = requests[0]
        net.deliver(d, clients.addrs[i], SERVER)  # a replayed keepalive request
        net.deliver(*caught[0], SERVER)  # a replayed data record
        client.tun.inject(batch[32:])
        client.loop.run_once(max_wait=0)
        first = len(reads)
        wall = world.clock.wall
        dp.server_udp(0, now, wall)
        while pending:
            server.loop.run_once(max_wait=0)  # the deferred service, then the next one
            dp.server_udp(0, now, wall)
        server.loop.run_once(max_wait=0)
        assert reads[first] == 64 + IDLE + 2  # all of it in one receive batch
        tun_out.append(server.tun.drain())
        assert tun_out[-1] == batch
        world.clock.advance_to(now + 0.5)
        _run(world, clients, world.clock.now + 0.5)
    answered = sum(1 for dst, head, _n, _g in sent if dst[0] != BUSY_HOST and head[0] == 24)
    result = (tun_out, sent, _counters(server.snapshot()), answered)
    world.close()
    return result


def test_mixed_batch_equals_datagram_by_datagram(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    batched = _scenario(tmp_path / "a", one_by_one=False)
    single = _scenario(tmp_path / "b", one_by_one=True)
    assert batched == single
    _tun_out, _sent, counters, answered = batched
    assert answered >= 3 * IDLE  # every request answered (the replay not)
    busy = next(p for p in counters if p["name"] == "busy")
    assert busy["dtls"]["replay"] == 3 and busy["rx_packets"] >= 3 * 64
    assert sum(p["dtls"].get("replay", 0) for p in counters if p["name"] != "busy") == 3
