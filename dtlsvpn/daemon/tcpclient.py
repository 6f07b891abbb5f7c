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

import dataclasses
import errno
import logging
import select
import socket
from collections.abc import Callable
from functools import partial

from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import Addr
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.resolve import Answer
from dtlsvpn.daemon.role import Host
from dtlsvpn.daemon.settings import match_peer
from dtlsvpn.daemon.stream import StreamLink
from dtlsvpn.daemon.transport import (
    KEY_LIMITS,
    _Links,
    abandoned,
    max_message,
    set_transport,
)
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AssociationClosed,
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
RENEW_RETRY = 30.0  # seconds before a failed key renewal over TCP is tried again
REPLAY_FOR = 3.0  # seconds: packets kept while UDP is suspect are not resent when older
RETIRE_AFTER = 5.0  # seconds a renewed link's predecessor may still deliver
TCP_REDIAL = 1.0  # seconds before a lost TCP fallback is dialled again, doubling ...
TCP_REDIAL_CAP = 30.0  # ... with each failure in a row up to this (reset by a handshake)
MIN_WAIT = 0.01  # the check timer never fires sooner than this after itself
IDLE_AFTER = 5.0  # seconds without a send (and UDP not suspect): the checker sleeps ...
IDLE_CHECK = 30.0  # ... this long at most, woken at once by the next send (Peer.on_send)


