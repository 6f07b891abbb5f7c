"""A server with more active peers than the compiled lane has flows (``lane.MAX_FLOWS``).

The lane arms the peers whose lone packets the Python lanes served (``Lane.offer``).
With every flow taken, a newly offered peer may take only the flow idle longest, and
only one idle for ``EVICT_IDLE`` or more, counting what C carried for it: a flow C
keeps busy is never given up.  (Before, the offers were kept in the order Python
served them; the peers C carried never came back to Python, so they aged there and
were the first given up for the next newcomer, which then lost its flow in turn:
every packet of the peers beyond ``MAX_FLOWS`` re-armed a flow, and each peer took
its turn in Python.)

Here ``MAX_FLOWS + 2`` branches behind one hub, lone packets both ways to and from
each in turn: the first ``MAX_FLOWS`` keep their flows (no arming while they are
busy, all their packets in C), the two others stay with Python; once two of the first
go quiet for ``EVICT_IDLE`` (the two offered last, so that only what C carried tells
the busy ones from them), the newcomers take exactly those two flows, C carries
theirs, and the two quiet branches, back, stay with Python while every flow is busy.
Every packet reaches its own host either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtlsvpn.daemon import lane
from tests.fakes.loopback import LoopbackWorld, Node
from tests.fakes.packets import seq_of, udp
from tests.shell.conftest import hub_conf, needs_lane

pytestmark = needs_lane

HUB = "100.64.0.1"
EVICT_IDLE = 0.3  # (the module's 1 s, shortened so that the quiet spell is short)


def branch_ip(i: int) -> str:
    return f"100.64.0.{10 + i}"


def start(worlds: list[LoopbackWorld], workdir: Path, count: int
          ) -> tuple[LoopbackWorld, Node, list[Node]]:
    hub, confs = hub_conf(workdir, {str(i): (branch_ip(i),) for i in range(count)},
                          (f"{HUB}/24",), ("100.64.0.0/24",), compiled_lane=True,
                          transport="udp", heartbeat_interval=60, dead_peer_timeout=180)
    world = LoopbackWorld()
    worlds.append(world)
    server = world.start(hub)
    branches = [world.start(conf) for conf in confs.values()]

    def ready() -> bool:
        peers = [p for node in (server, *branches) for p in node.snapshot()["peers"]]
        return len(peers) == 2 * count and all(
            p["state"] == "established" and p["plpmtu"] is not None and not p["rekeying"]
            for p in peers)

    assert world.run_until(ready, within=20.0), server.snapshot()["peers"]

    def mtus_applied() -> bool:  # (a search that ended by losses is applied 1 s later;
        # a new MTU or MSS clamp re-arms a flow, which is not what is counted here)
        return all(p.mtu.due is None for node in (server, *branches)
                   for p in node.daemon.peers)

    assert world.run_until(mtus_applied, within=10.0)
    world.settle(0.2)
    return world, server, branches


class Exchanges:
    """Lone packets between the hub and one branch, each waited for, and the hub's lane
    counters."""

    def __init__(self, world: LoopbackWorld, hub: Node, branches: list[Node]) -> None:
        self.world, self.hub, self.branches = world, hub, branches
        self.got: list[list[int]] = [[] for _ in branches]
        self.at_hub: list[int] = []
        self.seq = iter(range(1, 10_000))

    def __call__(self, i: int) -> None:
        """One lone packet hub -> branch i and one back."""
        down, up = next(self.seq), next(self.seq)
        got, at_hub = self.got[i], self.at_hub
        want_down, want_up = len(got) + 1, len(at_hub) + 1
        self.hub.tun.inject([udp(HUB, branch_ip(i), seq=down, size=200)])

        def arrived_down() -> bool:
            got.extend(seq_of(p) for p in self.branches[i].tun.drain())
            return len(got) >= want_down

        assert self.world.run_until(arrived_down, within=3.0), i
        self.branches[i].tun.inject([udp(branch_ip(i), HUB, seq=up, size=200)])

        def arrived_up() -> bool:
            at_hub.extend(seq_of(p) for p in self.hub.tun.drain())
            return len(at_hub) >= want_up

        assert self.world.run_until(arrived_up, within=3.0), i
        assert got[-1] == down and at_hub[-1] == up

    def counts(self) -> dict[str, int]:
        c = self.hub.snapshot()["interface"]["compiled_lane"]
        assert c is not None
        return c


def test_busy_flows_are_kept_and_idle_ones_go_to_newcomers(
        worlds: list[LoopbackWorld], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setattr(lane, "EVICT_IDLE", EVICT_IDLE)
    flows = lane.MAX_FLOWS
    world, hub, branches = start(worlds, tmp_path / "w", flows + 2)
    exchange = Exchanges(world, hub, branches)
    counts = exchange.counts

    for i in range(flows):  # each first packet is Python's: the peer is then offered
        exchange(i)
    warm = counts()
    assert warm["flows"] == flows, warm
    rounds = 3
    for _ in range(rounds):  # all of them busy, two more peers beside them
        for i in range(flows + 2):
            exchange(i)
    busy = counts()
    assert busy["armings"] == warm["armings"], (warm, busy)  # no flow changed hands
    assert busy["flows"] == flows
    # the first MAX_FLOWS peers' packets in C, the two others' in Python.  Toward the
    # branches exactly; from them a datagram that finds the branch's PMTU confirmation
    # probe beside it is a burst, the batch lanes' (at most one a branch in this time)
    assert busy["tx_packets"] - warm["tx_packets"] == rounds * flows, (warm, busy)
    assert busy["rx_packets"] - warm["rx_packets"] >= (rounds - 1) * flows, (warm, busy)
    assert busy["handed_back"] - warm["handed_back"] >= rounds * 2 * 2, (warm, busy)

    # the last two of the first branches go quiet while the others keep busy: the
    # newcomers take exactly those two flows, though the busy ones were offered
    # earlier (only C has carried them since); then every flow is busy again, and the
    # two quiet branches, back, stay with Python
    quiet, busy_ones = (flows - 2, flows - 1), range(flows - 2)
    quiet_from = hub.loop.now
    while hub.loop.now - quiet_from < EVICT_IDLE + 0.05:
        for i in busy_ones:
            exchange(i)
    before = counts()
    for i in (flows, flows + 1):  # Python's once more: each takes a quiet flow
        exchange(i)
    moved = counts()
    assert moved["armings"] == before["armings"] + 2, (before, moved)
    for i in (flows, flows + 1, *busy_ones):
        exchange(i)
    after = counts()
    assert after["armings"] == moved["armings"], (moved, after)
    assert after["tx_packets"] - moved["tx_packets"] == flows, (moved, after)
    assert after["rx_packets"] - moved["rx_packets"] >= flows - 2, (moved, after)
    for i in quiet:
        exchange(i)
    last = counts()
    assert last["armings"] == after["armings"], (after, last)  # no busy flow given up
    assert last["tx_packets"] == after["tx_packets"], (after, last)  # theirs in Python
    for i, seqs in enumerate(exchange.got):
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), (i, seqs)
    world.close()
