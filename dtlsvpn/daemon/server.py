"""The server role: one ``ServerEndpoint`` on the listening port, associations bound to peers.

Each association is bound to its [Peer] when its handshake completes: ``match_peer``
names the peer, ``binding.authenticated`` says whether this is a renewal
(make-before-break: the old association stays the peer's ``previous``), a
replacement (the peer's other associations close) or nobody (closed, counted
``unknown_peer``).  RFC 9146 moves follow ``PeerAddressChanged``; a renewal's old
association is forgotten once the endpoint retired it (``rekey_grace`` after the
client switched to the new keys).  READY=1 goes out once the port is bound.

Deadlines are loop Timers: one per association the endpoint holds at an address,
re-armed with its ``get_timer()`` whenever it was serviced (after a receive batch that
took the slow path, or its own timer: data alone never gets here), and one for the
next retirement of old keys.  A renewal's previous
association gets no timer (it only opens records in flight), as before.

Ticket keys live in ``TicketStore/ticket.keys`` so that a restarted server still
resumes its clients; they are saved after a handshake when they rotated.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from functools import partial

from dtlsvpn.config import Config
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon import binding
from dtlsvpn.daemon.binding import Ending, Verdict
from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import Addr, Platform, TunDevice, UdpPort
from dtlsvpn.daemon.fleet import SharedTicketKeys
from dtlsvpn.daemon.loop import Timer
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.refusals import Refusals, explain, unknown_peer
from dtlsvpn.daemon.role import Host, display, peer_event, rekey_grace, send_datagrams
from dtlsvpn.daemon.settings import core_settings, match_peer
from dtlsvpn.daemon.startup import StartupError, describe_listen
from dtlsvpn.daemon.transport import ServerTcp
from dtlsvpn.daemon.trust import recheck
from dtlsvpn.daemon.udp import family_of
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    PeerAddressChanged,
    PeerUnresponsive,
)
from dtlsvpn.errors import Alert

log = logging.getLogger("dtlsvpn")

RETIRE_RETRY = 0.1  # seconds: look again when the endpoint had not retired old keys yet
MIN_ASSOCIATIONS = 1024  # the endpoint's table, at least (half-open ones count too)
HALF_OPEN_HEADROOM = 256


def association_limit(peers: int) -> int:
    """The endpoint's table size: every configured peer twice (a renewal holds its old and
    new association) plus room for handshakes in progress, and never below 1024."""
    return max(MIN_ASSOCIATIONS, 2 * peers + HALF_OPEN_HEADROOM)


@dataclass(slots=True)
class Listeners:
    """The server's sockets, bound before the TUN exists (a start that fails on its
    port touches no interface, ``daemon.py``); ``take`` hands them to the role, and
    ``close`` closes what it did not take."""

    udp: UdpPort | None = None
    tcp: socket.socket | None = None

    def take(self) -> tuple[UdpPort | None, socket.socket | None]:
        out = self.udp, self.tcp
        self.udp = self.tcp = None
        return out

    def close(self) -> None:
        udp, tcp = self.take()
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()


def bind_listeners(cfg: Config, devices: Platform) -> Listeners:
    """The UDP port bound to ListenAddress (not with ``Transport = tcp``) and the TCP
    fallback's listener (not with ``udp``); StartupError names the port and the config
    line.  A TCP listener that fails beside UDP is logged (no fallback for clients), not
    fatal; with ``Transport = tcp`` it is the only way in, so it is."""
    iface = cfg.interface
    assert iface.listen is not None
    out = Listeners()
    if iface.transport != "tcp":
        try:
            out.udp = devices.open_udp(family_of(iface.listen[0]), bind=iface.listen,
                                       offload=iface.udp_offload)
        except OSError as exc:
            raise StartupError(describe_listen(exc, cfg)) from exc
    if iface.transport != "udp":
        try:
            out.tcp = devices.tcp_listener((iface.listen[0], iface.tcp_port or iface.listen[1]))
        except OSError as exc:
            if iface.transport == "tcp":
                raise StartupError(describe_listen(exc, cfg, tcp=True)) from exc
            log.error("%s: no TCP fallback for clients", describe_listen(exc, cfg, tcp=True))
    return out


class ServerRole:
    """The endpoint, its associations' timers and events, and peer binding."""

    def __init__(self, host: Host, datapath: Datapath) -> None:
        self.host = host
        self.datapath = datapath
        self.refusals = Refusals()  # refused handshakes: counted, logged (refusals.py)
        self.sock: UdpPort | None = None
        self.endpoint: ServerEndpoint | None = None
        self._timers: dict[Association, Timer] = {}
        self._retire_timer = host.loop.timer(self._on_retire_due)
        self._retire_at: dict[Peer, float] = {}  # renewals whose client switched keys
        self.ticket_keys: SharedTicketKeys | None = None  # daemon/fleet.py
        self.untrusted = 0  # ended by a reload of the trust (trust.py)
        self.tcp = ServerTcp(host, datapath, self._dtls_config,  # TCP fallback (transport.py)
                             self.refusals)

    def setup(self, tun: TunDevice, listeners: Listeners) -> None:
        """Serve on the sockets ``bind_listeners`` opened before the TUN existed."""
        host, dp = self.host, self.datapath
        iface = host.cfg.interface
        self.sock, lsock = listeners.take()
        if self.sock is not None:  # (none with Transport = tcp: TLS over TCP only)
            self.sock.counters = dp.udp  # (the interface's GSO/GRO counters)
            host.loop.add(self.sock.fileno(), dp.server_udp)
        self.endpoint = ServerEndpoint(self._dtls_config(),
                                       rekey_grace=rekey_grace(iface.rekey_interval),
                                       max_associations=association_limit(len(host.cfg.peers)))
        dp.sock = self.sock
        dp.endpoint = self.endpoint
        dp.bind = self._bind
        dp.service = self.service
        host.loop.add(tun.fd, dp.server_tun)
        if lsock is not None:
            self.tcp.setup(lsock)  # TCP fallback: the same port number unless TCPPort

    def start(self, now: float) -> None:
        if self.ticket_keys is not None:
            self.ticket_keys.start(now, self.host.loop.wall)
        self.host.ready(f"listening on {self.listening()}")

    def status_text(self) -> str:
        """STATUS=: the daemon's line (peers up, MTU)."""
        return self.host.status_line()

    def listening(self) -> str | None:
        iface = self.host.cfg.interface
        where = display(iface.listen)
        return f"{where} (TCP only)" if iface.transport == "tcp" and where else where

    def _dtls_config(self) -> DtlsConfig:
        return core_settings(self.host.cfg, ticket_keys=self._ticket_ring())

    # --- servicing associations ---------------------------------------------------------

    def service(self, now: float, wall: float) -> None:
        """Associations the data path fed this iteration (deferred by it)."""
        dp = self.datapath
        touched, dp.touched = dp.touched, {}
        closed: list[Association] = []
        for assoc, addr in touched.items():
            self._service(addr, assoc, now)
            if assoc.is_closed:
                closed.append(assoc)
        if closed:
            assert self.endpoint is not None
            self.endpoint.forget_closed(closed)  # (no walk over every association)

    def poke(self, peer: Peer, now: float) -> None:
        """The peer's association was fed outside the data path (a kernel hint)."""
        if peer.assoc is not None and peer.addr is not None:
            self.datapath.touched[peer.assoc] = peer.addr
            self.host.loop.defer(self.service)

    def _service(self, addr: Addr | None, assoc: Association, now: float) -> None:
        peer = self.host.peers.owner(assoc)
        events = assoc.pop_events()
        while events:  # (handling one may queue more: a close, its AssociationClosed)
            for ev in events:
                peer = self._on_event(addr, assoc, ev, now, peer)
            events = assoc.pop_events()
        self._flush(addr, assoc, now, peer)
        self._arm(assoc, addr)
        if peer is not None and peer.previous is not None:
            self._note_renewal_progress(peer, now)

    def _arm(self, assoc: Association, addr: Addr | None) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        timer = self._timers.get(assoc)
        if assoc.is_closed or addr is None or endpoint.associations.get(addr) is not assoc:
            if timer is not None:  # closed, forgotten, or a renewal's previous one
                timer.cancel()
                del self._timers[assoc]
            return
        if timer is None:
            timer = self._timers[assoc] = self.host.loop.timer(partial(self._on_timer, assoc))
        # Exactly, not bring_forward: only the slow path is serviced here (never data
        # alone), and its deadline moves later once per keepalive exchange (the answer
        # came, the retransmission timer is off): one heap push is cheaper than the early
        # wake-up that would find nothing due.
        timer.schedule(assoc.get_timer())

    def _on_timer(self, assoc: Association, now: float, wall: float) -> None:
        assert self.endpoint is not None
        addr = self.endpoint.address_of(assoc)
        due = assoc.get_timer()
        # (It may fire early, see Timer.bring_forward; one the endpoint forgot or that a
        # renewal replaced is not run: _service then drops its timer.)
        if (addr is not None and self.endpoint.associations.get(addr) is assoc
                and due is not None and now >= due):
            assoc.handle_timer(now)
        self._service(addr, assoc, now)
        if assoc.is_closed:
            self.endpoint.forget_closed((assoc,))

    def _note_renewal_progress(self, peer: Peer, now: float) -> None:
        """The endpoint starts the old keys' grace once the client used the new ones."""
        assert self.endpoint is not None and peer.assoc is not None
        if peer not in self._retire_at and peer.assoc.peer_switched:
            self._retire_at[peer] = now + self.endpoint.rekey_grace
            self._retire_timer.schedule(min(self._retire_at.values()))

    def _on_retire_due(self, now: float, wall: float) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        endpoint.retire_old_keys(now)  # (association timers are ours: _on_timer)
        peers = self.host.peers
        for peer in peers.renewing():
            prev = peer.previous
            assert prev is not None
            if binding.retired(prev, endpoint.address_of(prev)):
                prev.pop_events()  # its AssociationClosed: the peer is still up
                log.debug("peer %s: old keys retired", peer.name)
                peers.retire(peer)
        for peer, when in list(self._retire_at.items()):
            if peer.previous is None:
                del self._retire_at[peer]
            elif when <= now:  # the endpoint's own deadline is not quite there: retry
                self._retire_at[peer] = now + RETIRE_RETRY
        self._retire_timer.schedule(min(self._retire_at.values(), default=None))

    def _flush(self, addr: Addr | None, assoc: Association, now: float,
               peer: Peer | None) -> None:
        out = assoc.datagrams_to_send(now)
        if out and addr is not None and self.sock is not None:
            send_datagrams(self.host, self.sock, out, addr, peer, now)
        challenge = assoc.take_path_challenge()  # to the candidate address alone
        if challenge is not None and self.sock is not None:
            to = challenge[1]
            assert isinstance(to, tuple)
            send_datagrams(self.host, self.sock, [challenge[0]], to, peer, now)

    def _bind(self, addr: Addr, assoc: Association, now: float) -> Peer | None:
        """Data path hook: service a just-completed association so it gets its peer."""
        self._service(addr, assoc, now)
        return self.host.peers.owner(assoc)

    # --- events -------------------------------------------------------------------------

    def _on_event(self, addr: Addr | None, assoc: Association, ev: Event, now: float,
                  peer: Peer | None) -> Peer | None:
        match ev:
            case HandshakeCompleted():
                return self._established(addr, assoc, ev, now)
            case AssociationClosed(reason=reason):
                if ev.handshake and peer is None:
                    self._refused(addr, ev, now)
                self._closed(assoc, reason, peer)
            case PeerUnresponsive():
                why = "PeerUnresponsive"
                if peer is not None and peer.stream is not None:  # TCP carries: expected
                    why = "silent since the move to TCP"
                    log.info("peer %s: DTLS association %s: closed", peer.name, why)
                else:
                    log.warning("peer %s unresponsive", peer.name if peer else display(addr))
                if not assoc.is_closed:
                    assoc.close(now)
                    self._flush(addr, assoc, now, peer)
                self._closed(assoc, why, peer)
            case PeerAddressChanged() if peer is not None:
                self._moved(peer, assoc, ev, now)
            case _:
                peer_event(self.host, peer, assoc, addr, ev, now)
        return peer

    def _established(self, addr: Addr | None, assoc: Association, ev: HandshakeCompleted,
                     now: float) -> Peer | None:
        host = self.host
        endpoint = self.endpoint
        assert endpoint is not None
        peer_cfg = match_peer(host.cfg, ev)
        if assoc.config.ca_certs != endpoint.config.ca_certs:  # begun before a trust reload
            alert = recheck(endpoint.config, ev, host.loop.wall)
            if alert is not None:
                log.warning("%s: handshake begun before the reload of the trust: %s",
                            display(addr), alert)
                self.untrusted += 1
                assoc.abort(alert)
                return None
        peer = host.peers.get(peer_cfg.name) if peer_cfg is not None else None
        current = peer.assoc if peer is not None else None
        decision = binding.authenticated(
            assoc, addr, matched=peer is not None, resumed=ev.resumed, current=current,
            previous=peer.previous if peer is not None else None,
            current_addr=endpoint.address_of(current) if current is not None else None,
            newest_at_addr=endpoint.associations.get(addr) if addr is not None else None)
        if decision.verdict is Verdict.REJECT or peer is None or addr is None:
            self._refused(addr, unknown_peer(ev, matched=peer is not None), now)
            self.datapath.drop("unknown_peer")
            assoc.close(now)
            return None
        for stale in decision.close:
            stale.close(now)  # the peer came back (new address or association)
            self._flush(peer.addr, stale, now, peer)
        if decision.close:
            endpoint.forget_closed(decision.close)
        renewal = decision.verdict is Verdict.RENEWAL
        self._retire_at.pop(peer, None)
        host.peers.bind(peer, assoc, addr, renewal=renewal)
        peer.note_handshake(ev, host.loop.wall, renewal=renewal)
        if renewal:
            log.info("peer %s: keys renewed with %s (generation %d, %s)", peer.name,
                     display(addr), peer.generation, ev.suite_name)
        else:
            host.set_underlay(peer, addr)
            self._cap_search(assoc, addr, now)
            log.info("peer %s: handshake with %s done (%s, %s)", peer.name, display(addr),
                     ev.suite_name, "resumed" if ev.resumed else "full")
        self._save_ticket_keys(host.loop.wall)
        host.notifier.status(host.status_line())
        return peer

    def _refused(self, addr: Addr | None, ev: AssociationClosed, now: float) -> None:
        """A handshake that failed or matched no [Peer]: counted, logged (refusals.py)."""
        message = explain(ev, server=True)
        who = ev.peer_identity
        where = f"{display(addr)} ({who})" if who and who not in message else display(addr)
        self.refusals.note(ev.failure or "closed", addr[0] if addr else "?", str(where),
                           message, now)

    def _moved(self, peer: Peer, assoc: Association, ev: PeerAddressChanged,
               now: float) -> None:
        """RFC 9146 §6: the peer moved (the core follows it by connection ID)."""
        new_addr = binding.moved(assoc, ev.new, current=peer.assoc)
        if new_addr is None:
            return
        log.info("peer %s: moved from %s to %s", peer.name, display(peer.addr),
                 display(new_addr))
        self.host.peers.move(peer, new_addr)
        self.host.set_underlay(peer, new_addr)
        if peer.assoc is not None:
            self._cap_search(peer.assoc, new_addr, now, new_path=True)

    def _cap_search(self, assoc: Association, addr: Addr, now: float, *,
                    new_path: bool = False) -> None:
        """The PMTU search bounded by the kernel's path MTU towards the peer, as a
        client's is by its connected socket: the listening socket is unconnected, so
        without it the first probe above the interface MTU was refused (EMSGSIZE, one
        ``emsgsize`` drop per association).  On an RFC 9146 move the ceiling follows the
        new path both ways and what was learnt of the old one is dropped (``local_mtu``)."""
        mtu = self.host.devices.path_mtu_to(addr)
        if mtu is not None:
            assoc.local_mtu(mtu, now, new_path=new_path)

    def _closed(self, assoc: Association, reason: str, peer: Peer | None) -> None:
        if peer is None:
            return
        ending = binding.closed(assoc, current=peer.assoc, previous=peer.previous)
        if ending is Ending.OLD_KEYS_RETIRED:
            self.host.peers.retire(peer)  # a renewal's old association: the peer is still up
            self._retire_at.pop(peer, None)
        elif ending is Ending.PEER_DOWN:
            log.info("peer %s: association closed (%s)", peer.name, reason)
            peer.note_down(reason)
            self.host.peers.release(peer)
            self._retire_at.pop(peer, None)
            self.host.notifier.status(self.host.status_line())

    # --- reload, teardown, status -------------------------------------------------------

    def add_peer(self, peer: Peer, now: float) -> None:
        pass

    def remove_peer(self, peer: Peer, now: float) -> None:
        closed = []
        for assoc in (peer.assoc, peer.previous):
            if assoc is not None and not assoc.is_closed:
                assoc.close(now)
                self._flush(peer.addr, assoc, now, peer)
                closed.append(assoc)
        if closed and self.endpoint is not None:
            self.endpoint.forget_closed(closed)
        self._retire_at.pop(peer, None)
        self.tcp.close_peer(peer, now)  # its TCP link too

    def reloaded(self, now: float, trust: bool) -> None:
        """The next handshakes use the reloaded configuration (credentials included; a
        ticket resumes only under the CA it was issued under: its binding names it).  When
        the trust changed, the associations and TCP links whose client no longer validates
        end with the alert (``trust.py``); the others are untouched."""
        if self.endpoint is None:
            return
        self.endpoint.config = conf = self._dtls_config()
        self.endpoint.max_associations = association_limit(len(self.host.cfg.peers))
        if not trust:
            return
        ended: list[tuple[str, Alert]] = []
        for peer in list(self.host.peers):
            for assoc in (peer.previous, peer.assoc):  # (the old keys first: the peer stays)
                alert = None if assoc is None or assoc.is_closed else recheck(
                    conf, assoc.handshake_result, self.host.loop.wall)
                if assoc is None or alert is None:
                    continue
                if assoc is peer.assoc:
                    ended.append((peer.name, alert))
                assoc.abort(alert)
                self._service(self.endpoint.address_of(assoc), assoc, now)
                self.endpoint.forget_closed((assoc,))
        ended += self.tcp.recheck(conf, now)
        for who, alert in ended:
            log.warning("peer %s: its certificate no longer validates after the reload "
                        "(%s): association closed", who, alert)
        self.untrusted += len(ended)

    def teardown(self, now: float) -> None:
        for peer in self.host.peers:
            assoc = peer.assoc
            if assoc is not None and not assoc.is_closed:
                assoc.close(now)
                self._flush(peer.addr, assoc, now, peer)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._retire_timer.cancel()
        if self.ticket_keys is not None:
            self.ticket_keys.stop()
        self.tcp.teardown(now)
        if self.sock is not None:
            self.host.loop.remove(self.sock.fileno())
            self.sock.close()

    def rekeying(self, peer: Peer) -> bool:
        """Old keys are still accepted (a renewal is under way)."""
        return peer.previous is not None

    # --- ticket keys ---------------------------------------------------------------------

    def _ticket_ring(self) -> TicketKeyRing:
        """The server's ticket keys: TicketKeyFile (default TicketStore/ticket.keys), written
        here or, in a fleet, read from the one writer (daemon/fleet.py)."""
        if self.ticket_keys is None:
            self.ticket_keys = SharedTicketKeys(self.host.cfg.interface, self.host.loop)
        return self.ticket_keys.ring

    def _save_ticket_keys(self, wall: float) -> None:
        if self.ticket_keys is not None:
            self.ticket_keys.maintain(wall)
