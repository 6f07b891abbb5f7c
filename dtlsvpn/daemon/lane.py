"""The compiled lone-packet lane: which flows ``dtlsvpn.daemon._lane`` may serve, and when.

Why (issue 10, README "The compiled lane"): a sparse ping through the tunnel finds both
daemons asleep, and a process that slept runs its Python several times slower (cold
caches); the idle round trip then costs more in the interpreter than on the wire.  The
C lane waits in the loop's own epoll and forwards a lone data packet without waking the
interpreter at all; everything else is the Python data path's, unchanged.

How it is kept exact: :class:`Lane` replaces the loop's ``epoll.poll`` (``Loop.poller``).
Before each poll it checks, for each armed flow, that the objects the flow was armed
from are still the ones in use; a change re-arms or disarms the flow.  A flow is armed
only while the Python lone lanes would do nothing for its packets beyond what C does:

- its association is established and not closed, with a header fast path in both
  directions (``Association.fast_open``, ``Association.fast_seal``) and no renewal
  overlapping it (the client's ``RekeyingClient`` has no pending or previous one; the
  server's peer has no ``previous`` and ``ServerEndpoint.fast_lane`` holds);
- it is on UDP (no TLS link ready, no replay list kept for one);
- its allowed prefixes are exclusive: no other peer holds a prefix inside one of them,
  so that "in the peer's prefixes" is exactly "the router's longest match is this peer"
  for both the route of a TUN packet and the anti-spoofing check of a received one.

A peer's ``on_send`` hook (the TCP fallback's checker, asleep after an idle spell,
``tcpclient.py``) goes with the flow: C calls it once, where the Python lane calls it,
before the first packet it seals, with what the poll did so far written back (so the
hook sees the peer as Python would) and everything read again after it (the hook may
send a record itself: its UDP probe takes the next sequence number); the poll then
ends, and the flow is re-armed without the hook (which cleared itself).  So the first
packet after a silence, the one a sleeping daemon is slowest to forward, stays in C.
Should the hook change what the flow was armed from (its key: the association, the
limit, the carrier, ...), C gets False back and hands that packet to Python instead
of sealing it with the old state.

Per packet C then repeats the lanes' own checks (``_lane.c``) and hands back, untouched,
every packet that fails one; those go through ``Datapath`` as they always did, from the
devices' ``pending`` lists.  A send that fails in C is reported here after the poll and
charged as the Python lane charges it (``Datapath.send_failed``).

The client arms its one peer.  A server arms up to ``MAX_FLOWS`` peers, offered by the
Python lone lanes when they serve one (``Datapath.on_lone``): a lone packet is what the
lane is for, and a peer in a burst is the batch lanes' anyway.  When all are taken, a
newly offered peer replaces the one idle longest, counting what C carried for it
(``Lane.last_used``), and only one idle for ``EVICT_IDLE`` seconds or more: a flow C
keeps busy is never given up for a newcomer (with more active peers than flows, the
others stay with Python instead of trading places with them on every packet).

Off (``CompiledLane = no``, the module not built, a device that is not a real TUN or
socket, a loop on a fake clock): the loop polls as before and nothing here runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from dtlsvpn.daemon import compiled
from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import SocketPort, UdpPort
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.tun import Tun
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.epoch import REKEY_RECORDS
from dtlsvpn.wire.constants import MAX_SEQ

_lane: Any = compiled.module  # None: not built, or DTLSVPN_COMPILED_LANE=off

log = logging.getLogger("dtlsvpn")

MAX_FLOWS: int = _lane.MAX_FLOWS if _lane is not None else 0
EVICT_IDLE = 1.0  # seconds without a packet before a server's flow may go to another peer
_MAX_PREFIXES: int = _lane.MAX_PREFIXES if _lane is not None else 0


def unavailable_reason(loop: Loop, tun: object) -> str | None:
    """Why the lane cannot run here (None: it can)."""
    if _lane is None:
        return "dtlsvpn.daemon._lane is not built"
    if not isinstance(tun, Tun):
        return "the TUN is not a kernel TUN queue"
    if not loop.real_clock:
        return "the loop runs on a fake clock"
    return None


class _Flow:
    """What one armed flow was armed from (its ``key``) and its slot in C."""

    __slots__ = ("index", "key", "peer")

    def __init__(self, index: int, peer: Peer, key: tuple[Any, ...]) -> None:
        self.index = index
        self.peer = peer
        self.key = key


class Lane:
    """The loop's poller with the C lane in front (see the module docstring)."""

    def __init__(self, loop: Loop, datapath: Datapath, tun: Tun, *, server: bool) -> None:
        assert _lane is not None
        self._c = _lane.Lane(loop.epoll_fd)
        self._c.set_tun(tun.fd, tun.vnet, tun.pending, tun.counters)
        self._loop = loop
        self._dp = datapath
        self._server = server
        self._sock: UdpPort | None = None
        self._flows: list[_Flow | None] = [None] * MAX_FLOWS
        self._by_peer: dict[Peer, _Flow] = {}
        self._offered: dict[Peer, float] = {}  # server: when Python last served each
        self._exclusive: tuple[int, dict[Peer, tuple[tuple[bytes, int], ...] | None]] = (
            -1, {})
        self.armings = 0
        self.send_failures = 0  # sends that failed in C (charged by _charge)
        loop.poller = self.poll
        if server:
            datapath.on_lone = self.offer

    # --- the poll -----------------------------------------------------------------

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """``epoll.poll(timeout)`` minus the lone packets C forwarded meanwhile."""
        self._refresh()
        events: list[tuple[int, int]] = self._c.poll(timeout)
        failures = self._c.take_failures()
        if failures:
            self._charge(failures)
        return events

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = self._c.counters()
        out["flows"] = len(self._by_peer)
        out["armings"] = self.armings
        out["send_failures"] = self.send_failures
        return out

    def close(self) -> None:
        if self._loop.poller == self.poll:
            self._loop.poller = None
        for flow in list(self._by_peer.values()):
            self._disarm(flow)
        self._dp.on_lone = None

    def offer(self, peer: Peer) -> None:
        """Server: ``peer`` just had a lone packet through the Python lanes."""
        offered = self._offered
        now = self._loop.now
        if peer not in offered and len(offered) >= MAX_FLOWS:
            idlest = self._idlest(now)
            if idlest is None:
                return  # every flow busy: this peer stays with the Python lanes
            del offered[idlest]
        offered[peer] = now

    def _idlest(self, now: float) -> Peer | None:
        """The offered peer idle longest (what Python or C last carried for it, or
        its flow's arming: ``Lane.last_used``), if that is EVICT_IDLE or more; else
        None."""
        best, best_at = None, now - EVICT_IDLE
        for peer, served in self._offered.items():
            flow = self._by_peer.get(peer)
            at = served if flow is None else max(served, self._c.last_used(flow.index))
            if at <= best_at:
                best, best_at = peer, at
        return best

    # --- arming -------------------------------------------------------------------

    def _refresh(self) -> None:
        if self._server:
            sock = self._dp.sock
            peers = list(self._offered)
        else:
            peer = self._dp.client_peer
            sock = peer.sock if peer is not None else None
            peers = [peer] if peer is not None else []
        if sock is not self._sock:
            self._set_socket(sock)
        for armed in list(self._by_peer.values()):
            if armed.peer not in peers:
                self._disarm(armed)
        if sock is None:
            return
        for peer in peers:
            key = self._key(peer)
            flow = self._by_peer.get(peer)
            if flow is not None and flow.key == key:
                continue
            if flow is not None:
                self._disarm(flow)
            if key is not None:
                self._arm(peer, key)

    def _set_socket(self, sock: UdpPort | None) -> None:
        for flow in list(self._by_peer.values()):
            self._disarm(flow)
        self._sock = sock
        if isinstance(sock, SocketPort):
            self._c.set_udp(sock.fileno(), not self._server, sock.pending)
        else:  # none yet, or not a kernel socket: the lane waits on the TUN alone
            self._sock = None
            self._c.set_udp(-1, False, [])

    def _association(self, peer: Peer) -> Association | None:
        """The one association the peer's lone packets would use, or None (a renewal
        overlaps, or none is established)."""
        if self._server:
            assoc = peer.assoc
            if assoc is None or peer.previous is not None or peer.addr is None:
                return None
            endpoint = self._dp.endpoint
            if endpoint is None or not endpoint.fast_lane(assoc, peer.addr):
                return None
            if self._dp.peers.by_addr.get(peer.addr) is not peer:
                return None
        else:
            conn = peer.conn
            if conn is None or conn.pending is not None or conn.previous is not None:
                return None
            assoc = conn.current
        return assoc if assoc.is_established else None

    def _key(self, peer: Peer) -> tuple[Any, ...] | None:
        """Everything a flow's arming depends on; None: the lane must leave the peer."""
        stream = peer.stream
        if (stream is not None and stream.ready) or peer.replay is not None:
            return None
        assoc = self._association(peer)
        if assoc is None:
            return None
        fast, seal = assoc.fast_open, assoc.fast_seal
        if fast is None or seal is None:
            return None
        prefixes = self._prefixes(peer)
        if prefixes is None:
            return None
        return (assoc, fast, seal, peer.addr, self._dp.mss4, peer.limit, prefixes,
                self._dp.router.underlay(peer), peer.on_send)

    def _prefixes(self, peer: Peer) -> tuple[tuple[bytes, int], ...] | None:
        """The peer's allowed prefixes as (packed address, length) when no other peer
        holds one inside them (cached per router generation); else None."""
        router = self._dp.router
        gen, cache = self._exclusive
        if gen != router.generation:
            cache = {}
            self._exclusive = (router.generation, cache)
        if peer not in cache:
            cache[peer] = _exclusive_prefixes(router, peer)
        return cache[peer]

    def _arm(self, peer: Peer, key: tuple[Any, ...]) -> None:
        free = [i for i, f in enumerate(self._flows) if f is None]
        if not free:
            return
        assoc, fast, seal = key[0], key[1], key[2]
        prefixes = key[6]
        addr = peer.addr if self._server else None
        prot_w = seal.state.protection
        prot_r = fast.protection
        budget = assoc.config.rekey_records or REKEY_RECORDS[prot_r.suite.aead]
        gcm_w, salt_w, high_w, low_w = prot_w.nonce_material()
        gcm_r, salt_r, high_r, low_r = prot_r.nonce_material()
        under = key[7] or b""
        tx = (seal.state, prot_w.key, gcm_w, salt_w if gcm_w else high_w, low_w,
              seal.ctype, seal.epoch, seal.cid, min(budget, MAX_SEQ + 1), addr)
        rx = (fast, fast.window, prot_r.key, gcm_r, salt_r if gcm_r else high_r, low_r,
              fast.head[:3], fast.parts[1], fast.cid, budget, addr)
        index = free[0]
        hook = key[-1]
        wake = None if hook is None else self._waker(peer, hook, key)
        self._c.set_flow(index, peer, assoc.stats, assoc, prefixes, under, self._dp.mss4,
                         peer.limit, tx, rx, wake)
        flow = _Flow(index, peer, key)
        self._flows[index] = flow
        self._by_peer[peer] = flow
        self.armings += 1

    def _waker(self, peer: Peer, hook: Callable[[float], None], key: tuple[Any, ...]
               ) -> Callable[[float], bool]:
        """The hook as C calls it: False when, after it, the flow is no longer what it
        was armed from (the hook renewed the keys, moved the peer to TCP, ...), so that
        C hands the packet back to Python instead of sealing it with the old state."""
        def wake(now: float) -> bool:
            hook(now)
            after = self._key(peer)
            return after is not None and after[:-1] == key[:-1]  # ([-1]: the hook, spent)
        return wake

    def _disarm(self, flow: _Flow) -> None:
        self._c.clear_flow(flow.index)
        self._flows[flow.index] = None
        self._by_peer.pop(flow.peer, None)

    def _charge(self, failures: list[tuple[int, int]]) -> None:
        """Sends that failed in C, charged as the Python lane charges them."""
        sock = self._sock
        now = self._loop.refresh_clock()
        self.send_failures += len(failures)
        for index, err in failures:
            flow = self._flows[index]
            if flow is None or sock is None:
                continue
            self._dp.send_failed(flow.peer, sock, OSError(err, os.strerror(err)), 1, now)


def _exclusive_prefixes(router: Any, peer: Peer) -> tuple[tuple[bytes, int], ...] | None:
    nets = router.prefixes(peer)
    if not nets or len(nets) > _MAX_PREFIXES:
        return None
    for other in router.peers():
        if other is peer:
            continue
        for theirs in router.prefixes(other):
            for ours in nets:
                if theirs.version == ours.version and theirs.subnet_of(ours):
                    return None
    return tuple((net.network_address.packed, net.prefixlen) for net in nets)


def attach(loop: Loop, datapath: Datapath, tun: object, *, server: bool,
           enabled: bool) -> Lane | None:
    """The lane on ``loop`` when it is enabled and can run here; None otherwise (the
    reason logged once at debug level)."""
    if not enabled:
        return None
    reason = unavailable_reason(loop, tun)
    if reason is not None:
        log.debug("compiled lane off: %s", reason)
        return None
    assert isinstance(tun, Tun)
    return Lane(loop, datapath, tun, server=server)

