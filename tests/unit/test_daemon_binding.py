"""The server's binding policy (daemon/binding.py) and the peer table (daemon/peers.py),
each alone: no sockets, no core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.config.schema import PeerConfig
from dtlsvpn.daemon import binding
from dtlsvpn.daemon.binding import Ending, Verdict
from dtlsvpn.daemon.peers import Peer, PeerTable

A, B = ("198.18.0.2", 40001), ("198.18.0.3", 40002)


@dataclass(eq=False)
class Assoc:
    is_established: bool = True
    is_closed: bool = False


def decide(new: Assoc, addr: Any = A, **kw: Any) -> binding.Decision[Assoc]:
    args: dict[str, Any] = {"matched": True, "resumed": False, "current": None,
                            "previous": None, "current_addr": None, "newest_at_addr": new}
    args.update(kw)
    return binding.authenticated(new, addr, **args)


def test_unmatched_or_addressless_is_rejected_and_closed() -> None:
    new = Assoc()
    assert decide(new, matched=False) == binding.Decision(Verdict.REJECT, (new,))
    assert decide(new, addr=None).verdict is Verdict.REJECT


def test_first_contact_replaces_nothing() -> None:
    assert decide(Assoc()) == binding.Decision(Verdict.REPLACE, ())


def test_full_handshake_from_the_same_address_is_a_renewal() -> None:
    old, new = Assoc(), Assoc()
    assert decide(new, current=old, current_addr=A).verdict is Verdict.RENEWAL


def test_not_a_renewal_when_resumed_moved_half_open_or_not_at_the_address() -> None:
    old, older, new = Assoc(), Assoc(), Assoc()
    cases = [
        {"resumed": True, "current": old, "current_addr": A},  # a restarted client
        {"current": old, "current_addr": B},  # another address
        {"current": Assoc(is_established=False), "current_addr": A},  # half-open
        {"current": old, "current_addr": A, "newest_at_addr": older},
    ]
    for kw in cases:
        d = decide(new, **kw)
        assert d.verdict is Verdict.REPLACE, kw
        assert d.close == (kw["current"],), kw
    d = decide(new, resumed=True, current=old, previous=older, current_addr=A)
    assert d.close == (old, older)  # both go; a closed one is not closed again
    assert decide(new, current=Assoc(is_closed=True), current_addr=B).close == ()


def test_moved_closed_and_retired() -> None:
    cur, other = Assoc(), Assoc()
    assert binding.moved(cur, ("198.18.0.9", 5), current=cur) == ("198.18.0.9", 5)
    assert binding.moved(other, ("198.18.0.9", 5), current=cur) is None
    assert binding.moved(cur, "nonsense", current=cur) is None
    prev = Assoc()
    assert binding.closed(prev, current=cur, previous=prev) is Ending.OLD_KEYS_RETIRED
    assert binding.closed(cur, current=cur, previous=prev) is Ending.PEER_DOWN
    assert binding.closed(other, current=cur, previous=prev) is Ending.UNRELATED
    assert binding.retired(prev, None) and binding.retired(Assoc(is_closed=True), A)
    assert not binding.retired(prev, A)


def _peer(name: str) -> Peer:
    return Peer(cast(PeerConfig, type("Cfg", (), {"name": name})()))


def test_peer_table_keeps_address_and_associations_in_step() -> None:
    table = PeerTable()
    p = _peer("branch")
    table.add(p)
    a1, a2, a3 = (cast(Any, Assoc()) for _ in range(3))
    table.bind(p, a1, A, renewal=False)
    assert table.at(A) is p and table.owner(a1) is p and p.assoc is a1
    table.bind(p, a2, A, renewal=True)  # renewal: both are the peer's
    assert p.previous is a1 and table.owner(a1) is p and table.owner(a2) is p
    assert table.renewing() == [p]
    table.bind(p, a3, A, renewal=True)  # a second renewal within the grace period
    assert p.previous is a2 and table.owner(a1) is None
    table.retire(p)
    assert p.previous is None and table.owner(a2) is None and table.renewing() == []
    table.move(p, B)
    assert table.at(A) is None and table.at(B) is p and p.addr == B
    table.release(p)
    assert p.assoc is None and table.at(B) is None and table.owner(a3) is None
    table.bind(p, a1, A, renewal=False)
    assert table.remove("branch") is p
    assert table.at(A) is None and table.owner(a1) is None and len(table) == 0


def test_association_table_fits_every_peer_twice_and_never_shrinks_below_1024() -> None:
    from dtlsvpn.daemon.server import association_limit

    assert association_limit(0) == 1024
    assert association_limit(384) == 1024
    assert association_limit(1000) == 2256  # 1,000 peers, each mid-renewal, + handshakes
    assert association_limit(5000) == 10256


class _CountingPeer(Peer):
    """A Peer that counts the reads of its ``previous`` (the slot stays Peer's)."""

    __slots__ = ("reads",)
    _slot = Peer.previous

    def __init__(self, name: str) -> None:
        self.reads = 0
        super().__init__(cast(PeerConfig, type("Cfg", (), {"name": name})()))

    @property  # type: ignore[override]
    def previous(self) -> Any:
        self.reads += 1
        return _CountingPeer._slot.__get__(self)

    @previous.setter
    def previous(self, value: Any) -> None:
        _CountingPeer._slot.__set__(self, value)


def test_renewing_reads_nothing_of_the_idle_peers() -> None:
    """The server's retire timer asks ``renewing()``: it walked every peer (issue 10: a
    recurring path's work must not grow with 1 000 idle peers); it is the set now."""
    table = PeerTable()
    idle = [_CountingPeer(f"idle{i}") for i in range(1000)]
    for p in idle:
        table.add(p)
    busy = _peer("busy")
    table.add(busy)
    old, new = (cast(Any, Assoc()) for _ in range(2))
    table.bind(busy, old, A, renewal=False)
    table.bind(busy, new, A, renewal=True)
    for p in idle:
        p.reads = 0
    assert table.renewing() == [busy]
    assert sum(p.reads for p in idle) == 0
    table.retire(busy)
    assert table.renewing() == []


OPS = ("add", "bind", "renew", "retire", "release", "remove", "move")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 3), st.integers(0, 2)),
                max_size=60))
def test_renewing_is_always_the_brute_force_list(ops: list[tuple[str, int, int]]) -> None:
    """Whatever the order of renewals, retirements, releases, removals and moves, the
    table's set of renewing peers is exactly the peers with a ``previous``."""
    table = PeerTable()
    addrs = [A, B, ("198.18.0.4", 40003)]
    for op, i, j in ops:
        name = f"p{i}"
        peer = table.get(name)
        if op == "add":
            if peer is None:
                table.add(_peer(name))
        elif peer is None:
            continue
        elif op in ("bind", "renew"):
            table.bind(peer, cast(Any, Assoc()), addrs[j], renewal=op == "renew")
        elif op == "retire":
            table.retire(peer)
        elif op == "release":
            table.release(peer)
        elif op == "remove":
            assert table.remove(name) is peer
            assert peer.previous is None
        else:
            table.move(peer, addrs[j])
        brute = [p for p in table if p.previous is not None]
        got = table.renewing()
        assert len(got) == len(set(got)) and set(got) == set(brute), (op, name)
        for p in got:
            assert table.owner(p.previous) is p  # type: ignore[arg-type]
