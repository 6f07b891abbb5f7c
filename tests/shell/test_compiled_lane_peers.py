"""The compiled lane on a server with two peers: each packet to and from its own peer.

A server holds one flow per established peer.  Toward the peers C picks the flow
whose AllowedIPs hold the packet's destination; from the peers it picks the flow
whose address the datagram came from (both clients here on 127.0.0.1, so the port
tells them apart).  The script interleaves lone packets to and from both clients;
with the lane and without, every host must receive exactly its own packets and each
peer's counters must agree, and the server's lane counters must show that C, not
Python, carried the packets of both peers once each had its first packet (a datagram
opened with the other peer's keys fails its tag and is handed back, which the counts
would show).

Both directions were seen to fail against a ``_lane.c`` that took the first armed
flow whatever the destination (the other client never got its packet) and one that
took it whatever the source (half the datagrams handed back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.loopback import LoopbackWorld, Node
from tests.fakes.packets import seq_of, udp
from tests.shell.conftest import hub_conf, needs_lane

pytestmark = needs_lane

BRANCHES = {"a": ("100.64.0.2", "fd00::2"), "b": ("100.64.0.3", "fd00::3")}
SERVER = ("100.64.0.1", "fd00::1")
ROUNDS = 5


def configs(workdir: Path, *, compiled: bool, cid: bool) -> tuple[Path, dict[str, Path]]:
    return hub_conf(workdir, BRANCHES, ("100.64.0.1/24", "fd00::1/64"),
                    ("100.64.0.0/24", "fd00::/64"), compiled_lane=compiled,
                    transport="udp", heartbeat_interval=60, dead_peer_timeout=180,
                    connection_id=cid, log_level="debug")


def run(worlds: list[LoopbackWorld], workdir: Path, *, compiled: bool, cid: bool
        ) -> dict[str, Any]:
    hub_conf, client_confs = configs(workdir, compiled=compiled, cid=cid)
    world = LoopbackWorld()
    worlds.append(world)
    hub = world.start(hub_conf)
    clients = {b: world.start(conf) for b, conf in client_confs.items()}
    nodes: list[Node] = [hub, *clients.values()]

    def ready() -> bool:
        peers = [p for node in nodes for p in node.snapshot()["peers"]]
        return len(peers) == 4 and all(
            p["state"] == "established" and p["plpmtu"] is not None and not p["rekeying"]
            for p in peers)

    assert world.run_until(ready, within=10.0), [n.snapshot()["peers"] for n in nodes]
    world.settle(0.2)
    got: dict[str, list[bytes]] = {name: [] for name in ("hub", *clients)}

    def drain() -> None:
        got["hub"] += hub.tun.drain()
        for b, node in clients.items():
            got[b] += node.tun.drain()

    def send(sender: Node, packet: bytes, to: str) -> None:
        want = len(got[to]) + 1
        sender.tun.inject([packet])

        def done() -> bool:
            drain()
            return len(got[to]) >= want

        assert world.run_until(done, within=3.0), (to, packet[:40].hex())
        world.settle(0.01)

    warm: dict[str, int] | None = None
    for i in range(ROUNDS):
        if i == 1:  # each peer served once: both flows armed from here on
            warm = dict(hub.snapshot()["interface"]["compiled_lane"] or {})
        size = 60 + (i * 311) % 1200
        for n, (b, (v4, v6)) in enumerate(BRANCHES.items()):
            seq = 1000 * (n + 1) + 10 * i
            send(hub, udp(SERVER[0], v4, seq=seq, size=size), b)
            send(hub, udp(SERVER[1], v6, seq=seq + 1, size=size), b)
            send(clients[b], udp(v4, SERVER[0], seq=seq + 2, size=size), "hub")
            send(clients[b], udp(v6, SERVER[1], seq=seq + 3, size=size), "hub")
    world.settle(0.05)
    drain()
    out: dict[str, Any] = {"received": {k: [seq_of(p) for p in v] for k, v in got.items()}}
    for peer in hub.snapshot()["peers"]:
        out[peer["name"]] = {k: peer[k] for k in ("rx_packets", "rx_bytes", "tx_packets",
                                                  "tx_bytes", "drops")}
    lane_now = hub.snapshot()["interface"]["compiled_lane"]
    out["lane"] = None if lane_now is None or warm is None else {
        k: lane_now[k] - warm[k] for k in ("tx_packets", "rx_packets", "handed_back")} | {
        "flows": lane_now["flows"]}
    world.close()
    return out


@pytest.mark.parametrize("cid", [True, False], ids=["cid", "no-cid"])
def test_each_peers_packets_take_its_own_flow(worlds: list[LoopbackWorld], tmp_path: Path,
                                              cid: bool) -> None:
    on = run(worlds, tmp_path / "on", compiled=True, cid=cid)
    off = run(worlds, tmp_path / "off", compiled=False, cid=cid)
    lane_counts = on.pop("lane")
    assert off.pop("lane") is None
    assert on == off
    for n, b in enumerate(BRANCHES):
        base = 1000 * (n + 1)
        want = sorted(base + 10 * i + k for i in range(ROUNDS) for k in (0, 1))
        assert sorted(on["received"][b]) == want, b
    assert sorted(on["received"]["hub"]) == sorted(
        1000 * (n + 1) + 10 * i + k for n in range(len(BRANCHES)) for i in range(ROUNDS)
        for k in (2, 3))
    # After the first round (a server arms the peers its Python lone lanes served
    # last, so each peer's first packet is Python's): every packet of both peers
    # sealed and opened in C, in the hub's flow for each, none handed back.
    each_way = 2 * (ROUNDS - 1) * len(BRANCHES)
    assert lane_counts == {"tx_packets": each_way, "rx_packets": each_way,
                           "handed_back": 0, "flows": len(BRANCHES)}, lane_counts
