"""Running aggregates of the peer table equal the walks they replace.

The status line's "N/M peers up" is ``len(PeerTable.up)``, kept by the peers' setters
(``established``, ``stream``) instead of a walk over every peer on each handshake and
close: a random sequence of ups, downs, TCP links, removals and additions gives, after
every step, the count the walk gives.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.micro_idle import server_conf
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.daemon.settings import load_config


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
