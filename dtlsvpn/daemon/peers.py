"""The peer table: the one owner of which association and address belong to which [Peer].

A :class:`Peer` is a configured peer plus its runtime: the association that carries its
traffic (``assoc``; on a client also ``conn``, the ``RekeyingClient`` around it), the
association a renewal is replacing (``previous``, server only), its underlay address,
its counters and what the status shows.  :class:`PeerTable` holds every peer by name
and answers the two lookups the shell needs:

- ``by_addr``: address → peer, read by the data path for every datagram (a plain dict,
  so the hot path pays one ``dict.get``);
- ``owner(assoc)``: the peer an association belongs to, current or previous.

Invariants (kept by the methods here, nowhere else): ``by_addr[a] is p`` only while
``p.addr == a`` and ``p.assoc`` is bound there; an association maps to at most one
peer, and to it only while it is that peer's ``assoc`` or ``previous``; ``renewing()``
holds exactly the peers with a ``previous`` (a set, so the server's retire timer does
not walk the idle peers).  The client's
single peer uses only the by-name part (its association lives in ``conn``).  The
connection IDs stay in the core's endpoint, which demuxes by them; the table follows
the address the endpoint reports (``move``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dtlsvpn.config import PeerConfig
from dtlsvpn.daemon.devices import Addr, UdpPort
from dtlsvpn.daemon.mtu import MtuFollower
from dtlsvpn.daemon.stream import StreamLink
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.events import HandshakeCompleted
from dtlsvpn.dtls.rekey import RekeyingClient

if TYPE_CHECKING:
    from dtlsvpn.daemon.loop import Timer


class Peer:
    """A configured peer and its runtime: association(s), address, counters."""

    __slots__ = ("_established", "_stream", "_table", "addr", "assoc", "config", "conn", "drops",
                 "generation", "handshake_wall", "handshakes", "inner_mtu", "last_error",
                 "limit", "mtu", "mtu_timer", "name", "on_send", "plpmtu", "previous",
                 "rekey_wall", "rekeys", "replay", "resumed", "roams", "rtt", "rx_bytes",
                 "rx_packets", "sock", "suite", "transport", "transport_wall", "tx_bytes",
                 "tx_packets")

    def __init__(self, config: PeerConfig) -> None:
        self._table: PeerTable | None = None  # the table that counts it (PeerTable.up)
        self._established = False
        self._stream: StreamLink | None = None
        self.config = config
        self.name: str = config.name
        self.assoc: Association | None = None  # client: conn.current
        self.conn: RekeyingClient | None = None  # client: the association and its renewals
        self.previous: Association | None = None  # server: the one a renewal replaces
        self.addr: Addr | None = None
        self.sock: UdpPort | None = None  # client: the connected socket
        self.established = False
        self.handshake_wall: float | None = None
        self.handshakes = 0  # completed handshakes, key renewals included
        self.generation = 0  # renewals since the last new (non-renewal) association
        self.rekeys = 0  # renewals since the daemon started
        self.rekey_wall: float | None = None  # wall time of the last renewal
        self.resumed = False
        self.suite: str | None = None
        self.plpmtu: int | None = None
        self.inner_mtu: int | None = None  # the latest PMTU report
        self.mtu = MtuFollower()  # reports → applied inner MTU (debounced)
        self.mtu_timer: Timer | None = None  # when a held MTU report is applied
        self.limit = 0  # largest inner packet sent as is; 0: not known yet
        self.rtt: float | None = None
        self.roams = 0  # client: moves to a new local address (netwatch.py)
        self.last_error: str | None = None
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.drops: dict[str, int] = {}
        # TCP fallback (daemon/transport.py): the TLS/TCP link carrying the traffic when
        # set and ready, and what status shows.
        self.stream: StreamLink | None = None
        self.transport = "udp"
        self.transport_wall: float | None = None
        # client: inner packets sent while UDP is suspect (at most REPLAY_MAX), sent
        # again over TCP when the traffic moves there (tcpclient.py); None: not kept
        self.replay: list[bytes] | None = None
        # client: called (then cleared by the callee) before the next batch goes out over
        # UDP; the TCP fallback's checker sleeps while the tunnel is idle (tcpclient.py)
        self.on_send: Callable[[float], None] | None = None

    @property
    def established(self) -> bool:
        return self._established

    @established.setter
    def established(self, value: bool) -> None:
        if value == self._established:  # (unchanged: not a change for the table)
            return
        self._established = value
        if self._table is not None:
            self._table.note_up(self)

    @property
    def stream(self) -> StreamLink | None:
        return self._stream

    @stream.setter
    def stream(self, link: StreamLink | None) -> None:
        if link is self._stream:
            return
        self._stream = link
        if self._table is not None:
            self._table.note_up(self)

    @property
    def up(self) -> bool:
        """Counted as up by the status line: established, or a TCP link (fallback)."""
        return self._established or self._stream is not None

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def note_handshake(self, ev: HandshakeCompleted, wall: float, *, renewal: bool) -> None:
        """The status side of a completed handshake (the binding is the table's)."""
        self.established = True
        self.handshake_wall = wall
        self.handshakes += 1
        self.resumed = ev.resumed
        self.suite = ev.suite_name
        self.last_error = None
        if renewal:
            # Same peer, same path: the status keeps the PMTU found so far until the new
            # association's own search reports.
            self.generation += 1
            self.rekeys += 1
            self.rekey_wall = wall
            return
        self.generation = 0
        assoc = self.assoc
        if assoc is not None and assoc.plpmtu is not None:
            self.plpmtu = assoc.plpmtu
        if assoc is not None and assoc.inner_mtu is not None:
            self.inner_mtu = assoc.inner_mtu

    def note_tls_handshake(self, ev: HandshakeCompleted, wall: float, *, renewal: bool) -> None:
        """A TLS handshake over TCP (``transport.py``): counted in the status as a DTLS
        one is; the DTLS state (``established``, the PMTU) is left alone, and so is
        ``suite`` (set when the link carries: a standby does not)."""
        self.handshake_wall = wall
        self.handshakes += 1
        self.resumed = ev.resumed
        self.last_error = None
        if renewal:
            self.generation += 1
            self.rekeys += 1
            self.rekey_wall = wall

    def note_down(self, reason: str) -> None:
        self.established = False
        self.mtu.forget()
        self.last_error = reason


class PeerTable:
    """Every peer by name; address and association lookups kept in step with them."""

    def __init__(self) -> None:
        self._by_name: dict[str, Peer] = {}
        self.by_addr: dict[Addr, Peer] = {}  # the data path's lookup: keep it a dict
        self._by_assoc: dict[Association, Peer] = {}
        # Peers up (``Peer.up``), kept in step by the peers' setters: the status line
        # counts them without a walk over every peer.
        self.up: set[Peer] = set()
        # Peers added, removed, up or down since ``take_changed`` (the TUN MTU's running
        # minimum, tunmtu.py, recounts only these).
        self._changed: set[Peer] = set()
        # Peers with a ``previous`` association, in the order their renewal began:
        # ``renewing()`` without a walk over every peer (the retire timer asks it).
        self._renewing: dict[Peer, None] = {}

    def note_up(self, peer: Peer) -> None:
        if peer.up:
            self.up.add(peer)
        else:
            self.up.discard(peer)
        self._changed.add(peer)

    def take_changed(self) -> set[Peer]:
        changed, self._changed = self._changed, set()
        return changed

    def holds(self, peer: Peer) -> bool:
        return peer._table is self

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> Peer:
        return self._by_name[name]

    def get(self, name: str) -> Peer | None:
        return self._by_name.get(name)

    def first(self) -> Peer:
        """The client's one peer."""
        return next(iter(self._by_name.values()))

    def add(self, peer: Peer) -> None:
        self._by_name[peer.name] = peer
        peer._table = self
        self.note_up(peer)

    def remove(self, name: str) -> Peer | None:
        """Take the peer out, with every association and address of it."""
        peer = self._by_name.pop(name, None)
        if peer is not None:
            self.release(peer)
            self._set_previous(peer, None)
            self.up.discard(peer)
            self._changed.add(peer)
            peer._table = None
        return peer

    def owner(self, assoc: Association) -> Peer | None:
        """The peer whose current or previous association this is."""
        return self._by_assoc.get(assoc)

    def at(self, addr: Addr) -> Peer | None:
        return self.by_addr.get(addr)

    # --- binding (server) -------------------------------------------------------------

    def bind(self, peer: Peer, assoc: Association, addr: Addr, *, renewal: bool) -> None:
        """``assoc`` carries the peer's traffic from ``addr`` now.  With ``renewal`` the
        old one stays the peer's as ``previous`` (its records in flight still count);
        without, the caller has closed the old ones."""
        old = peer.assoc
        self.retire(peer)
        if renewal and old is not None and old is not assoc:
            self._set_previous(peer, old)
        elif old is not None and old is not assoc:
            self._unmap(old, peer)
        self._move_addr(peer, addr)
        peer.assoc = assoc
        self._by_assoc[assoc] = peer

    def move(self, peer: Peer, addr: Addr) -> None:
        """RFC 9146 §6: the peer's association now comes from ``addr``."""
        self._move_addr(peer, addr)

    def retire(self, peer: Peer) -> None:
        """Forget the association a renewal replaced (the endpoint retires it)."""
        prev = peer.previous
        if prev is None:
            return
        self._set_previous(peer, None)
        if prev is not peer.assoc:
            self._unmap(prev, peer)

    def release(self, peer: Peer) -> None:
        """The peer's associations ended: it has none and no address entry."""
        self.retire(peer)
        if peer.assoc is not None:
            self._unmap(peer.assoc, peer)
            peer.assoc = None
        if peer.addr is not None and self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]

    def renewing(self) -> list[Peer]:
        """Peers that still accept their previous keys (O(renewing peers))."""
        return list(self._renewing)

    def _set_previous(self, peer: Peer, assoc: Association | None) -> None:
        """The one writer of ``Peer.previous``: the renewing set follows it."""
        peer.previous = assoc
        if assoc is None:
            self._renewing.pop(peer, None)
        else:
            self._renewing[peer] = None

    def _move_addr(self, peer: Peer, addr: Addr) -> None:
        if peer.addr is not None and self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]
        self.by_addr[addr] = peer
        peer.addr = addr

    def _unmap(self, assoc: Association, peer: Peer) -> None:
        if self._by_assoc.get(assoc) is peer:
            del self._by_assoc[assoc]
