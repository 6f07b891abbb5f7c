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

:class:`ClientTcp` (client): the policy of ``vpn/transport.py`` on the loop.  In
``auto`` the DTLS dial runs as before; when it is not up ``TCPFallbackAfter`` seconds
after the start (or after it was lost), or the established association received
nothing for that long while we were sending, a TCP connection is dialled and carries
the traffic once its TLS handshake and SP headers are done.  The role's own redials of
DTLS continue in the background (they are the UDP probes); the first one that
completes moves the traffic back and closes the TCP link.  ``tcp`` dials TCP only.
Switch times are logged at info level ("traffic moved to TCP/UDP").
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Callable
from functools import partial

from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.loop import Timer
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.resolve import Answer
from dtlsvpn.daemon.role import Host
from dtlsvpn.daemon.settings import match_peer
from dtlsvpn.daemon.stream import StreamLink
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PeerUnresponsive,
)
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.vpn.transport import Action, Carrier, TransportPolicy, TransportSettings

log = logging.getLogger("dtlsvpn")

CHECK_EVERY = 0.25  # seconds between the client's looks at the UDP carrier
PROBE_INTERVAL = 10.0  # policy: UDP probes while TCP carries (the role's redials do them)
TCP_REDIAL = 1.0  # seconds before a lost TCP fallback is dialled again
MAX_SP_MESSAGE = 16384 - 8  # an SP message and its length fit one TLS record


def max_message(host: Host) -> int:
    """The largest inner packet: the TUN MTU when fixed, else the Ethernet-sized default."""
    return min(MAX_SP_MESSAGE, host.cfg.interface.mtu or 1500)


def set_transport(peer: Peer, transport: str, wall: float) -> None:
    if peer.transport != transport:
        peer.transport = transport
        peer.transport_wall = wall


class _Links:
    """What both roles do with their links: loop registration, timers, service."""

    def __init__(self, host: Host, datapath: Datapath) -> None:
        self.host = host
        self.datapath = datapath
        self.timers: dict[StreamLink, Timer] = {}
        self.owners: dict[StreamLink, Peer | None] = {}

    def add(self, link: StreamLink, owner: Peer | None) -> None:
        self.owners[link] = owner
        self.timers[link] = self.host.loop.timer(partial(self._on_timer, link))
        self.host.loop.add(link.fileno(), partial(self._on_io, link))

    def _on_io(self, link: StreamLink, mask: int, now: float, wall: float) -> None:
        if mask & select.EPOLLOUT:
            link.flush()
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            packets = link.on_readable(now, wall)
            self.service(link, now)
            peer = self.owners.get(link)
            if packets and peer is not None and peer.stream is link:
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

    def drop(self, link: StreamLink, now: float) -> None:
        """Forget a closed link: its fd, its timer, its peer's carrier."""
        peer = self.owners.pop(link, None)
        timer = self.timers.pop(link, None)
        if timer is not None:
            timer.cancel()
        self.host.loop.remove(link.fileno())
        link.close(now)
        if peer is not None and peer.stream is link:
            peer.stream = None
            set_transport(peer, "udp", self.host.loop.wall)
            self.lost(peer, link, now)

    def lost(self, peer: Peer, link: StreamLink, now: float) -> None:
        log.info("peer %s: TCP carrier closed (%s)", peer.name, link.close_reason)

    def close_all(self, now: float) -> None:
        for link in list(self.owners):
            self.drop(link, now)


class ServerTcp(_Links):
    """The server's TCP listener and the links it accepted."""

    def __init__(self, host: Host, datapath: Datapath,
                 config: Callable[[], DtlsConfig]) -> None:
        super().__init__(host, datapath)
        self.config = config
        self.lsock: socket.socket | None = None

    def setup(self) -> None:
        iface = self.host.cfg.interface
        assert iface.listen is not None
        addr = (iface.listen[0], iface.tcp_port or iface.listen[1])
        try:
            sock = self.host.devices.tcp_listener(addr)
        except OSError as exc:
            log.error("cannot listen on TCP %s:%d (%s): no TCP fallback for clients",
                      addr[0], addr[1], exc.strerror)
            return
        self.lsock = sock
        self.host.loop.add(sock.fileno(), self._on_accept)
        log.info("listening on TCP %s:%d too (TLS fallback)", *addr)

    def _on_accept(self, _mask: int, now: float, _wall: float) -> None:
        assert self.lsock is not None
        for _ in range(16):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("TCP accept: %s", exc.strerror)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = StreamAssociation(self.config())
            assoc.accept(now)
            link = StreamLink(sock, assoc, max_message=max_message(self.host),
                              name=f"{addr[0]}:{addr[1]}")
            self.add(link, None)
            self.service(link, now)

    def on_event(self, link: StreamLink, ev: Event, now: float) -> None:
        match ev:
            case HandshakeCompleted():
                cfg = match_peer(self.host.cfg, ev)
                peer = self.host.peers.get(cfg.name) if cfg is not None else None
                if peer is None:
                    log.warning("TCP connection from %s matches no [Peer]: closed", link.name)
                    self.datapath.drop("unknown_peer")
                    link.assoc.close(now)
                    return
                old = peer.stream
                self.owners[link] = peer
                peer.stream = link
                if old is not None and old is not link:
                    self.drop(old, now)  # the peer reconnected: the new link carries
                    peer.stream = link
                set_transport(peer, "tcp", self.host.loop.wall)
                peer.suite = ev.suite_name
                log.info("peer %s: traffic moved to TCP (%s from %s, %s)", peer.name,
                         ev.suite_name, link.name, "resumed" if ev.resumed else "full")
            case PeerUnresponsive():
                link.assoc.close(now)
            case HeartbeatAnswered() if (peer := self.owners.get(link)) is not None:
                peer.rtt = ev.rtt
            case AssociationClosed(reason=reason) if self.owners.get(link) is None:
                log.info("TCP connection from %s closed before binding (%s)", link.name,
                         link.close_reason or reason)
            case _:
                pass

    def teardown(self, now: float) -> None:
        self.close_all(now)
        if self.lsock is not None:
            self.host.loop.remove(self.lsock.fileno())
            self.lsock.close()
            self.lsock = None


