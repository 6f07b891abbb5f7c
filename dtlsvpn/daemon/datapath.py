"""The hot loops between the TUN device and the UDP socket.

Outbound pipeline (TUN → peer), one call per readable TUN wake-up:

    tun.read_batch(BUDGET)                 up to 64 packets, until EAGAIN
    router.route(packets)                  server: LPM by dst (one lookup per run of a dst);
                                           client: ``route_single``, no lookup, no dict
    clamp_batch(batch, mss4, mss6)         TCP SYNs: MSS option lowered (vpn/mss.py)
    oversize check                         max(len) > peer.limit → see "Packets that don't fit"
    protect(batch)                         fast path: one record (datagram) per packet
    sock.send_batch(datagrams, addr)       GSO: one sendmsg per run of equal-size records
                                           (devices.SocketPort); EAGAIN → counted drop

Inbound pipeline (peer → TUN), one call per readable UDP wake-up:

    sock.recv_batch / recvfrom_batch       EPOLLERR first: drain the ICMP error queue;
                                           ~BUDGET datagrams, GRO buffers split
    conn.receive_batch / endpoint.receive  client: runs of data records opened at once
    peers.by_addr.get(addr)                server: whose it is (unbound: ``bind`` hook);
                                           the rest of a GRO buffer from that address in
                                           one ``receive_fast`` when ``fast_lane`` allows
    defer(service)                         once per wake-up, only if needs_service
    router.admit(peer, inner)              anti-spoofing by source address
    clamp_batch(admitted, mss4, mss6)      TCP SYN-ACKs (and SYNs) from the far side
    tun.write_batch(admitted)

Lone packets (the idle round trip, issue 10: batching must never hold one back or make
it dear): a TUN read or a UDP receive that found one packet takes the lone lanes, the
same steps with no lists, dicts or runs: ``router.route_one`` (one lookup), the SYN bit
read before any clamp, one seal, one ``send``; on receive ``receive_datagram`` (one
open), ``router.admit_one``, ``tun.write_one`` (nothing to coalesce).  ``lone = False``
sends a batch of one through the batch lanes instead, which must give the same bytes and
counters (``tests/unit/test_lone.py``).

Packets that don't fit (``peer.limit``: the peer's applied inner MTU, 0 until the first
PMTU search settled, see daemon/mtu.py).  Only possible when the TUN MTU is above it: a
fixed ``MTU =``, the IPv6 floor of 1280, or a path that shrank within this batch.

    DF IPv4, IPv6 > 1280   drop, count ``too_big``, ICMP frag-needed / Packet Too Big with
                           ``peer.limit`` written back into the TUN (rate-limited, vpn/ip.py)
    IPv6 <= 1280           sent anyway: IPv6 cannot go below 1280 (RFC 8200 §5); the
                           datagram is over the PLPMTU and may still get through
    IPv4 without DF        fragmented to ``peer.limit`` (RFC 791; only the IP header is
                           rebuilt), counted as ``fragmented``; a malformed one is dropped

Rekeying, make-before-break (``dtls/rekey.py``, ``dtls/endpoint.py``): the client's
``Peer.conn`` is a ``RekeyingClient``: it seals with its current association (the
new one as soon as a renewal completed) and opens records of the current, pending and
previous ones.  On a server, during a renewal the peer has two associations:
``Peer.assoc`` (the newest) and ``Peer.previous``; data opened by either is
the peer's (and still passes ``router.admit``), and TUN → peer uses
``endpoint.sending_association(addr)`` (the old one until the client used the new keys).

Rules (architecture.md, "The hot loop"): no per-packet objects beyond the bytes, no
logging, counters only, bound methods in locals, no timer work: slow-path output
(handshake flights, alerts, events) and the associations' timers are the role's
``service``, which a UDP wake-up defers to the end of the loop iteration (once, however
many datagrams it read) only when ``needs_service`` says the slow path changed an
output (never after data only); on a server it serves the associations marked ``touched``
(those that need it).
Peers are looked up in ``PeerTable.by_addr`` (address → peer, one dict get).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from dtlsvpn.daemon.devices import TunDevice, UdpPort
from dtlsvpn.daemon.loop import EPOLLERR
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.daemon.stream import REPLAY_MAX, StreamLink
from dtlsvpn.daemon.udp import ErrorHint, UdpCounters
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.vpn.ip import IPV6_MIN_MTU, TooBigResponder, fragment_v4
from dtlsvpn.vpn.mss import clamp_batch, clamp_lone
from dtlsvpn.vpn.router import Router

BUDGET = 64  # packets or datagrams per fd per wake-up

Addr = tuple[str, int]


class Datapath:
    """TUN ↔ UDP forwarding for one interface (client or server role)."""

    def __init__(self, tun: TunDevice, router: Router[Peer],
                 too_big: TooBigResponder | None, peers: PeerTable) -> None:
        self.tun = tun
        self.peers = peers
        self.router = router
        self.too_big = too_big
        self.mss4 = 0  # MSS clamps for TCP SYNs (IPv4, IPv6); 0: clamping off
        self.mss6 = 0
        self.mss_clamped = 0
        self.fragmented = 0
        self.drops: dict[str, int] = {}  # interface-wide (no peer to charge)
        # A batch of one takes the lone lanes (module doc); False: the batch lanes, which
        # give the same bytes and counters (tests/unit/test_lone.py holds them to it).
        self.lone = True
        self.udp = UdpCounters()  # GSO/GRO, shared by the interface's UDP ports
        self.touched: dict[Association, Addr] = {}  # server: associations to service
        self.client_peer: Peer | None = None
        self.sock: UdpPort | None = None  # server: the listening socket
        self.endpoint: ServerEndpoint | None = None
        self.bind: Callable[[Addr, Association, float], Peer | None] | None = None
        self.on_hints: Callable[[Peer | None, list[ErrorHint], float], None] | None = None
        # a send that failed with an OS error: the client checks its path (roam) or its
        # path MTU (EMSGSIZE)
        self.on_send_error: Callable[[Peer, OSError, float], None] | None = None
        # The slow path, run once at the end of a loop iteration that received anything:
        # ``defer(service)`` (the role's: events, flights, timers of what was fed).
        self.defer: Callable[[Callable[[float, float], None]], None] | None = None
        self.service: Callable[[float, float], None] | None = None
        # server: a peer's lone packet went through the lanes here (daemon/lane.py arms
        # the compiled lane for the peers it names)
        self.on_lone: Callable[[Peer], None] | None = None
        self.lane_counters: Callable[[], dict[str, int]] | None = None  # the lane is on

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    # --- shared pieces ----------------------------------------------------------

    def _split_too_big(self, batch: list[bytes], limit: int, now: float,
                       peer: Peer) -> list[bytes]:
        keep: list[bytes] = []
        replies: list[bytes] = []
        responder = self.too_big
        for pkt in batch:
            size = len(pkt)
            if size <= limit:
                keep.append(pkt)
                continue
            v = pkt[0] >> 4
            if v == 6 and size <= IPV6_MIN_MTU:
                keep.append(pkt)
                continue
            if v == 4 and not pkt[6] & 0x40:  # DF clear: fragment it ourselves
                fragments = fragment_v4(pkt, limit)
                if fragments is not None:
                    keep += fragments
                    self.fragmented += 1
                    continue
            peer.drop("too_big")
            if responder is not None:
                reply = responder.reply(pkt, limit, now)
                if reply is not None:
                    replies.append(reply)
        if replies:
            self.tun.write_batch(replies)
        return keep

    def _deliver(self, peer: Peer, inner: list[bytes]) -> None:
        if len(inner) == 1 and self.lone:
            self._deliver_one(peer, inner[0])
            return
        admitted = self.router.admit(peer, inner)
        if admitted:
            if self.mss4:
                self.mss_clamped += clamp_batch(admitted, self.mss4, self.mss6)
            peer.rx_packets += len(admitted)
            peer.rx_bytes += sum(map(len, admitted))
            refused = self.tun.write_batch(admitted)
            if refused:
                peer.drop("tun_write", refused)

    def _deliver_one(self, peer: Peer, pkt: bytes) -> None:
        """``_deliver(peer, [pkt])`` without the lists: one admit, one clamp test, one
        TUN write."""
        if not self.router.admit_one(peer, pkt):
            return
        if self.mss4 and (new := clamp_lone(pkt, self.mss4, self.mss6)) is not None:
            pkt = new
            self.mss_clamped += 1
        peer.rx_packets += 1
        peer.rx_bytes += len(pkt)
        if self.tun.write_one(pkt):
            peer.drop("tun_write")

    def _errors(self, sock: UdpPort, peer: Peer | None, now: float) -> None:
        hints = sock.read_errors()
        if hints and self.on_hints is not None:
            self.on_hints(peer, hints, now)

    # --- client -------------------------------------------------------------------

    def client_tun(self, _mask: int, now: float, _wall: float) -> None:
        packets = self.tun.read_batch(BUDGET)
        if not packets:
            return
        peer = self.client_peer
        assert peer is not None
        # The router first, whatever carries the packets (or none yet): its drops are the
        # same over DTLS, over TCP and before a session (the kernel's first IPv6 router
        # solicitation on a new TUN is ``multicast``, not ``no_session``).
        lone = len(packets) == 1 and self.lone  # a lone packet: no lists, no runs
        if lone:
            if self.router.route_one(packets[0]) is None:
                return
            batch = packets
        else:
            batch = self.router.route_single(packets)  # one peer: no lookup, no dict
            if not batch:
                return
        stream = peer.stream
        if stream is not None and stream.ready:  # TCP fallback (daemon/transport.py)
            self.stream_out(peer, stream, batch)
            return
        conn = peer.conn
        sock = peer.sock
        if conn is None or sock is None or not conn.is_established:
            peer.drop("no_session", len(batch))
            return
        wake = peer.on_send  # the first send after an idle spell (tcpclient.py)
        if wake is not None:
            wake(now)
        if lone:  # (as clamped: what the replay below resends)
            batch[0] = self._transmit_one(peer, conn.protect, batch[0], sock, None, now)
        else:
            self._transmit(peer, conn.protect, batch, sock, None, now)
        if conn.needs_service and self.defer is not None and self.service is not None:
            self.defer(self.service)  # the write budget ran out: the renewal is due now
        replay = peer.replay  # UDP suspect: kept to resend over TCP (tcpclient.py)
        if replay is not None and len(replay) < REPLAY_MAX:
            replay += batch

    def _transmit(self, peer: Any, protect: Callable[[list[bytes]], list[bytes]],
                  batch: list[bytes], sock: UdpPort, addr: Any, now: float) -> None:
        """One peer's batch out: MSS clamp, the too-big rule, seal, send (``addr``:
        None on the client's connected socket), count."""
        if self.mss4:
            self.mss_clamped += clamp_batch(batch, self.mss4, self.mss6)
        limit = peer.limit
        if limit and max(map(len, batch)) > limit:
            batch = self._split_too_big(batch, limit, now, peer)
        self._transmit_rest(peer, protect, batch, sock, addr, now)

    def _transmit_rest(self, peer: Any, protect: Callable[[list[bytes]], list[bytes]],
                       batch: list[bytes], sock: UdpPort, addr: Any, now: float) -> None:
        """Seal, send, count (``batch`` past the clamp and the too-big rule)."""
        sent, failures = sock.send_batch(protect(batch), addr)
        if failures is not None:
            for exc, n in failures:
                self.send_failed(peer, sock, exc, n, now)
        peer.tx_packets += sent
        peer.tx_bytes += sum(map(len, batch))

    def _transmit_one(self, peer: Any, protect: Callable[[list[bytes]], list[bytes]],
                      pkt: bytes, sock: UdpPort, addr: Any, now: float) -> bytes:
        """``_transmit`` of a lone packet: one clamp test, one seal, one send; returns
        the packet as clamped (the client keeps it to resend over TCP)."""
        if self.mss4 and (new := clamp_lone(pkt, self.mss4, self.mss6)) is not None:
            pkt = new
            self.mss_clamped += 1
        limit = peer.limit
        if limit and len(pkt) > limit:
            self._transmit_rest(peer, protect, self._split_too_big([pkt], limit, now, peer),
                                sock, addr, now)
            return pkt
        (datagram,) = protect([pkt])
        try:
            if addr is None:
                sock.send(datagram)
            else:
                sock.sendto(datagram, addr)
        except OSError as exc:
            self.send_failed(peer, sock, exc, 1, now)
        else:
            peer.tx_packets += 1
        peer.tx_bytes += len(pkt)
        return pkt

    def client_udp(self, mask: int, now: float, wall: float) -> None:
        peer = self.client_peer
        assert peer is not None
        sock = peer.sock
        conn = peer.conn
        if sock is None or conn is None:
            return
        if mask & EPOLLERR:
            self._errors(sock, peer, now)
        datagrams, error = sock.recv_batch(BUDGET)
        if error is not None:  # a queued ICMP error (refused, unreachable)
            peer.last_error = error.strerror
            self._errors(sock, peer, now)
        lone = len(datagrams) == 1 and self.lone  # a lone datagram: no runs
        if lone:
            inner = conn.receive_datagram(datagrams[0], now, wall)
        else:
            inner = conn.receive_batch(datagrams, now, wall)  # runs through the fast path
        if conn.needs_service and self.defer is not None and self.service is not None:
            self.defer(self.service)  # not after data only (the fast path)
        if inner:
            self._deliver(peer, inner)  # (one packet: _deliver_one)

    # --- server -------------------------------------------------------------------

    def server_tun(self, _mask: int, now: float, _wall: float) -> None:
        packets = self.tun.read_batch(BUDGET)
        if not packets:
            return
        if len(packets) == 1 and self.lone:  # a lone packet: one lookup, no dict
            peer = self.router.route_one(packets[0])
            if peer is not None:
                self._server_out(peer, packets, now)
            return
        for peer, batch in self.router.route(packets).items():
            self._server_out(peer, batch, now)

    def _server_out(self, peer: Peer, batch: list[bytes], now: float) -> None:
        """One peer's share of a TUN read: over its TLS link, or sealed and sent on the
        listening socket (None on a TCP-only server: stream peers only)."""
        stream = peer.stream
        if stream is not None and stream.ready:  # TCP fallback (daemon/transport.py)
            self.stream_out(peer, stream, batch)
            return
        sock = self.sock
        assoc = peer.assoc
        addr = peer.addr
        previous = peer.previous
        if (previous is not None and addr is not None and self.endpoint is not None
                and self.endpoint.sending_association(addr) is previous):
            assoc = previous  # renewal: the client does not use the new keys yet
        if assoc is None or addr is None or not assoc.is_established or sock is None:
            peer.drop("no_session", len(batch))
        elif len(batch) == 1 and self.lone:
            self._transmit_one(peer, assoc.protect, batch[0], sock, addr, now)
            if self.on_lone is not None:
                self.on_lone(peer)
        else:
            self._transmit(peer, assoc.protect, batch, sock, addr, now)

    def server_udp(self, mask: int, now: float, wall: float) -> None:
        sock = self.sock
        endpoint = self.endpoint
        assert sock is not None and endpoint is not None
        if mask & EPOLLERR:
            self._errors(sock, None, now)
        received, error = sock.recvfrom_batch(BUDGET)
        if error is not None:
            self._errors(sock, None, now)
        if len(received) == 1 and self.lone:  # a lone datagram: no per-peer dict, no run
            self._server_one(sock, endpoint, received[0], now, wall)
        else:
            self._server_batch(sock, endpoint, received, now, wall)

    def _server_batch(self, sock: UdpPort, endpoint: ServerEndpoint,
                      received: list[tuple[bytes, Any]], now: float, wall: float) -> None:
        """Each datagram to its association, a GRO buffer's run at once where the
        endpoint allows, the data by peer."""
        receive = endpoint.receive
        lane = endpoint.fast_lane
        touched = self.touched
        per_peer: dict[Peer, list[bytes]] = {}
        i, n = 0, len(received)
        while i < n:
            data, raw = received[i]
            i += 1
            addr: Addr = (raw[0], raw[1])
            assoc, out = receive(data, addr, now, wall)
            if assoc is None:
                self._stateless(sock, out, addr)
                continue
            if assoc.needs_service:  # not for data only (the fast path)
                touched[assoc] = addr
            peer = self._owner(addr, assoc, out, now)
            if peer is None:
                continue
            bucket = per_peer.get(peer)
            if bucket is None:
                bucket = per_peer[peer] = out  # a new list, ours
            else:
                bucket += out
            if i < n and received[i][1] == raw and lane(assoc, addr):
                i = self._fast_run(received, i, raw, assoc, bucket, now)
        if touched and self.defer is not None and self.service is not None:
            self.defer(self.service)
        for peer, inner in per_peer.items():
            if inner:
                self._deliver(peer, inner)

    def _server_one(self, sock: UdpPort, endpoint: ServerEndpoint, item: tuple[bytes, Any],
                    now: float, wall: float) -> None:
        """``server_udp``'s loop for one datagram."""
        data, raw = item
        addr: Addr = (raw[0], raw[1])
        assoc, out = endpoint.receive(data, addr, now, wall)
        if assoc is None:
            self._stateless(sock, out, addr)
            peer = None
        else:
            if assoc.needs_service:
                self.touched[assoc] = addr
            peer = self._owner(addr, assoc, out, now)
        if self.touched and self.defer is not None and self.service is not None:
            self.defer(self.service)
        if peer is not None and out:
            self._deliver(peer, out)  # (one packet: _deliver_one)
            if self.on_lone is not None:
                self.on_lone(peer)

    @staticmethod
    def _fast_run(received: list[tuple[bytes, Any]], i: int, raw: Any, assoc: Association,
                  bucket: list[bytes], now: float) -> int:
        """The datagrams from ``raw`` right after ``received[i - 1]`` (a GRO buffer's
        segments), through ``assoc``'s header fast path at once (``endpoint.fast_lane``
        said that is all ``receive`` would do); the index of the first it did not take."""
        run: list[bytes] = []
        n = len(received)
        while i < n:
            data, src = received[i]
            if src != raw:
                break
            run.append(data)
            i += 1
        return i - len(run) + assoc.receive_fast(run, 0, bucket, now)

    def _owner(self, addr: Addr, assoc: Association, out: list[bytes],
               now: float) -> Peer | None:
        """The peer ``assoc`` at ``addr`` is (bound now when data came and it is not)."""
        peer = self.peers.by_addr.get(addr)
        if peer is not None and (peer.assoc is assoc or peer.previous is assoc):
            return peer
        if not out:
            return None
        return self._unbound(addr, assoc, len(out), now)

    # --- TCP fallback carrier (daemon/transport.py) ------------------------------

    def stream_out(self, peer: Peer, stream: StreamLink, batch: list[bytes]) -> None:
        """A peer's batch over its TLS/TCP link: MSS clamp, frame, seal, queue, count."""
        if self.mss4:
            self.mss_clamped += clamp_batch(batch, self.mss4, self.mss6)
        sent = stream.send_packets(batch, peer.drop)  # (refusals counted by reason)
        peer.tx_packets += sent
        peer.tx_bytes += sum(map(len, batch))

    def deliver_stream(self, peer: Peer, inner: list[bytes]) -> None:
        """Inner packets that came over the peer's TLS/TCP link: the same checks."""
        self._deliver(peer, inner)

    def _stateless(self, sock: UdpPort, replies: list[bytes], addr: Addr) -> None:
        for reply in replies:  # HelloVerifyRequest
            try:
                sock.sendto(reply, addr)
            except OSError:
                self.drop("send_error")

    def _unbound(self, addr: Addr, assoc: Association, n: int, now: float) -> Peer | None:
        """Application data right behind the Finished: bind the peer now."""
        peer = self.bind(addr, assoc, now) if self.bind is not None else None
        if peer is None:
            self.drop("unbound", n)
        return peer

    def send_failed(self, peer: Peer, sock: UdpPort, exc: OSError, n: int,
                     now: float) -> None:
        if isinstance(exc, BlockingIOError):
            peer.drop("send_buffer_full", n)
            return
        if exc.errno == errno.EMSGSIZE:
            peer.drop("emsgsize", n)
            self._errors(sock, peer, now)
        else:
            peer.drop("send_error", n)
            peer.last_error = exc.strerror
        if self.on_send_error is not None:
            self.on_send_error(peer, exc, now)
