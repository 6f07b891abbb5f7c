"""Router: which peer an inner packet goes to, and whether a peer may send it to us.

Two directions, both in batches so the shell makes one call per drained batch
(architecture.md rules 3 and 8):

- ``route(packets)`` (TUN → peers): the destination address picks the peer by longest
  prefix over every peer's allowed prefixes (the cryptokey-routing rule of WireGuard's
  AllowedIPs).  A router built with ``single=peer`` (a client: one peer) skips the
  lookup and sends everything to that peer.
- ``admit(peer, packets)`` (peer → TUN): anti-spoofing.  A decrypted packet is written
  to the TUN only when its *source* address routes back to the very peer it came from;
  anything else is dropped and counted as ``spoofed_source``.  This also holds for a
  client, so a server cannot inject packets with arbitrary sources.

Both drop what is not IPv4 or IPv6 (``not_ip``); ``route`` also drops multicast
destinations (``multicast``): the tunnel is point-to-point and unicast only, and the
kernel's own link-local chatter on the TUN (IPv6 router solicitations, MLD reports)
must not cross it.  The recursive-routing guard (as in
OpenVPN's ``drop_if_recursive_routing``) drops an outbound inner packet addressed to the
peer's own underlay address: sending it would loop the tunnel's own datagrams back into
the tunnel.  Counters are per peer for inbound drops and router-wide for outbound ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from dtlsvpn.vpn.prefixes import Network, PrefixTable

P = TypeVar("P", bound=Hashable)


@dataclass(slots=True)
class RouterStats:
    not_ip: int = 0  # too short, or a version nibble other than 4 and 6
    no_route: int = 0  # outbound destination in no peer's allowed prefixes
    spoofed_source: int = 0  # inbound source not in the sending peer's allowed prefixes
    recursive: int = 0  # outbound destination is the peer's underlay address
    multicast: int = 0  # outbound multicast (link-local chatter of the TUN device itself)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _common_destination(packets: list[bytes]) -> bytes | None:
    """The destination address of every packet when all are IPv4 (or all IPv6) packets
    to one address; None otherwise (or for an empty batch)."""
    if not packets:
        return None
    first = packets[0]
    v = first[0] >> 4 if first else 0
    if v == 4:
        at, end, minimum = 16, 20, 20
    elif v == 6:
        at, end, minimum = 24, 40, 40
    else:
        return None
    dst = first[at:end]
    for pkt in packets:
        if len(pkt) < minimum or pkt[0] >> 4 != v or not pkt.startswith(dst, at):
            return None
    return dst


class Router(Generic[P]):
    """Destination routing and source anti-spoofing over per-peer allowed prefixes."""

    def __init__(self, *, single: P | None = None) -> None:
        self.table: PrefixTable[P] = PrefixTable()
        self.single = single
        self.stats = RouterStats()
        self.peer_stats: dict[P, RouterStats] = {}
        self._underlay: dict[P, bytes] = {}
        self._prefixes: dict[P, tuple[Network, ...]] = {}
        self.generation = 0  # bumped by every change of the prefixes (daemon/lane.py)

    # --- configuration ------------------------------------------------------

    def add_peer(self, peer: P, prefixes: Iterable[Network]) -> None:
        """Give ``peer`` its allowed prefixes (replacing any it had)."""
        self.remove_peer(peer)
        self.generation += 1
        nets = tuple(prefixes)
        for net in nets:
            self.table.insert(net, peer)
        self._prefixes[peer] = nets
        self.peer_stats.setdefault(peer, RouterStats())

    def remove_peer(self, peer: P) -> None:
        if peer in self._prefixes:
            self.generation += 1
            self.table.remove_value(peer)
            del self._prefixes[peer]
        self._underlay.pop(peer, None)

    def prefixes(self, peer: P) -> tuple[Network, ...]:
        return self._prefixes.get(peer, ())

    def peers(self) -> list[P]:
        """Every peer that has prefixes."""
        return list(self._prefixes)

    def underlay(self, peer: P) -> bytes | None:
        """The peer's outer address, packed, as ``set_underlay`` gave it."""
        return self._underlay.get(peer)

    def set_underlay(self, peer: P, packed: bytes | None) -> None:
        """The peer's outer (UDP) address, packed; None forgets it."""
        if packed is None:
            self._underlay.pop(peer, None)
        else:
            self._underlay[peer] = packed

    # --- data path ----------------------------------------------------------

    def route(self, packets: list[bytes]) -> dict[P, list[bytes]]:
        """Group outbound packets by peer; drop and count the rest."""
        dst = _common_destination(packets)
        if dst is not None:  # a bulk flow's batch: one destination, decided once
            peer = self.single if self.single is not None else self.table.lookup(dst)
            if peer is not None and self._underlay.get(peer) != dst and not (
                    224 <= dst[0] < 240 if len(dst) == 4 else dst[0] == 0xFF):
                return {peer: packets}
        return self._route_each(packets)

    def _route_each(self, packets: list[bytes]) -> dict[P, list[bytes]]:
        """``route`` packet by packet (``route_one``: its peer, or its drop counted)."""
        route_one = self.route_one
        out: dict[P, list[bytes]] = {}
        for pkt in packets:
            peer = route_one(pkt)
            if peer is None:
                continue
            bucket = out.get(peer)
            if bucket is None:
                out[peer] = [pkt]
            else:
                bucket.append(pkt)
        return out

    def route_single(self, packets: list[bytes]) -> list[bytes]:
        """``route(packets).get(single, [])`` of a single-peer router (a client), with no
        dict: ``packets`` itself when every one goes (unicast IP, not to the underlay)."""
        single = self.single
        if single is None:
            raise ValueError("route_single needs a router built with single=peer")
        under = self._underlay.get(single)
        u4 = under if under is not None and len(under) == 4 else None
        u6 = under if under is not None and len(under) == 16 else None
        for pkt in packets:
            v = pkt[0] >> 4 if pkt else 0
            if v == 4:
                if (len(pkt) < 20 or 224 <= pkt[16] < 240
                        or (u4 is not None and pkt.startswith(u4, 16))):
                    break
            elif v != 6 or (len(pkt) < 40 or pkt[24] == 0xFF
                            or (u6 is not None and pkt.startswith(u6, 24))):
                break
        else:
            return packets
        return self.route(packets).get(single, [])  # something to drop: count it there

    def route_one(self, pkt: bytes) -> P | None:
        """``route([pkt])``'s one peer, or None with the drop counted (a lone packet: one
        lookup, no dict, no list; ``route`` counts a mixed batch's drops here too)."""
        n = len(pkt)
        v = pkt[0] >> 4 if n else 0
        if v == 4 and n >= 20:
            dst = pkt[16:20]
            mcast = 224 <= pkt[16] < 240
        elif v == 6 and n >= 40:
            dst = pkt[24:40]
            mcast = pkt[24] == 0xFF
        else:
            self.stats.not_ip += 1
            return None
        if mcast:
            self.stats.multicast += 1
            return None
        peer = self.single
        if peer is None:
            peer = self.table.lookup(dst)
            if peer is None:
                self.stats.no_route += 1
                return None
        if self._underlay and self._underlay.get(peer) == dst:
            self.stats.recursive += 1
            return None
        return peer

    def admit_one(self, peer: P, pkt: bytes) -> bool:
        """``admit(peer, [pkt]) == [pkt]``, the drop counted the same way."""
        n = len(pkt)
        v = pkt[0] >> 4 if n else 0
        if v == 4 and n >= 20:
            src = pkt[12:16]
        elif v == 6 and n >= 40:
            src = pkt[8:24]
        else:
            self.peer_stats.setdefault(peer, RouterStats()).not_ip += 1
            return False
        if self.table.lookup(src) != peer:
            self.peer_stats.setdefault(peer, RouterStats()).spoofed_source += 1
            return False
        return True

    def admit(self, peer: P, packets: list[bytes]) -> list[bytes]:
        """The packets whose source address routes back to ``peer``; count the rest.
        ``packets`` itself when all do (one lookup per run of one source)."""
        lookup = self.table.lookup
        ok4: bytes | None = None  # the last source seen to route back to ``peer``
        ok6: bytes | None = None
        for pkt in packets:
            v = pkt[0] >> 4 if pkt else 0
            if v == 4 and len(pkt) >= 20:
                if ok4 is not None and pkt.startswith(ok4, 12):
                    continue
                src = pkt[12:16]
                if lookup(src) != peer:
                    break
                ok4 = src
            elif v == 6 and len(pkt) >= 40:
                if ok6 is not None and pkt.startswith(ok6, 8):
                    continue
                src = pkt[8:24]
                if lookup(src) != peer:
                    break
                ok6 = src
            else:
                break
        else:
            return packets
        return self._admit_each(peer, packets)

    def _admit_each(self, peer: P, packets: list[bytes]) -> list[bytes]:
        lookup = self.table.lookup
        out: list[bytes] = []
        stats: RouterStats | None = None
        for pkt in packets:
            v = pkt[0] >> 4 if pkt else 0
            if v == 4 and len(pkt) >= 20:
                src = pkt[12:16]
            elif v == 6 and len(pkt) >= 40:
                src = pkt[8:24]
            else:
                stats = stats or self.peer_stats.setdefault(peer, RouterStats())
                stats.not_ip += 1
                continue
            if lookup(src) != peer:
                stats = stats or self.peer_stats.setdefault(peer, RouterStats())
                stats.spoofed_source += 1
                continue
            out.append(pkt)
        return out