class ClientTcp(_Links):
    """The client's fallback carrier, run by ``vpn/transport.py``'s policy on the loop.

    The policy's DIAL_UDP is the role's own dial and redials (its back-off), so it is
    not acted on here; CLOSE_UDP closes the role's association when it is established
    and silent (the role then redials in the background: those are the UDP probes), and
    leaves a dial in progress alone; DIAL_TCP, CLOSE_TCP and the carrier changes are
    this class's.
    """

    def __init__(self, host: Host, datapath: Datapath, peer: Callable[[], Peer],
                 config: Callable[[], DtlsConfig],
                 poke: Callable[[Peer, float], None]) -> None:
        super().__init__(host, datapath)
        iface = host.cfg.interface
        self.mode = iface.transport
        # Silence: nothing authenticated for longer than a keepalive takes to come back
        # (with one-way traffic only the heartbeats answer), and not less than the setting.
        silence = max(iface.tcp_fallback_after, iface.heartbeat_interval + 1.0)
        self.policy = TransportPolicy(TransportSettings(
            mode=iface.transport, udp_timeout=iface.tcp_fallback_after,
            udp_silence=silence, probe_interval=PROBE_INTERVAL))
        self.peer = peer
        self.config = config
        self.poke = poke  # the role services its association (after we closed it)
        self.link: StreamLink | None = None
        self.connecting: socket.socket | None = None
        self.rx_seen: tuple[int, int] = (0, 0)  # (association, its records received)
        self.tx_seen = 0
        self.unanswered_since: float | None = None  # first send since anything came in
        self.moved_at: float | None = None
        self.resolver = host.devices.resolver(host.loop)
        self.not_before = 0.0  # no TCP dial before (after a failed one)
        self._check = host.loop.timer(self._on_check)
        self._redial = host.loop.timer(self._on_redial)

    def start(self, now: float) -> None:
        self._apply(self.policy.start(now), now)
        if self.mode == "auto":
            self._check.schedule(now + CHECK_EVERY)

    # --- hooks from the client role -------------------------------------------------------

    def udp_up(self, now: float) -> None:
        """A DTLS handshake completed: the fast path carries again (auto)."""
        self.unanswered_since = None
        self._apply(self.policy.udp_established(now), now)

    def udp_lost(self, now: float) -> None:
        """The role's DTLS association or dial ended."""
        self._apply(self.policy.udp_lost(now), now)

    # --- the policy -----------------------------------------------------------------------

    def _apply(self, actions: list[Action], now: float) -> None:
        peer = self.peer()
        wall = self.host.loop.wall
        for action in actions:
            if action is Action.DIAL_TCP:
                if self.link is None and self.connecting is None:
                    if now >= self.not_before:
                        self._dial(now)
                    else:
                        self._redial.schedule(self.not_before)
            elif action is Action.CLOSE_TCP:
                if self.link is not None or self.connecting is not None:
                    took = f" after {now - self.moved_at:.2f}s on TCP" if self.moved_at else ""
                    log.info("peer %s: traffic moved to UDP%s", peer.name, took)
                self._abandon(now)
            elif action is Action.CLOSE_UDP:
                # Only an established association that went silent is closed (the role
                # redials it); a dial in progress keeps its own timeout and back-off.
                conn = peer.conn
                if conn is not None and conn.is_established:
                    conn.close(now)
                    self.poke(peer, now)
            elif action is Action.CARRY_UDP:
                set_transport(peer, "udp", wall)
            elif action is Action.CARRY_TCP and self.link is not None:
                peer.stream = self.link
                self.moved_at = now
                set_transport(peer, "tcp", wall)

    def _on_check(self, now: float, _wall: float) -> None:
        self._check.schedule(now + CHECK_EVERY)
        policy = self.policy
        due = policy.get_timer()
        if due is not None and now >= due:
            if policy.carrier is None and self.link is None:
                log.info("peer %s: no DTLS handshake for %.1fs: dialling TCP",
                         self.peer().name, self.policy.settings.udp_timeout)
            self._apply(policy.handle_timer(now), now)
        peer = self.peer()
        conn = peer.conn
        if policy.carrier is not Carrier.UDP or conn is None or not conn.is_established:
            return
        # Silence counts from our first send that nothing answered (an idle tunnel is
        # not a blocked one); any record of the association counts as an answer.
        current = conn.current
        rx, tx = (id(current), current.stats.rx_records), peer.tx_packets
        if rx != self.rx_seen:
            self.unanswered_since = None
        elif tx != self.tx_seen and self.unanswered_since is None:
            self.unanswered_since = now
        self.rx_seen, self.tx_seen = rx, tx
        since = self.unanswered_since
        if since is None:
            return
        actions = policy.udp_silent(now, last_rx=since, last_tx=now)
        if actions:
            log.info("peer %s: UDP silent for %.1fs while sending: dialling TCP", peer.name,
                     now - since)
            self._apply(actions, now)

    # --- dialling ---------------------------------------------------------------------------

    def _dial(self, now: float) -> None:
        peer = self.peer()
        endpoint = peer.config.endpoint
        assert endpoint is not None
        port = self.host.cfg.interface.tcp_port or endpoint[1]
        if peer.addr is not None:  # what the DTLS dial resolved last: the same server
            udp = peer.addr
            family = socket.AF_INET6 if ":" in str(udp[0]) else socket.AF_INET
            self._connect(family, (udp[0], port, *udp[2:]), now)
            return
        # No DTLS address yet (TCP only, or UDP never got that far): the name is looked up
        # off the loop, like the DTLS dial's (resolve.py).
        self.resolver.resolve(str(endpoint[0]), port, self._resolved)

    def _resolved(self, answer: Answer, now: float) -> None:
        if isinstance(answer, OSError):
            log.warning("peer %s: cannot dial TCP: %s", self.peer().name, answer)
            self._retry(now)
            return
        family, (host, port) = answer[0]
        self._connect(family, (host, port), now)

    def _connect(self, family: int, addr: tuple[object, ...], now: float) -> None:
        peer = self.peer()
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("peer %s: cannot dial TCP: %s", peer.name, exc)
            self._retry(now)
            return
        sock.setblocking(False)
        rc = sock.connect_ex(addr)
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            log.warning("peer %s: TCP connect: %s", peer.name, errno.errorcode.get(rc, rc))
            self._retry(now)
            return
        self.connecting = sock
        self.moved_at = None
        self.host.loop.add(sock.fileno(), partial(self._on_connected, sock, addr),
                           select.EPOLLOUT)

    def _on_connected(self, sock: socket.socket, addr: tuple[object, ...], _mask: int,
                      now: float, wall: float) -> None:
        self.host.loop.remove(sock.fileno())
        if self.connecting is not sock:
            sock.close()
            return
        self.connecting = None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        peer = self.peer()
        if err:
            log.warning("peer %s: TCP connect to %s:%s: %s", peer.name, addr[0], addr[1],
                        errno.errorcode.get(err, err))
            sock.close()
            self._retry(now)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = StreamAssociation(self.config())
        link = StreamLink(sock, assoc, max_message=max_message(self.host),
                          name=f"{addr[0]}:{addr[1]}")
        self.link = link
        self.add(link, peer)
        assoc.connect(now, wall)
        self.service(link, now)

    def _retry(self, now: float) -> None:
        """A TCP dial failed or the link was lost: tell the policy; ``tcp`` redials."""
        self.not_before = now + TCP_REDIAL
        if self.mode == "tcp":
            self._redial.schedule(self.not_before)
        else:
            self._apply(self.policy.tcp_lost(now), now)

    def _on_redial(self, now: float, _wall: float) -> None:
        if self.link is None and self.connecting is None:
            self._dial(now)

    def on_event(self, link: StreamLink, ev: Event, now: float) -> None:
        peer = self.peer()
        match ev:
            case HandshakeCompleted():
                actions = self.policy.tcp_established(now)
                self._apply(actions, now)
                if Action.CARRY_TCP in actions:
                    peer.suite = peer.suite or ev.suite_name
                    log.info("peer %s: traffic moved to TCP (%s, %s)", peer.name,
                             ev.suite_name, "resumed" if ev.resumed else "full")
                    self.host.ready(self.host.status_line())
            case PeerUnresponsive():
                link.assoc.close(now)
            case HeartbeatAnswered():
                peer.rtt = ev.rtt
            case _:
                pass

    def lost(self, peer: Peer, link: StreamLink, now: float) -> None:
        super().lost(peer, link, now)
        if self.link is link:
            self.link = None
            self._retry(now)

    def _abandon(self, now: float) -> None:
        if self.connecting is not None:
            self.host.loop.remove(self.connecting.fileno())
            self.connecting.close()
            self.connecting = None
        link, self.link = self.link, None
        if link is not None:
            peer = self.peer()
            if peer.stream is link:
                peer.stream = None
            link.assoc.close(now)
            self.drop(link, now)

    def teardown(self, now: float) -> None:
        self._check.cancel()
        self._redial.cancel()
        self._abandon(now)
        self.resolver.close()
        self.close_all(now)
