"""The tunnel interface's MTU and the TCP MSS clamp, from configuration and PMTU reports.

Policy (``MTU =`` in [Interface]):

- a number: ``fixed``; never changed.
- ``auto`` (default): start from ``min(1400, MTU of the route to the peer) − overhead``
  with overhead = IP header (20 or 40 for the underlay family) + UDP 8 + DTLS record
  header 13 + the largest AEAD expansion of any suite (24): 1335 on an IPv4 path of
  1400 or more.  A client refines the start from its connected socket's ``IP_MTU``.
  When the peers' PMTU reports settle (``mtu.py`` debounces them per peer), the policy
  becomes ``pmtu`` and the TUN MTU follows the smallest applied inner MTU over the
  established peers.  Never below 1280 when the interface has IPv6 addresses (the
  kernel would drop IPv6 from it); never below 576.
- Either way, each peer's ``limit`` is its applied inner MTU (the data path sends ICMP
  "too big" or fragments above it), and the MSS clamp is ``M − 40`` / ``M − 60`` with
  M = min(TUN MTU, the smallest applied inner MTU) (``vpn/mss.py``); a peer that a TCP
  link carries (TCP fallback) counts with that link's ``inner_mtu`` instead (its outer
  MSS less the SP and TLS record overhead, ``daemon/stream.py``), and not towards the
  TUN MTU.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable
from typing import Protocol

from dtlsvpn.config import InterfaceConfig
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.daemon.devices import LinkConfig
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.vpn.mss import mss_for_mtu

log = logging.getLogger("dtlsvpn")

DEFAULT_PATH_MTU = 1400
UDP_HEADER = 8
RECORD_HEADER = 13
MAX_AEAD_OVERHEAD = max(s.overhead for s in SUITES.values())
MIN_TUN_MTU = 576
MIN_TUN_MTU_IPV6 = 1280


def tunnel_overhead(family: socket.AddressFamily) -> int:
    ip_header = 40 if family == socket.AF_INET6 else 20
    return ip_header + UDP_HEADER + RECORD_HEADER + MAX_AEAD_OVERHEAD


def default_tun_mtu(family: socket.AddressFamily, path_mtu: int | None) -> int:
    """The ``auto`` MTU before any discovery: a safe guess from the route's MTU."""
    path = min(DEFAULT_PATH_MTU, path_mtu or DEFAULT_PATH_MTU)
    return path - tunnel_overhead(family)


class MssClamp(Protocol):
    mss4: int
    mss6: int


class TunnelMtu:
    """The TUN MTU (``mtu``), its ``policy`` (fixed, auto, pmtu) and the MSS clamp."""

    def __init__(self, name: str, iface: InterfaceConfig) -> None:
        self.name = name
        self.iface = iface
        self.mtu = 0
        self.policy = "fixed"
        self.link: LinkConfig | None = None
        self.clamp_to: MssClamp | None = None
        # follow_peer's running counts: each counted peer's inner MTU, peers per value,
        # and the peers with a TCP link (looked at on every call).
        self._counted: dict[Peer, int] = {}
        self._values: dict[int, int] = {}
        self._streams: set[Peer] = set()

    def initial(self, family: socket.AddressFamily, path_mtu: int | None) -> int:
        if self.iface.mtu is not None:
            self.policy = "fixed"
            self.mtu = self.iface.mtu
        else:
            self.policy = "auto"
            self.mtu = self._floor(default_tun_mtu(family, path_mtu))
        return self.mtu

    def _floor(self, mtu: int) -> int:
        has_v6 = any(a.version == 6 for a in self.iface.addresses)
        return max(mtu, MIN_TUN_MTU_IPV6 if has_v6 else MIN_TUN_MTU)

    def refine(self, family: socket.AddressFamily, path_mtu: int | None) -> None:
        """A client's connected socket knows the route's MTU (``auto`` before PMTU)."""
        if path_mtu is None:
            return
        mtu = self._floor(default_tun_mtu(family, path_mtu))
        if mtu != self.mtu and self.link is not None:
            with contextlib.suppress(OSError):
                self.link.set_mtu(mtu)
                self.mtu = mtu
                self.update_mss()

    def follow(self, peers: Iterable[Peer]) -> None:
        """Applied inner MTUs → per-peer limits, the TUN MTU (``auto``) and the MSS clamp."""
        applied: list[int] = []
        carried: list[int] = []  # peers on a TCP link (TCP fallback)
        for p in peers:
            value = p.mtu.applied
            p.limit = value or 0
            stream = p.stream
            if stream is not None and stream.ready:
                carried.append(stream.inner_mtu)
            elif p.established and value:
                applied.append(value)
        if applied and self.policy != "fixed":
            self.policy = "pmtu"
            self._set(min(applied))
        if applied or carried:
            self.update_mss(min(applied + carried))

    def follow_peer(self, table: PeerTable, peer: Peer | None = None) -> None:
        """``follow(table)`` without the walk: ``peer`` (whose applied MTU changed) and
        the peers the table saw added, removed, up or down since the last call are
        recounted into running counts (distinct inner MTUs → peers), so an event costs
        the peers that changed, not every peer; peers with a TCP link (few, and their
        link's ``ready`` and ``inner_mtu`` change inside it) are looked at each time.
        The same limits, TUN MTU and clamp as the walk (tests/unit/test_peer_aggregates.py)."""
        changed = table.take_changed()
        if peer is not None:
            changed.add(peer)
        for p in changed:
            self._recount(p, table.holds(p))
        values = self._values
        low = min(values) if values else None
        carried: int | None = None
        for p in self._streams:
            stream = p.stream
            if stream is not None and stream.ready:
                carried = stream.inner_mtu if carried is None else min(carried, stream.inner_mtu)
            elif p.established and (value := p.mtu.applied):
                low = value if low is None else min(low, value)
        if low is not None and self.policy != "fixed":
            self.policy = "pmtu"
            self._set(low)
        if low is not None or carried is not None:
            self.update_mss(min(v for v in (low, carried) if v is not None))

    def _recount(self, p: Peer, member: bool) -> None:
        old = self._counted.pop(p, None)
        if old is not None:
            left = self._values[old] - 1
            if left:
                self._values[old] = left
            else:
                del self._values[old]
        self._streams.discard(p)
        if not member:
            return
        value = p.mtu.applied
        p.limit = value or 0
        if p.stream is not None:
            self._streams.add(p)
        elif p.established and value:
            self._counted[p] = value
            self._values[value] = self._values.get(value, 0) + 1

    def _set(self, inner: int) -> None:
        mtu = self._floor(inner)
        if mtu != self.mtu and self.link is not None:
            try:
                self.link.set_mtu(mtu)
            except OSError as exc:
                log.warning("cannot set MTU %d: %s", mtu, exc)
                return
            log.info("%s: tunnel MTU %d → %d (path)", self.name, self.mtu, mtu)
            self.mtu = mtu

    def update_mss(self, inner: int | None = None) -> None:
        target = self.clamp_to
        if target is None:
            return
        if not self.iface.mss_clamp:
            target.mss4 = target.mss6 = 0
            return
        mtu = self.mtu if inner is None else min(inner, self.mtu)
        target.mss4, target.mss6 = mss_for_mtu(mtu)
