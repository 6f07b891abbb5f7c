"""Running aggregates of the peer table equal the walks they replace.

* The status line's "N/M peers up" is ``len(PeerTable.up)``, kept by the peers' setters
  (``established``, ``stream``) instead of a walk over every peer on each handshake and
  close: a random sequence of ups, downs, TCP links, removals and additions gives, after
  every step, the count the walk gives.
* ``TunnelMtu.follow_peer`` (running counts of the applied inner MTUs) gives the limits,
  TUN MTU, policy and MSS clamp of ``follow`` (the walk) after every step of a random
  sequence of PMTU reports and settles, ups, downs, TCP links (ready or not, roomy or
  narrow) and removals.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.micro_idle import server_conf
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.daemon.settings import load_config
from dtlsvpn.daemon.tunmtu import TunnelMtu


def _walk(table: PeerTable) -> int:
    return sum(1 for p in table if p.established or p.stream is not None)


def test_up_count_equals_the_walk(tmp_path: Path) -> None:
    cfg = load_config(server_conf(tmp_path, 40))
    table = PeerTable()
    spare: list[Peer] = []
    for pc in cfg.peers:
        table.add(Peer(pc))
    rng = random.Random(11)
    link: Any = object()  # (a StreamLink stands in: only set or None matters here)
    for _ in range(2000):
        peers = list(table)
        op = rng.randrange(6)
        if op == 0 and peers:
            rng.choice(peers).established = True
        elif op == 1 and peers:
            rng.choice(peers).note_down("closed")
        elif op == 2 and peers:
            rng.choice(peers).stream = link
        elif op == 3 and peers:
            rng.choice(peers).stream = None
        elif op == 4 and peers:
            gone = table.remove(rng.choice(peers).name)
            assert gone is not None
            spare.append(gone)
            gone.established = not gone.established  # (a removed peer no longer counts)
        elif spare:
            table.add(spare.pop(rng.randrange(len(spare))))
        assert len(table.up) == _walk(table)
        assert table.up == {p for p in table if p.up}
    assert 0 < len(table.up) < len(table)


def test_setting_the_same_value_is_no_change(tmp_path: Path) -> None:
    """``established`` or ``stream`` set to what it already is marks nothing changed (the
    TUN MTU's recount skips it) and keeps the up count; a real change is marked."""
    cfg = load_config(server_conf(tmp_path, 2))
    table = PeerTable()
    a, b = (Peer(pc) for pc in cfg.peers)
    table.add(a)
    table.add(b)
    table.take_changed()
    link: Any = object()
    for value in (False, False):
        a.established = value
        a.stream = None
    assert table.take_changed() == set() and table.up == set()
    a.established = True
    assert table.take_changed() == {a} and table.up == {a}
    a.established = True
    b.stream = link
    assert table.take_changed() == {b} and table.up == {a, b}
    b.stream = link
    a.note_down("closed")
    assert table.take_changed() == {a} and table.up == {b}
    a.note_down("closed")
    b.stream = None
    assert table.take_changed() == {b} and table.up == set()


class _Link:
    """The TUN link's MTU as set (a LinkConfig stand-in)."""

    def __init__(self) -> None:
        self.mtu = 0

    def set_mtu(self, mtu: int) -> None:
        self.mtu = mtu


def _tunmtu(cfg: Any) -> tuple[TunnelMtu, Any, _Link]:
    from types import SimpleNamespace
    t = TunnelMtu("dvs0", cfg.interface)
    t.initial(2, 1500)  # socket.AF_INET
    t.link = _Link()  # type: ignore[assignment]
    clamp = SimpleNamespace(mss4=0, mss6=0)
    t.clamp_to = clamp  # type: ignore[assignment]
    return t, clamp, t.link  # type: ignore[return-value]


def _act(table: PeerTable, spare: list[Peer], p: Peer, op: int,
         report: tuple[int, int, float], link: Any, remove: bool) -> bool:
    """One step on one twin; whether the daemon would follow the MTU for ``p`` now."""
    src, inner, now = report
    if op == 0:
        p.established = True
    elif op == 1:
        p.note_down("closed")  # (the daemon follows no MTU on a close: the next event)
        return False
    elif op in (2, 3):
        return p.mtu.report(src, inner, now)
    elif op == 4:
        return p.mtu.poll(now + 5.0)
    elif op == 5:
        p.stream = link
    elif op == 6:
        p.stream = None
    elif op == 7 and remove:
        gone = table.remove(p.name)
        assert gone is not None
        spare.append(gone)
        return False
    elif op == 8 and spare:
        table.add(spare.pop(0))
    return True


def test_follow_peer_equals_the_walk(tmp_path: Path) -> None:
    from types import SimpleNamespace
    cfg = load_config(server_conf(tmp_path, 30))
    rng = random.Random(5)
    mtus = [1200, 1280, 1300, 1335, 1380, 1400, 1426]
    # The same peers' states, driven twice: one table per TunnelMtu (the walk's peers
    # must not feed the running counts' change set).
    tables = [PeerTable(), PeerTable()]
    for table in tables:
        for pc in cfg.peers:
            table.add(Peer(pc))
    walk, walk_clamp, walk_link = _tunmtu(cfg)
    fast, fast_clamp, fast_link = _tunmtu(cfg)
    links = [SimpleNamespace(ready=rng.random() < 0.7, inner_mtu=rng.choice(mtus))
             for _ in range(6)]
    spare: list[list[Peer]] = [[], []]
    now = 0.0
    for _step in range(3000):
        now += 0.3
        names = [p.name for p in tables[0]]
        op = rng.randrange(9)
        name = rng.choice(names) if names else None
        follow, follows = name, True
        inner, src, link = rng.choice(mtus), rng.randrange(2), rng.choice(links)
        remove = rng.random() < 0.2  # (every draw before the twins act alike)
        for k, table in enumerate(tables):
            p = table.get(name) if name is not None else None
            if p is not None:
                follows = _act(table, spare[k], p, op, (src, inner, now), link, remove)
        if name is not None and not follows:
            follow = None
        if op == 5 and rng.random() < 0.5:
            link.ready = not link.ready  # (changes inside the link, unannounced)
            link.inner_mtu = rng.choice(mtus)
        if follow is not None or op in (5, 6):
            walk.follow(tables[0])
            fast.follow_peer(tables[1], tables[1].get(follow) if follow else None)
            assert (fast.mtu, fast.policy, fast_link.mtu, fast_clamp.mss4, fast_clamp.mss6) \
                == (walk.mtu, walk.policy, walk_link.mtu, walk_clamp.mss4, walk_clamp.mss6)
            assert [p.limit for p in tables[1]] == [p.limit for p in tables[0]]
    assert walk.policy == "pmtu" and walk_clamp.mss4 > 0
