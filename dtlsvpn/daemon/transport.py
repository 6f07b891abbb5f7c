"""The TCP fallback in the daemon: a second carrier under the same peer table and loop.

One tunnel, two transports.  DTLS over UDP stays exactly as it was (the roles in
``client.py``/``server.py`` own it); this module adds TLS 1.2 over TCP with SP framing
(``stream.py``: :class:`~dtlsvpn.daemon.stream.StreamLink`).  A peer whose
``Peer.stream`` is a ready link sends its inner packets that way (``Datapath`` hooks
``client_tun``/``server_tun``); what arrives on either carrier goes through the same
``router.admit`` (anti-spoofing) and counters.  ``Peer.transport``/``transport_wall``
is what ``status`` shows.

:class:`ServerTcp` (server, unless ``Transport = udp``): listens on TCP at the
ListenAddress (port ``TCPPort``, default the UDP port number), accepts connections,
binds each to the [Peer] that authenticated (``match_peer``, as for DTLS) and makes it
the peer's carrier; a link that closes hands the peer back to its DTLS association.
Before the TLS handshake completes a link is *pending* (``tcpgate.py``): at most 256 of
them, 16 per source (/32, IPv6 /64); one over its source's cap is accepted and closed at
once (``tcp_source_limited`` among the interface drops, one log line a minute), and when
all 256 are taken the oldest is closed for the new one (``tcp_pending_evicted``).  When
``accept`` fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
listener stays readable, so it leaves the loop for ``accept_backoff`` (1 s) instead of
failing on every iteration; one line per episode.

:class:`~dtlsvpn.daemon.tcpclient.ClientTcp` (client, ``tcpclient.py``): the policy
of ``vpn/transport.py`` on the loop.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Callable
from functools import partial

from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import Addr
from dtlsvpn.daemon.loop import Throttle, Timer
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.refusals import Refusals, explain, unknown_peer
from dtlsvpn.daemon.role import Host, display
from dtlsvpn.daemon.settings import match_peer
from dtlsvpn.daemon.stream import StreamLink
from dtlsvpn.daemon.tcpgate import Pending, TcpLimits, source_of
from dtlsvpn.daemon.trust import recheck
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PeerUnresponsive,
)
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.errors import Alert

log = logging.getLogger("dtlsvpn")

MAX_SP_MESSAGE = 16384 - 8  # an SP message and its length fit one TLS record


def max_message(host: Host) -> int:
    """The largest inner packet: the TUN MTU when fixed, else the Ethernet-sized default."""
    return min(MAX_SP_MESSAGE, host.cfg.interface.mtu or 1500)


def first_carrier(mode: str) -> str:
    """The carrier ``Transport = mode`` tries first: what a peer shows (and the MSS clamp
    assumes) before anything is connected and after its link is gone."""
    return "tcp" if mode == "tcp" else "udp"


def set_transport(host: Host, peer: Peer, transport: str) -> None:
    """What ``status`` shows, and the MSS clamp (``tunmtu.py``) follows the carrier."""
    if peer.transport != transport:
        peer.transport = transport
        peer.transport_wall = host.loop.wall
    host.carrier_changed(peer)


ACCEPT_STARVED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # rest, retry
KEY_LIMITS = ("record_limit", "key_age")  # the keys were used up (dtls/stream.py)
ABANDONED = ("connection_lost", "peer_closed", "shutdown")  # a handshake given up, not failed


def abandoned(link: StreamLink) -> bool:
    """The handshake ended because the peer went away mid-way (EOF, reset, close_notify)
    or we shut down: not a refusal (a port scan, a client that changed its mind)."""
    return link.cause in ABANDONED


class _Links:
    """What both roles do with their links: loop registration, timers, service, and the
    count of closed links by cause (``closes``: the status's ``tcp_closes``)."""

    def __init__(self, host: Host, datapath: Datapath) -> None:
        self.host = host
        self.datapath = datapath
        self.timers: dict[StreamLink, Timer] = {}
        self.owners: dict[StreamLink, Peer | None] = {}
        self.closes: dict[str, int] = {}

    def add(self, link: StreamLink, owner: Peer | None) -> None:
        self.owners[link] = owner
        self.timers[link] = self.host.loop.timer(partial(self._on_timer, link))
        self.host.loop.add(link.fileno(), partial(self._on_io, link))
        link.notify = partial(self.host.loop.defer, partial(self._on_notify, link))

    def _on_notify(self, link: StreamLink, now: float, _wall: float) -> None:
        if link in self.owners:
            self.service(link, now)

    def _on_io(self, link: StreamLink, mask: int, now: float, wall: float) -> None:
        if mask & select.EPOLLOUT:
            link.flush()
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            packets = link.on_readable(now, wall)
            self.service(link, now)
            peer = self.carried(link, now)
            if packets and peer is not None:
                self.datapath.deliver_stream(peer, packets)
            return
        self.service(link, now)

    def _on_timer(self, link: StreamLink, now: float, wall: float) -> None:
        due = link.assoc.get_timer()
        if due is not None and now >= due:
            link.assoc.handle_timer(now)
        self.service(link, now)

    def service(self, link: StreamLink, now: float) -> None:
        for ev in link.service(now):
            self.on_event(link, ev, now)
        if link not in self.owners:
            return
        if link.closed and (not link.wants_write or link.eof):
            self.drop(link, now)
            return
        loop = self.host.loop
        loop.modify(link.fileno(), select.EPOLLIN | (select.EPOLLOUT if link.wants_write else 0))
        self.timers[link].bring_forward(link.assoc.get_timer())

    def on_event(self, link: StreamLink, ev: Event, now: float) -> None:
        raise NotImplementedError

    def dead_peer(self, link: StreamLink, silent: float, now: float) -> None:
        """Nothing authenticated from the peer for DeadPeerTimeout (heartbeats unanswered,
        or none allowed): said at WARNING, the link closed (``dead_peer``)."""
        peer = self.owners.get(link)
        log.warning("peer %s unresponsive over TCP (nothing from %s for %.1fs): TCP link "
                    "closed", peer.name if peer is not None else link.name, link.name, silent)
        link.closing("dead_peer")
        link.assoc.close(now)

    def carried(self, link: StreamLink, now: float) -> Peer | None:
        """The peer whose inner packets this link carries, if any."""
        peer = self.owners.get(link)
        return peer if peer is not None and peer.stream is link else None

    def drop(self, link: StreamLink, now: float) -> None:
        """Forget a closed link: its fd, its timer, its peer's carrier; count its cause."""
        if link not in self.owners:
            return
        peer = self.owners.pop(link, None)
        timer = self.timers.pop(link, None)
        if timer is not None:
            timer.cancel()
        self.host.loop.remove(link.fileno())
        link.close(now)
        cause = self._count(link, now)
        if link.cause == "control_overflow":  # (stream.py: it made us send, never read)
            log.warning("%sTCP link %s given up: %s", f"peer {peer.name}: " if peer else "",
                        link.name, link.close_reason)
        if peer is not None and peer.stream is link:
            peer.stream = None
            set_transport(self.host, peer, first_carrier(self.host.cfg.interface.transport))
            if cause in KEY_LIMITS:
                log.warning("peer %s: TLS keys used up over TCP and not renewed (%s): TCP "
                            "link closed", peer.name, link.assoc.close_reason or cause)
            elif cause != "control_overflow":
                reason = link.close_reason
                log.info("peer %s: TCP carrier closed (%s)", peer.name,
                         f"{cause}: {reason}" if reason else cause)

    def _count(self, link: StreamLink, now: float) -> str:
        """The cause of a closed established link, counted; of the handshakes that did
        not complete only the abandoned ones (the failed ones are refusals)."""
        assoc = link.assoc
        if assoc.handshake_result is None:
            if abandoned(link):
                self.closes["abandoned"] = self.closes.get("abandoned", 0) + 1
                return "abandoned"
            return "handshake"
        if link.close_cause is None and assoc.close_cause == "peer_closed":
            # The peer's own key limit closed it (its clock runs a little ahead of ours,
            # or it counted the same record first): say so, not just "peer_closed".
            due = assoc.renewal_due(now)
            if due is not None:
                link.close_cause = due
        cause = link.cause
        self.closes[cause] = self.closes.get(cause, 0) + 1
        return cause

    def recheck(self, conf: DtlsConfig, now: float) -> list[tuple[str, Alert]]:
        """The trust was reloaded (``trust.py``): established links whose peer no longer
        validates against ``conf`` end with the alert (``tcp_closes``: ``untrusted``);
        (who, alert) for each."""
        ended: list[tuple[str, Alert]] = []
        for link in list(self.owners):
            if link.closed:
                continue
            alert = recheck(conf, link.assoc.handshake_result, self.host.loop.wall)
            if alert is None:
                continue
            peer = self.owners.get(link)
            ended.append((peer.name if peer is not None else link.name, alert))
            link.closing("untrusted")
            link.assoc.abort(alert)
            self.service(link, now)
        return ended

    def close_all(self, now: float) -> None:
        for link in list(self.owners):
            link.closing("shutdown")
            self.drop(link, now)


class ServerTcp(_Links):
    """The server's TCP listener and the links it accepted.  A TLS handshake that fails
    is a refusal like a DTLS one (``refusals``, the role's: the same counts, words and
    rate limit, the place said "over TCP"); one the client abandoned is not."""

    def __init__(self, host: Host, datapath: Datapath,
                 config: Callable[[], DtlsConfig], refusals: Refusals,
                 limits: TcpLimits | None = None) -> None:
        super().__init__(host, datapath)
        self.config = config
        self.refusals = refusals
        self.lsock: socket.socket | None = None
        self.results: dict[StreamLink, HandshakeCompleted] = {}  # bound, not yet carrying
        self.pending: Pending[StreamLink] = Pending(limits)  # in their TLS handshake
        self._over_cap = Throttle()
        self._resting = False  # the listener is out of the loop (accept starved)
        self._starved: tuple[float, int] | None = None  # since, failed accepts
        self._rest = host.loop.timer(self._on_rested)

    def setup(self, sock: socket.socket) -> None:
        """Accept on ``sock``, bound before the TUN existed (``server.bind_listeners``)."""
        self.lsock = sock
        self.host.loop.add(sock.fileno(), self._on_accept)
        iface = self.host.cfg.interface
        assert iface.listen is not None
        log.info("listening on TCP %s:%d %s", iface.listen[0], iface.tcp_port or iface.listen[1],
                 "only" if iface.transport == "tcp" else "too (TLS fallback)")

    def _on_accept(self, _mask: int, now: float, _wall: float) -> None:
        assert self.lsock is not None
        for _ in range(16):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._accept_failed(exc, now)
                return
            self._accepted(sock, addr, now)
        if self._starved is not None:
            since, failed = self._starved
            self._starved = None
            log.info("TCP accept works again (%d attempts failed over %.1fs)", failed,
                     now - since)

    def _accepted(self, sock: socket.socket, addr: Addr, now: float) -> None:
        source = source_of(addr)
        name = display(addr) or "?"
        refused = self.pending.refuse(source)
        if refused == "tcp_pending_full":  # all places taken: the oldest gives way
            oldest = self.pending.oldest()
            if oldest is not None:
                oldest.closing("evicted")
                oldest.assoc.close(now)
                self.drop(oldest, now)
                self.datapath.drop("tcp_pending_evicted")
                refused = self.pending.refuse(source)
        if refused is not None:
            sock.close()  # (accepted so that the backlog does not fill with it)
            self.datapath.drop(refused)
            if self._over_cap.ready(now):
                more = self._over_cap.take()
                log.warning("TCP connection from %s closed at once: %s (%d handshakes under "
                            "way, %d from %s)%s", name, refused, len(self.pending),
                            self.pending.from_source(source), source,
                            f" [{more} more since the last report]" if more else "")
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = StreamAssociation(self.config())
        assoc.accept(now)
        link = StreamLink(sock, assoc, max_message=max_message(self.host), name=name)
        self.pending.opened(link, source)
        self.add(link, None)
        self.service(link, now)

    def _accept_failed(self, exc: OSError, now: float) -> None:
        """The listener stays readable while accept fails: a starved accept (no
        descriptor, no memory) rests it for ``accept_backoff``, said once per episode."""
        self.datapath.drop("tcp_accept_failed")
        if exc.errno not in ACCEPT_STARVED:
            log.warning("TCP accept: %s", exc.strerror)
            return
        if self._starved is None:
            self._starved = (now, 1)
            log.warning("TCP accept: %s: not accepting for %gs at a time until it works "
                        "again (%d TCP links held)", exc.strerror,
                        self.pending.limits.accept_backoff, len(self.owners))
        else:
            since, failed = self._starved
            self._starved = (since, failed + 1)
        assert self.lsock is not None
        self.host.loop.remove(self.lsock.fileno())
        self._resting = True
        self._rest.schedule(now + self.pending.limits.accept_backoff)

    def _on_rested(self, now: float, wall: float) -> None:
        if self.lsock is None or not self._resting:
            return
        self._resting = False
        self.host.loop.add(self.lsock.fileno(), self._on_accept)
        self._on_accept(select.EPOLLIN, now, wall)  # (level-triggered: it would say so)

    def on_event(self, link: StreamLink, ev: Event, now: float) -> None:
        match ev:
            case HandshakeCompleted():
                self.pending.done(link)
                cfg = match_peer(self.host.cfg, ev)
                peer = self.host.peers.get(cfg.name) if cfg is not None else None
                if peer is None:
                    self._refused(link, unknown_peer(ev, matched=False), now)
                    self.datapath.drop("unknown_peer")
                    link.closing("unknown_peer")
                    link.assoc.close(now)
                    return
                self.owners[link] = peer
                self.results[link] = ev
                self.carried(link, now)  # (its SP header may have come in the same read)
            case PeerUnresponsive(silent_for=silent):
                self.dead_peer(link, silent, now)
            case HeartbeatAnswered() if (peer := self.owners.get(link)) is not None:
                peer.rtt = ev.rtt
            case AssociationClosed(handshake=True) if not abandoned(link):
                self._refused(link, ev, now)
            case AssociationClosed(reason=reason) if self.owners.get(link) is None:
                log.info("TCP connection from %s closed before binding (%s)", link.name,
                         link.close_reason or reason)
            case _:
                pass

    def _refused(self, link: StreamLink, ev: AssociationClosed, now: float) -> None:
        """A TLS handshake that failed or matched no [Peer]: as over DTLS (refusals.py)."""
        message = explain(ev, server=True)
        who = ev.peer_identity
        where = f"{link.name} over TCP"
        if who and who not in message:
            where += f" ({who})"
        self.refusals.note(ev.failure or "closed", link.name.rpartition(":")[0], where,
                           message, now)

    def carried(self, link: StreamLink, now: float) -> Peer | None:
        """A bound link becomes its peer's carrier once the client's SP header arrived
        (a client's standby link holds it back until it moves its traffic there)."""
        peer = self.owners.get(link)
        if peer is None or peer.stream is link or not link.ready:
            return super().carried(link, now)
        old = peer.stream
        peer.stream = link
        if old is not None:
            old.closing("replaced")
            self.drop(old, now)  # the peer reconnected: the new link carries
            peer.stream = link
        set_transport(self.host, peer, "tcp")
        ev = self.results.pop(link, None)
        if ev is not None:
            peer.suite = ev.suite_name
            # (counted once it carries, as the client does: a standby is not; a full
            # handshake that replaces a link is the client's key renewal)
            peer.note_tls_handshake(ev, self.host.loop.wall,
                                    renewal=old is not None and not ev.resumed)
        log.info("peer %s: %s (%s from %s, %s)", peer.name,
                 "TCP link replaced (renewal or reconnect)" if old else "traffic moved to TCP",
                 ev.suite_name if ev else "?", link.name,
                 "resumed" if ev is not None and ev.resumed else "full")
        return peer

    def drop(self, link: StreamLink, now: float) -> None:
        self.results.pop(link, None)
        self.pending.done(link)
        super().drop(link, now)

    def close_peer(self, peer: Peer, now: float) -> None:
        """The [Peer] went away on reload: its links close."""
        for link, owner in list(self.owners.items()):
            if owner is peer:
                link.closing("removed")
                link.assoc.close(now)
                self.drop(link, now)

    def teardown(self, now: float) -> None:
        self.close_all(now)
        self._rest.cancel()
        self._resting = False
        if self.lsock is not None:
            self.host.loop.remove(self.lsock.fileno())
            self.lsock.close()
            self.lsock = None