class ClientHooks:
    """What ClientTcp needs of the client role (``client.py``)."""

    def __init__(self, peer: Callable[[], Peer], config: Callable[[], DtlsConfig],
                 poke: Callable[[Peer, float], None], redial: Callable[[float], None],
                 ticket: Callable[[ClientSession], None], status: Callable[[], None],
                 failed: Callable[[AssociationClosed, float], object],
                 mark: int = 0) -> None:
        self.peer = peer
        self.config = config  # the TLS dial's core settings, with the stored ticket
        self.poke = poke  # the role services its association (after we closed it)
        self.redial = redial  # a fresh DTLS dial now (unless one is up)
        self.ticket = ticket  # store a ticket the server sent over TCP
        self.mark = mark  # SO_MARK of a full tunnel's sockets (fulltunnel.py)
        self.status = status  # STATUS= again (the carrier changed)
        self.failed = failed  # a TLS handshake failed: counted and said, as over DTLS


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
        self.replay_since = 0.0  # when peer.replay started
        self._tx = -1  # peer.tx_packets at the last check, and when it last changed
        self._tx_changed_at = 0.0
        self.resolver = host.devices.resolver(host.loop)
        self.not_before = 0.0  # no TCP dial before (after a failed one)
        self.failures = 0  # TCP dials or links lost in a row, without a handshake between
        self._check = host.loop.timer(self._on_check)
        self._redial = host.loop.timer(self._on_redial)
        # Key renewal: a new TLS connection, make-before-break (RekeyInterval, record budget)
        self.link_addr: Addr | None = None  # where self.link is connected
        self.renewing: socket.socket | None = None
        self.renewal: StreamLink | None = None
        self.retiring: list[StreamLink] = []
        self.renew_not_before = 0.0
        # What started the renewal under way, or the failed one the rekey timer retries
        # (None: neither, so the timer's renewal is the rekey interval's).
        self.renew_why: str | None = None
        self._rekey = host.loop.timer(self._on_rekey)
        self._retire = host.loop.timer(self._on_retire)

    def start(self, now: float) -> None:
        self._apply(self.policy.start(now), now)
        if self.mode == "auto":
            self._check.schedule(now + CHECK_EVERY)

    # --- hooks from the client role -------------------------------------------------------

    def udp_up(self, now: float) -> None:
        """A DTLS handshake completed: the fast path carries again (auto)."""
        self.hooks.peer().replay = None
        self._apply(self.policy.udp_established(now), now)
        self._rearm(now)

    def udp_lost(self, now: float) -> None:
        """The role's DTLS association or dial ended."""
        self._apply(self.policy.udp_lost(now), now)
        self._rearm(now)

    def _rearm(self, now: float) -> None:
        """The policy has new deadlines: a checker asleep (idle) looks again soon."""
        if self.mode == "auto":
            self.hooks.peer().on_send = None
            self._check.bring_forward(now + CHECK_EVERY)

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
                if peer.stream is not None and self.moved_at is not None:
                    log.info("peer %s: traffic moved to UDP after %.2fs on TCP", peer.name,
                             now - self.moved_at)
                elif self.link is not None or self.connecting is not None:
                    log.info("peer %s: TCP standby closed (UDP answers)", peer.name)
                self._abandon(now)
            elif action is Action.REDIAL_UDP:
                self.hooks.redial(now)
            elif action is Action.CARRY_UDP:
                set_transport(self.host, peer, "udp")
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
        ev = link.assoc.handshake_result
        if ev is not None and peer.stream is not link:  # (a standby counts once it carries)
            peer.note_tls_handshake(ev, self.host.loop.wall, renewal=False)
        peer.stream = link
        self.host.set_underlay(peer, self.link_addr)  # never routed into the tunnel itself
        self.moved_at = now
        self._schedule_renewal(link)
        replay, peer.replay = peer.replay, None
        if replay and now - self.replay_since <= REPLAY_FOR:
            # Sent into the silence: again, so that the inner flows need not wait for
            # their own retransmission timers (backed off by now).
            link.send_packets(replay)
            log.debug("peer %s: %d packets sent into the UDP silence resent over TCP",
                      peer.name, len(replay))
        set_transport(self.host, peer, "tcp")
        log.info("peer %s: traffic moved to TCP (%s)", peer.name, link.name)
        self.hooks.status()

    def _on_check(self, now: float, _wall: float) -> None:
        policy = self.policy
        peer = self.hooks.peer()
        self._sample(peer, now)
        if policy.carrier is Carrier.UDP:  # keep what goes out while UDP is suspect
            if not policy.suspect:
                peer.replay = None
            elif peer.replay is None:
                peer.replay = []
                self.replay_since = now
        due = policy.get_timer()
        if due is not None and now >= due:
            if policy.carrier is None and self.link is None:
                log.info("peer %s: no DTLS handshake for %.1fs: dialling TCP", peer.name,
                         policy.settings.udp_timeout)
            self._apply(policy.handle_timer(now), now)
            due = policy.get_timer()
        nxt = now + (IDLE_CHECK if self._idle(peer, now) else CHECK_EVERY)
        if due is not None:
            nxt = max(min(nxt, due), now + MIN_WAIT)
        self._check.schedule(nxt)

    def _idle(self, peer: Peer, now: float) -> bool:
        """Nothing sent for IDLE_AFTER on a UDP carrier that is not suspect: stop looking
        every CHECK_EVERY and let the next send wake the checker (``Peer.on_send``), which
        samples just before that send goes out, so its silence is dated from it exactly."""
        if peer.tx_packets != self._tx:
            self._tx, self._tx_changed_at = peer.tx_packets, now
        idle = (self.policy.carrier is Carrier.UDP and not self.policy.suspect
                and now - self._tx_changed_at >= IDLE_AFTER)
        peer.on_send = self._woken if idle else None
        return idle

    def _woken(self, now: float) -> None:
        peer = self.hooks.peer()
        peer.on_send = None
        self._sample(peer, now)  # before the send: the next sample sees it as new
        self._check.schedule(now + CHECK_EVERY)

    def _sample(self, peer: Peer, now: float) -> None:
        conn = peer.conn
        policy = self.policy
        if policy.carrier is not Carrier.UDP or conn is None or not conn.is_established:
            return
        # Any authenticated record of the association counts as an answer; silence
        # counts from our first send that nothing answered (idle is not blocked).
        current = conn.current
        result = current.handshake_result
        actions = policy.udp_sample(now, (id(current), current.stats.rx_records),
                                    peer.tx_packets,
                                    can_probe=result is not None and result.heartbeat)
        if actions:
            # (info once per standby; a one-way flow's repeated probes at debug)
            level = logging.INFO if Action.DIAL_TCP in actions else logging.DEBUG
            log.log(level, "peer %s: UDP silent for %.1fs while sending: heartbeat probe%s",
                    peer.name, policy.settings.suspect_after,
                    ", TCP standby dialled" if Action.DIAL_TCP in actions else "")
        self._apply(actions, now)

    # --- dialling ---------------------------------------------------------------------------

    def _dial(self, now: float) -> None:
        peer = self.hooks.peer()
        endpoint = peer.config.endpoint
        assert endpoint is not None
        port = self.host.cfg.interface.tcp_port or endpoint[1]
        if peer.addr is not None:  # what the DTLS dial resolved last: the same server
            udp = peer.addr
            family = socket.AF_INET6 if ":" in str(udp[0]) else socket.AF_INET
            self._connect(family, (udp[0], port), now)
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

    def _connect(self, family: int, addr: Addr, now: float, *, renew: bool = False) -> None:
        peer = self.hooks.peer()
        try:
            sock = self.host.devices.tcp_connect(family, addr, mark=self.hooks.mark)
        except OSError as exc:
            log.warning("peer %s: cannot dial TCP to %s:%s: %s", peer.name, addr[0], addr[1],
                        exc.strerror or exc)
            self._failed(now, renew)
            return
        if renew:
            self.renewing = sock
        else:
            self.connecting = sock
            self.moved_at = None
        self.host.loop.add(sock.fileno(), partial(self._on_connected, sock, addr, renew),
                           select.EPOLLOUT)

    def _failed(self, now: float, renew: bool) -> None:
        if renew:  # the current link carries on; try again later, for the same cause
            self.renew_not_before = now + RENEW_RETRY
            self._rekey.schedule(self.renew_not_before)
        else:
            self._retry(now)

    def _on_connected(self, sock: socket.socket, addr: Addr, renew: bool, _mask: int,
                      now: float, wall: float) -> None:
        self.host.loop.remove(sock.fileno())
        if sock is not (self.renewing if renew else self.connecting):
            sock.close()
            return
        if renew:
            self.renewing = None
        else:
            self.connecting = None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        peer = self.hooks.peer()
        if err:
            log.warning("peer %s: TCP connect to %s:%s: %s", peer.name, addr[0], addr[1],
                        errno.errorcode.get(err, err))
            sock.close()
            self._failed(now, renew)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = self.hooks.config()
        if renew:  # fresh keys are the point: no ticket (as the DTLS renewals, rekey.py)
            config = dataclasses.replace(config, resume_session=None)
        link = StreamLink(sock, StreamAssociation(config), max_message=max_message(self.host),
                          name=f"{addr[0]}:{addr[1]}", hold_header=True)
        if renew:
            self.renewal = link
        else:
            self.link, self.link_addr = link, addr
        self.add(link, peer)
        link.assoc.connect(now, wall)
        self.service(link, now)

    # --- key renewal over TCP -----------------------------------------------------------------

    def _schedule_renewal(self, link: StreamLink) -> None:
        interval = link.assoc.config.rekey_interval
        at = link.assoc.established_at
        if interval is not None and at is not None:
            self._rekey.schedule(max(at + interval, self.renew_not_before))

    def _on_rekey(self, now: float, _wall: float) -> None:
        self._renew(now, self.renew_why or "rekey interval")

    def service(self, link: StreamLink, now: float) -> None:
        super().service(link, now)
        if link is self.link and now >= self.renew_not_before and link.assoc.records_exhausted():
            self._renew(now, "record limit")

    def _renew(self, now: float, why: str) -> None:
        """A new TLS connection beside the carrying one; it carries once up (``_renewed``)."""
        link, addr, peer = self.link, self.link_addr, self.hooks.peer()
        if (link is None or addr is None or peer.stream is not link or self.renewal is not None
                or self.renewing is not None):
            return
        self.renew_why = why
        log.info("peer %s: renewing the keys over TCP (%s): a new TLS connection",
                 peer.name, why)
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self._connect(family, addr, now, renew=True)

    def _renewed(self, new: StreamLink, ev: HandshakeCompleted, now: float) -> None:
        peer = self.hooks.peer()
        old = self.link
        self.renewal = self.renew_why = None
        if old is None or peer.stream is not old:  # the link it was to replace is gone
            new.assoc.close(now)
            return
        self.link = new
        new.start_carrying()  # our SP header: the server moves to it and closes the old one
        peer.stream = new
        peer.note_tls_handshake(ev, self.host.loop.wall, renewal=True)
        peer.suite = ev.suite_name
        log.info("peer %s: keys renewed over TCP (generation %d, %s)", peer.name,
                 peer.generation, ev.suite_name)
        self._schedule_renewal(new)
        old.closing("renewed")
        self.retiring.append(old)  # what is still in flight on it is delivered
        self._retire.schedule(now + RETIRE_AFTER)

    def _on_retire(self, now: float, _wall: float) -> None:
        retiring, self.retiring = self.retiring, []
        for link in retiring:
            link.assoc.close(now)
            self.drop(link, now)

    def _retry(self, now: float) -> None:
        """A TCP dial failed or the link was lost: tell the policy; ``tcp`` redials, both
        no sooner than the back-off allows (1 s doubling to 30 s; a handshake resets it)."""
        self.not_before = now + min(TCP_REDIAL_CAP, TCP_REDIAL * 2.0 ** self.failures)
        self.failures += 1
        if self.mode == "tcp":
            self._redial.schedule(self.not_before)
        else:
            self._apply(self.policy.tcp_lost(now), now)

    def _on_redial(self, now: float, _wall: float) -> None:
        wanted = self.mode == "tcp" or self.policy.tcp_active  # (UDP may be back meanwhile)
        if wanted and self.link is None and self.connecting is None:
            self._dial(now)

    def carried(self, link: StreamLink, now: float) -> Peer | None:
        # Any link of ours: a standby or a renewal carries nothing yet (the server sends
        # there only after our SP header), a retiring one delivers what was in flight.
        return self.owners.get(link)

    def on_event(self, link: StreamLink, ev: Event, now: float) -> None:
        peer = self.hooks.peer()
        match ev:
            case HandshakeCompleted() if not self._verified(link, ev, now):
                pass
            case HandshakeCompleted() if link is self.renewal:
                self._renewed(link, ev, now)
            case HandshakeCompleted():
                self.failures = 0
                peer.suite = peer.suite or ev.suite_name
                log.info("peer %s: TLS over TCP up (%s, %s)", peer.name, ev.suite_name,
                         "resumed" if ev.resumed else "full")
                self._apply(self.policy.tcp_established(now), now)
            case PeerUnresponsive(silent_for=silent):
                self.dead_peer(link, silent, now)
            case HeartbeatAnswered():
                if peer.stream is link:
                    peer.rtt = ev.rtt
            case SessionTicketReceived():
                self.hooks.ticket(ev.session)
            case AssociationClosed(handshake=True) if link is not self.renewal:
                if abandoned(link):  # the server went away mid-way: not a refusal
                    log.info("peer %s: TLS handshake over TCP cut off (%s)", peer.name,
                             link.close_reason or ev.reason)
                else:  # (wrong key, unknown CA, ...: README Troubleshooting)
                    self.hooks.failed(ev, now)
            case _:
                pass

    def _verified(self, link: StreamLink, ev: HandshakeCompleted, now: float) -> bool:
        """The [Peer]'s pins hold over TCP too (a resumed session: by the handshake that
        made the ticket)."""
        if ev.resumed or ev.psk_identity or match_peer(self.host.cfg, ev) is not None:
            return True
        log.error("peer %s: server credential over TCP does not match [Peer]",
                  self.hooks.peer().name)
        link.assoc.close(now)
        return False

    def drop(self, link: StreamLink, now: float) -> None:
        carried = self.hooks.peer().stream is link
        super().drop(link, now)
        if self.link is link and carried and link.cause in KEY_LIMITS:
            # The keys were used up (a renewal never came through): a new connection at
            # once, resuming with the ticket; the policy still has TCP carrying.
            self.link = None
            addr = self.link_addr
            log.info("peer %s: dialling TCP again for fresh keys", self.hooks.peer().name)
            if addr is None:
                self._dial(now)
            else:
                self._connect(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, addr, now)
        elif self.link is link:  # lost (a carrier or a standby): the policy decides
            self.link = None
            self._retry(now)
        elif self.renewal is link:  # the renewal failed: the current link carries on
            self.renewal = None
            self._failed(now, renew=True)
        elif link in self.retiring:
            self.retiring.remove(link)

    def _abandon(self, now: float, why: str = "back_to_udp") -> None:
        for sock in (self.connecting, self.renewing):
            if sock is not None:
                self.host.loop.remove(sock.fileno())
                sock.close()
        self.connecting = self.renewing = None
        renewal, self.renewal = self.renewal, None
        retiring, self.retiring = self.retiring, []
        for other in (renewal, *retiring):
            if other is not None:
                other.assoc.close(now)
                self.drop(other, now)
        self._rekey.cancel()
        self.renew_why = None
        link, self.link = self.link, None
        if link is not None:
            peer = self.hooks.peer()
            carried = peer.stream is link
            if carried:
                peer.stream = None
            link.closing(why)
            link.assoc.close(now)
            self.drop(link, now)
            if carried:
                self.host.carrier_changed(peer)  # (after CARRY_UDP: the clamp follows UDP)

    def stop(self, now: float) -> None:
        """The [Peer] went away (reload; a changed [Peer], new key or Endpoint, is removed
        and added again): its TCP link closes, the policy and the back-off start afresh
        (the next ``start`` dials at once)."""
        self._check.cancel()
        self._redial.cancel()
        self.not_before, self.failures = 0.0, 0
        self._abandon(now, "removed")
        peer = self.hooks.peer()
        peer.replay = peer.on_send = None
        self.policy = TransportPolicy(self.policy.settings)

    def teardown(self, now: float) -> None:
        self._check.cancel()
        self._redial.cancel()
        self._retire.cancel()
        self._abandon(now, "shutdown")
        self.resolver.close()
        self.close_all(now)
