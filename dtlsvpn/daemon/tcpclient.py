"""ClientTcp: the client's TCP fallback carrier, run by ``vpn/transport.py``'s policy.

In ``auto`` the DTLS dial runs as before (``client.py``).  Every ``CHECK_EVERY``
seconds (or at the policy's own deadline, if sooner) the established association's
receive counter and our send counter are sampled; sending into one second of silence
sends a heartbeat at once and dials TCP + TLS beside it (a *standby*: its SP header is
held back, so the server does not move its traffic there).  An answer keeps UDP (the
standby lingers, then closes); no answer within the probe timeout closes the DTLS
association and the standby carries (its SP header goes out, the server follows).
While TCP carries, a fresh DTLS dial goes out every ``probe_interval`` seconds
(``REDIAL_UDP``: not the dialler's back-off), resuming by ticket; the first that
completes moves the traffic back and closes the TCP link.  No DTLS handshake within
``TCPFallbackAfter`` of the start (or of a loss) dials TCP too.  ``tcp`` dials only TCP.

The TLS dial offers the stored ticket (the core resumes across transports) and stores
the tickets the server sends over TCP, like the DTLS dial.  Switch times are logged at
info level ("traffic moved to TCP/UDP").
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Callable
from functools import partial

from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.resolve import Answer
from dtlsvpn.daemon.role import Host
from dtlsvpn.daemon.stream import StreamLink
from dtlsvpn.daemon.transport import _Links, max_message, set_transport
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.vpn.transport import Action, Carrier, TransportPolicy, TransportSettings

log = logging.getLogger("dtlsvpn")

CHECK_EVERY = 0.25  # seconds between the client's looks at the UDP carrier
TCP_REDIAL = 1.0  # seconds before a lost TCP fallback is dialled again
MIN_WAIT = 0.01  # the check timer never fires sooner than this after itself


class ClientHooks:
    """What ClientTcp needs of the client role (``client.py``)."""

    def __init__(self, peer: Callable[[], Peer], config: Callable[[], DtlsConfig],
                 poke: Callable[[Peer, float], None], redial: Callable[[float], None],
                 ticket: Callable[[ClientSession], None]) -> None:
        self.peer = peer
        self.config = config  # the TLS dial's core settings, with the stored ticket
        self.poke = poke  # the role services its association (after we closed it)
        self.redial = redial  # a fresh DTLS dial now (unless one is up)
        self.ticket = ticket  # store a ticket the server sent over TCP


class ClientTcp(_Links):
    """The client's fallback carrier (see the module docstring)."""

    def __init__(self, host: Host, datapath: Datapath, hooks: ClientHooks) -> None:
        super().__init__(host, datapath)
        iface = host.cfg.interface
        self.mode = iface.transport
        self.policy = TransportPolicy(TransportSettings(
            mode=iface.transport, udp_timeout=iface.tcp_fallback_after,
            udp_silence=max(iface.tcp_fallback_after, 1.6)))
        self.hooks = hooks
        self.link: StreamLink | None = None
        self.connecting: socket.socket | None = None
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
        self._apply(self.policy.udp_established(now), now)

    def udp_lost(self, now: float) -> None:
        """The role's DTLS association or dial ended."""
        self._apply(self.policy.udp_lost(now), now)

    # --- the policy -----------------------------------------------------------------------

    def _apply(self, actions: list[Action], now: float) -> None:
        peer = self.hooks.peer()
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
            elif action is Action.REDIAL_UDP:
                self.hooks.redial(now)
            elif action is Action.CARRY_UDP:
                set_transport(peer, "udp", self.host.loop.wall)
            elif action is Action.CARRY_TCP:
                self._carry_tcp(peer, now)
            else:
                self._udp_action(peer, action, now)

    def _udp_action(self, peer: Peer, action: Action, now: float) -> None:
        conn = peer.conn
        if conn is None:
            return
        if action is Action.CLOSE_UDP:
            # Only an established association that went silent is closed (the role
            # redials it); a dial in progress keeps its own timeout.
            if conn.is_established:
                conn.close(now)
                self.hooks.poke(peer, now)
        elif action is Action.PROBE_UDP and conn.probe_liveness(now):
            self.hooks.poke(peer, now)  # the heartbeat goes out

    def _carry_tcp(self, peer: Peer, now: float) -> None:
        link = self.link
        if link is None:
            return
        link.start_carrying()  # the held SP header: the server moves its traffic too
        peer.stream = link
        self.moved_at = now
        set_transport(peer, "tcp", self.host.loop.wall)
        log.info("peer %s: traffic moved to TCP (%s)", peer.name, link.name)
        self.host.ready(self.host.status_line())

    def _on_check(self, now: float, _wall: float) -> None:
        policy = self.policy
        peer = self.hooks.peer()
        conn = peer.conn
        if policy.carrier is Carrier.UDP and conn is not None and conn.is_established:
            # Any authenticated record of the association counts as an answer; silence
            # counts from our first send that nothing answered (idle is not blocked).
            current = conn.current
            result = current.handshake_result
            actions = policy.udp_sample(now, (id(current), current.stats.rx_records),
                                        peer.tx_packets,
                                        can_probe=result is not None and result.heartbeat)
            if Action.DIAL_TCP in actions or Action.PROBE_UDP in actions:
                log.info("peer %s: UDP silent for %.1fs while sending: heartbeat probe, "
                         "TCP standby dialled", peer.name, policy.settings.suspect_after)
            self._apply(actions, now)
        due = policy.get_timer()
        if due is not None and now >= due:
            if policy.carrier is None and self.link is None:
                log.info("peer %s: no DTLS handshake for %.1fs: dialling TCP", peer.name,
                         policy.settings.udp_timeout)
            self._apply(policy.handle_timer(now), now)
            due = policy.get_timer()
        nxt = now + CHECK_EVERY
        if due is not None:
            nxt = max(min(nxt, due), now + MIN_WAIT)
        self._check.schedule(nxt)

    # --- dialling ---------------------------------------------------------------------------

    def _dial(self, now: float) -> None:
        peer = self.hooks.peer()
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
            log.warning("peer %s: cannot dial TCP: %s", self.hooks.peer().name, answer)
            self._retry(now)
            return
        family, addr = answer[0]
        self._connect(family, addr, now)

    def _connect(self, family: int, addr: tuple[object, ...], now: float) -> None:
        peer = self.hooks.peer()
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
        peer = self.hooks.peer()
        if err:
            log.warning("peer %s: TCP connect to %s:%s: %s", peer.name, addr[0], addr[1],
                        errno.errorcode.get(err, err))
            sock.close()
            self._retry(now)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = StreamAssociation(self.hooks.config())
        link = StreamLink(sock, assoc, max_message=max_message(self.host),
                          name=f"{addr[0]}:{addr[1]}", hold_header=True)
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

    def carried(self, link: StreamLink, now: float) -> Peer | None:
        # (a standby link carries nothing: the server sends there only after our header)
        return self.owners.get(link) if link is self.link else None

    def on_event(self, link: StreamLink, ev: Event, now: float) -> None:
        peer = self.hooks.peer()
        match ev:
            case HandshakeCompleted():
                peer.suite = peer.suite or ev.suite_name
                log.info("peer %s: TLS over TCP up (%s, %s)", peer.name, ev.suite_name,
                         "resumed" if ev.resumed else "full")
                self._apply(self.policy.tcp_established(now), now)
            case PeerUnresponsive():
                link.assoc.close(now)
            case HeartbeatAnswered():
                if peer.stream is link:
                    peer.rtt = ev.rtt
            case SessionTicketReceived():
                self.hooks.ticket(ev.session)
            case _:
                pass

    def drop(self, link: StreamLink, now: float) -> None:
        super().drop(link, now)
        if self.link is link:  # lost (a carrier or a standby): the policy decides
            self.link = None
            self._retry(now)

    def _abandon(self, now: float) -> None:
        if self.connecting is not None:
            self.host.loop.remove(self.connecting.fileno())
            self.connecting.close()
            self.connecting = None
        link, self.link = self.link, None
        if link is not None:
            peer = self.hooks.peer()
            if peer.stream is link:
                peer.stream = None
            link.assoc.close(now)
            self.drop(link, now)

    def stop(self, now: float) -> None:
        """The [Peer] went away (reload): its TCP link closes, the policy starts afresh."""
        self._check.cancel()
        self._redial.cancel()
        self._abandon(now)
        self.policy = TransportPolicy(self.policy.settings)

    def teardown(self, now: float) -> None:
        self._check.cancel()
        self._redial.cancel()
        self._abandon(now)
        self.resolver.close()
        self.close_all(now)
