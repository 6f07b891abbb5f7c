"""The client role: one [Peer] (the server), dialled by :class:`~.dialer.Dialer`, kept up.

A dial resolves the Endpoint host again (off the loop, ``resolve.py``; the dial timeout
covers the lookup), picks the first address the kernel has a route to (a name with A
and AAAA records whose one family went away), opens a connected UDP port and starts a
``RekeyingClient`` (``dtls/rekey.py``), resuming with the stored ticket when there is
one; the renewals it starts later never resume (fresh ECDHE keys are their point).
The tunnel is down again when the handshake does not complete within
``DIAL_TIMEOUT``, when the association closes, or on ``PeerUnresponsive``; the dialer
then waits its back-off and dials again.  READY=1 goes out at start, as soon as the
interface is configured and the first dial is due (offline start); STATUS= says
"connected to NAME" or "not connected (dialling|handshaking|backing off)".

Tickets: ``SessionTicketReceived`` is stored (``ticketstore.py``) for the next dial; a
ticket that was offered to a dial that timed out, or whose just-resumed session the
server ended, is deleted.  ``Rekeyed`` changes only the status: the TUN device,
routes, counters and applied MTU stay.

Deadlines are two loop Timers: the dialer's (dial timeout or redial) and the
connection's ``get_timer()``, re-armed only after the connection was serviced.

The carrier is ``peer.sock`` (a connected ``UdpPort``): ``_open_carrier`` makes one
towards an address and puts it on the loop, ``_close_socket`` takes it off; a dial
and a roam (``netwatch.py``: the local address or route changed) are the only places
that replace it, so another transport can slot in there.  Roaming: the kernel's
notifications and failed sends run ``_path_check``; a new source with the tunnel up
gets a fresh socket and at once a heartbeat (``probe_path``, the server follows the
connection ID), or, without a CID, a dial at once that resumes with the ticket.

The PMTU ceiling: the connected socket's path MTU (``IP_MTU``) caps the search at the
dial (``pmtu_capped``).  It is read again when a check finds no move (an interface or
route MTU changed, the source did not), after a rebind, and when a send fails with
EMSGSIZE (``_follow_path_mtu``); a new value moves the association's ceiling
(``local_mtu``: a lower one makes the search drop and find it, a higher one resumes a
search that had reached the old ceiling; no redial either way) and the renewals'.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket

from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import Addr, PolicyRouting, Resolvers, TunDevice, UdpPort
from dtlsvpn.daemon.dialer import DIAL_TIMEOUT, DialAction, Dialer, DialState
from dtlsvpn.daemon.fulltunnel import full_families
from dtlsvpn.daemon.netwatch import FAMILY_GRACE, Move, Roamer
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.refusals import Refusals
from dtlsvpn.daemon.resolve import Answer, is_literal
from dtlsvpn.daemon.role import Host, display, peer_event, rekey_grace, send_datagrams
from dtlsvpn.daemon.settings import core_settings, match_peer
from dtlsvpn.daemon.tcpclient import ClientHooks, ClientTcp
from dtlsvpn.daemon.ticketstore import TicketStore, trust_digest
from dtlsvpn.daemon.trust import recheck
from dtlsvpn.daemon.tunmtu import TunnelMtu
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.pmtu_settings import PmtuSettings
from dtlsvpn.dtls.rekey import Rekeyed, RekeyingClient
from dtlsvpn.dtls.session import ClientSession

log = logging.getLogger("dtlsvpn")

RESUMED_RECENTLY = 5.0  # seconds: a resumed session the server ends this soon: bad ticket


def pmtu_capped(conf: DtlsConfig, path_mtu: int | None) -> DtlsConfig:
    """The PMTU search bounded by the connected socket's ``IP_MTU`` (the route's MTU
    towards the server): no probe is sent that the kernel refuses with EMSGSIZE (the
    ``emsgsize`` drop every association showed once).  Left alone when unknown or below
    the search's base (the search finds the PLPMTU from there, as before)."""
    pm = conf.pmtu
    if pm is None or path_mtu is None or path_mtu < pm.base_plpmtu:
        return conf
    return dataclasses.replace(conf, pmtu=dataclasses.replace(pm, local_mtu=path_mtu))


class ClientRole:
    """Dialling, the connection's events and its slow-path output."""

    def __init__(self, host: Host, datapath: Datapath, tunmtu: TunnelMtu,
                 dialer: Dialer) -> None:
        self.host = host
        self.datapath = datapath
        self.tunmtu = tunmtu
        self.dialer = dialer
        self.tickets = TicketStore(host.cfg.interface.ticket_store)
        self.offered_ticket = False
        loop = host.loop
        self._dial_timer = loop.timer(self._on_dial_deadline)
        self.refusals = Refusals()
        self.untrusted = 0  # ended by a reload of the trust (trust.py)
        self.path_mtu: int | None = None  # the ceiling in use: the socket's IP_MTU
        self._pmtu: PmtuSettings | None = None  # the search's settings before that cap
        self._conn_timer = loop.timer(self._on_conn_timer)
        self.roamer = Roamer(loop, host.devices.watch_network(), self._path_check)
        self.resolver = host.devices.resolver(loop)
        datapath.on_send_error = self._send_failed
        iface = host.cfg.interface
        # A /0 in AllowedIPs/Route: full tunnel (fulltunnel.py); our socket is marked.
        self.full = full_families(r for p in host.cfg.peers for r in p.routes)
        self.mark = iface.fwmark if self.full else 0
        self.policy: PolicyRouting | None = None
        self.resolvers: Resolvers | None = None
        # TCP fallback (daemon/transport.py): hooks in start, _established, _lost, teardown.
        self.tcp = ClientTcp(host, datapath, ClientHooks(
            lambda: self.peer, self._tls_config, self.poke, self._probe_udp, self._save_ticket,
            lambda: self.host.ready(self.status_text()),
            lambda ev, now: self.refusals.client_failed(self.peer.name, ev, now, " over TCP"),
            mark=self.mark))

    @property
    def peer(self) -> Peer:
        return self.host.peers.first()

    def setup(self, tun: TunDevice) -> None:
        dp = self.datapath
        dp.client_peer = self.peer
        dp.service = self.service
        self.host.loop.add(tun.fd, dp.client_tun)
        iface, devices = self.host.cfg.interface, self.host.devices
        if self.full:
            self.policy = devices.full_tunnel(tun.name, self.full, mark=self.mark,
                                              table=iface.table, kill_switch=iface.kill_switch)
            self.policy.setup()
        if iface.dns:
            self.resolvers = devices.dns(tun.name, iface.dns, full_tunnel=bool(self.full))
            self.resolvers.apply()

    def start(self, now: float) -> None:
        """Dial; READY=1 at once: the interface is configured and the client dialling,
        whether the server answers or not (a laptop starts offline), and STATUS= says
        which (``status_text``)."""
        self.tcp.start(now)
        if self.host.cfg.interface.transport != "tcp":  # TCP only: no DTLS dial
            self.dialer.start(now)
            self._dial_timer.schedule(self.dialer.deadline)
        self.host.ready(self.status_text())

    def set_dns(self, entries: tuple[str, ...]) -> None:
        """Reload (``ifreload.py``): the old resolvers restored, the new ones set."""
        if self.resolvers is not None:
            self.resolvers.restore()
            self.resolvers = None
        tun = self.datapath.tun
        if entries:
            self.resolvers = self.host.devices.dns(tun.name, entries,
                                                   full_tunnel=bool(self.full))
            self.resolvers.apply()

    def status_text(self) -> str:
        """STATUS=: the daemon's line, then connected or not (and what the dialer does)."""
        peer = self.peer
        line = self.host.status_line()
        if peer.stream is not None:  # the TCP fallback carries (tcpclient.py)
            return f"{line}; connected to {peer.name} over TCP at {peer.stream.name}"
        if self.dialer.state is DialState.UP:
            return f"{line}; connected to {peer.name} at {display(peer.addr)}"
        endpoint = peer.config.endpoint
        where = f" at {endpoint[0]}:{endpoint[1]}" if endpoint else ""
        return f"{line}; not connected ({self.dialer.state.value}) to {peer.name}{where}"

    def listening(self) -> str | None:
        return None

    # --- dialling ---------------------------------------------------------------------

    def _on_dial_deadline(self, now: float, wall: float) -> None:
        action = self.dialer.due(now)
        if action is DialAction.DIAL:
            self._dial(self.peer, now, wall)
        elif action is DialAction.TIMED_OUT:
            self._timed_out(self.peer, now)
        self._dial_timer.schedule(self.dialer.deadline)

    def _timed_out(self, peer: Peer, now: float) -> None:
        conn = peer.conn
        if conn is None and self.resolver.pending:
            self.resolver.cancel()
            assert peer.config.endpoint is not None
            self._lost(peer, now, f"no answer for {peer.config.endpoint[0]} within "
                       f"{DIAL_TIMEOUT:g}s")
            return
        if conn is None or conn.is_established:
            return
        log.warning("peer %s: no handshake within %gs", peer.name, DIAL_TIMEOUT)
        conn.close(now)
        self._flush(peer, conn, now)
        self.refusals.timed_out(peer.name, conn.pop_events(), now)  # ops: what we waited for
        if self.offered_ticket:
            self.tickets.forget(self._ticket_key(peer))
        self._lost(peer, now, "handshake timed out")

    def _lost(self, peer: Peer, now: float, reason: str) -> None:
        peer.established = False
        self.tcp.udp_lost(now)
        delay = self.dialer.lost(now)
        self._dial_timer.schedule(self.dialer.deadline)
        if delay is not None:
            log.info("peer %s: %s; redialling in %.1fs", peer.name, reason, delay)
        self.host.notifier.status(self.status_text())

    def _close_socket(self, peer: Peer) -> None:
        if peer.sock is not None:
            self.host.loop.remove(peer.sock.fileno())
            peer.sock.close()
            peer.sock = None

    def _dial(self, peer: Peer, now: float, wall: float) -> None:
        """Look the Endpoint up again; ``_resolved`` goes on with the answer."""
        assert peer.config.endpoint is not None
        name, port = peer.config.endpoint
        self._close_socket(peer)
        peer.assoc = None
        peer.conn = None
        self._conn_timer.cancel()
        self.dialer.dialled(now)  # the dial timeout covers the lookup and the handshake
        self.resolver.resolve(name, port, self._resolved)

    def _resolved(self, answer: Answer, now: float) -> None:
        peer = self.peer
        if self.dialer.state is not DialState.HANDSHAKING or peer.conn is not None:
            return
        host = self.host
        assert peer.config.endpoint is not None
        name, port = peer.config.endpoint
        try:
            if isinstance(answer, OSError):
                raise answer
            family, addr = self._pick(answer)
            sock = self._open_carrier(peer, family, addr)
        except OSError as exc:  # gaierror included
            peer.last_error = str(exc)
            self._lost(peer, now, f"cannot reach {name}: {exc}")
            return
        path_mtu = self.path_mtu = sock.path_mtu()
        if self.tunmtu.policy == "auto" and peer.inner_mtu is None:
            self.tunmtu.refine(family, path_mtu)
        wall = host.loop.wall
        conf = self._dtls_config(peer, wall)
        self._pmtu = conf.pmtu
        conn = RekeyingClient(pmtu_capped(conf, path_mtu),
                              grace=rekey_grace(host.cfg.interface.rekey_interval),
                              ip_header=40 if family == socket.AF_INET6 else 20,  # PLPMTU
                              peer=f"{name}:{port}".encode())
        peer.conn = conn
        peer.assoc = conn.current
        conn.connect(now, wall)
        self._flush(peer, conn, now)
        self._conn_timer.schedule(conn.get_timer())

    def _pick(self, answer: list[tuple[socket.AddressFamily, Addr]]
              ) -> tuple[socket.AddressFamily, Addr]:
        """The first address the kernel has a route to (else the first): of a name with
        A and AAAA records, the family that is there now."""
        route = self.host.devices.route_source
        for family, addr in answer:
            if route(addr[0], self.mark) is not None:
                return family, addr
        return answer[0]

    def _open_carrier(self, peer: Peer, family: socket.AddressFamily, addr: Addr) -> UdpPort:
        """A connected socket towards ``addr`` on the route the kernel picks now, on the
        loop as ``peer.sock`` (the old one, if any, closed first)."""
        host = self.host
        sock = host.devices.open_udp(family, connect=addr,
                                     offload=host.cfg.interface.udp_offload,
                                     counters=self.datapath.udp, mark=self.mark)
        self._close_socket(peer)
        peer.sock = sock
        peer.addr = addr
        host.loop.add(sock.fileno(), self.datapath.client_udp)
        self.roamer.watch.dialled(host.devices.route_source(addr[0], self.mark))
        return sock

    # --- roaming (netwatch.py) --------------------------------------------------------

    def _send_failed(self, peer: Peer, exc: OSError, now: float) -> None:
        if exc.errno == errno.EMSGSIZE:
            self._follow_path_mtu(peer, now)
        else:
            self.roamer.send_failed(exc, now)

    def _follow_path_mtu(self, peer: Peer, now: float, *, new_path: bool = False) -> None:
        """The connected socket's path MTU again: a change moves the association's PMTU
        ceiling (``local_mtu``: a lower MTU makes the search drop and find it; a higher
        one resumes a search that had reached the old ceiling, confirmed by probes) and
        the renewals'.  ``new_path`` (a rebind): passed on even when the MTU is the same,
        so that what was learnt of the old path (ICMP hints, lost probes) is dropped."""
        conn, sock = peer.conn, peer.sock
        if conn is None or sock is None:
            return
        mtu = sock.path_mtu()
        if mtu is None or (mtu == self.path_mtu and not new_path):
            return
        if mtu != self.path_mtu:
            log.info("peer %s: path MTU towards the server %s -> %d", peer.name,
                     self.path_mtu or "unknown", mtu)
        self.path_mtu = mtu
        conn.config = pmtu_capped(dataclasses.replace(conn.config, pmtu=self._pmtu), mtu)
        for assoc in (conn.current, conn.pending):
            if assoc is not None:
                assoc.local_mtu(mtu, now, new_path=new_path)
        self.poke(peer, now)

    def _path_check(self, now: float) -> None:
        """The kernel said the network changed (or a send failed): where do we stand?"""
        peer = self.peer
        if peer.addr is None or self.dialer.state is DialState.DOWN:
            if self.dialer.state is DialState.BACKING_OFF:
                self._redial_now(peer, now, "the network changed")
            return
        route = self.host.devices.route_source(peer.addr[0], self.mark)
        bound = peer.sock.local_host() if peer.sock is not None else None
        up = self.dialer.state is DialState.UP
        move = self.roamer.watch.decide(route, bound, up)
        if move is Move.WAIT:
            self._no_route(peer, up, now)
        elif move is Move.REBIND:
            self._roam(peer, bound, route, now)
        elif move is Move.REDIAL:
            self._redial_now(peer, now, f"the route to the server changed (source {route})")
        else:  # (STAY: maybe an interface or route MTU changed)
            self._follow_path_mtu(peer, now)

    def _no_route(self, peer: Peer, up: bool, now: float) -> None:
        """No route to the server's address.  A literal: wait for the network.  A name
        (maybe with an address of the other family, if this one went away): look it up
        again, at once when not up, else when the route is still missing a moment later
        (an address change passes through "no route" for some milliseconds)."""
        log.debug("peer %s: no route to %s for now", peer.name, display(peer.addr))
        endpoint = peer.config.endpoint
        if endpoint is None or is_literal(endpoint[0]):
            return
        if up and self.roamer.watch.waits < 2:
            self.roamer.recheck(now + FAMILY_GRACE)
            return
        self._redial_now(peer, now, f"no route to {display(peer.addr)}; looking "
                         f"{endpoint[0]} up again")

    def _roam(self, peer: Peer, old: str | None, new: str | None, now: float) -> None:
        conn = peer.conn
        assert peer.addr is not None and conn is not None
        try:
            sock = self._open_carrier(peer, peer.sock.family if peer.sock else socket.AF_INET,
                                      peer.addr)
        except OSError as exc:
            log.warning("peer %s: cannot open a socket on the new route: %s", peer.name, exc)
            return
        peer.roams += 1
        if conn.probe_path(now):
            log.info("peer %s: local address %s -> %s; heartbeat from the new socket, the "
                     "server follows the connection ID", peer.name, old, sock.local_host())
            self._flush(peer, conn, now)
            self._conn_timer.bring_forward(conn.get_timer())
            self._follow_path_mtu(peer, now, new_path=True)  # (the new route's MTU)
            return
        log.info("peer %s: local address %s -> %s; no connection ID to follow, resuming "
                 "at once", peer.name, old, new)
        self._redial_now(peer, now, None)

    def _redial_now(self, peer: Peer, now: float, reason: str | None) -> None:
        if reason:
            log.info("peer %s: %s; dialling now", peer.name, reason)
        self.dialer.redial_now(now)
        self._dial_timer.schedule(self.dialer.deadline)

    # --- TCP fallback hooks (tcpclient.py) --------------------------------------------

    def _probe_udp(self, now: float) -> None:
        """While TCP carries: a fresh DTLS dial now, not after the back-off."""
        if self.dialer.state is not DialState.UP:
            self._redial_now(self.peer, now, None)

    def _tls_config(self) -> DtlsConfig:
        """The TLS dial's settings: the stored ticket offered (resumes across transports)."""
        peer = self.peer
        conf = core_settings(self.host.cfg, peer.config)
        session = self.tickets.load(self._ticket_key(peer), self.host.loop.wall,
                                    trust_digest(conf))
        return conf if session is None else dataclasses.replace(conf, resume_session=session)

    def _save_ticket(self, session: ClientSession) -> None:
        trust = trust_digest(core_settings(self.host.cfg, self.peer.config))
        try:
            self.tickets.save(self._ticket_key(self.peer), session, trust)
        except OSError as exc:
            log.warning("cannot store ticket: %s", exc)

    def _ticket_key(self, peer: Peer) -> str:
        endpoint = peer.config.endpoint
        return f"{peer.name}-{endpoint[0]}-{endpoint[1]}" if endpoint else peer.name

    def _dtls_config(self, peer: Peer, wall: float) -> DtlsConfig:
        conf = core_settings(self.host.cfg, peer.config)
        self.offered_ticket = False
        session = self.tickets.load(self._ticket_key(peer), wall, trust_digest(conf))
        if session is not None:
            conf = dataclasses.replace(conf, resume_session=session)
            self.offered_ticket = True
        return conf

    # --- the connection -------------------------------------------------------------

    def _on_conn_timer(self, now: float, wall: float) -> None:
        conn = self.peer.conn
        due = conn.get_timer() if conn is not None else None
        if conn is not None and due is not None and now >= due:
            conn.handle_timer(now, wall)  # retransmissions, heartbeats, renewals
        self.service(now, wall)

    def service(self, now: float, wall: float) -> None:
        """The connection's events and output; then its timer (deferred by the data path)."""
        peer = self.peer
        conn = peer.conn
        if conn is None:
            return
        events = conn.pop_events()
        while events:  # (handling one may queue more: a close, its AssociationClosed)
            for ev in events:
                self._on_event(peer, conn, ev, now, wall)
            events = conn.pop_events()
        self._flush(peer, conn, now)
        if peer.conn is not None:
            self._conn_timer.bring_forward(peer.conn.get_timer())

    def poke(self, peer: Peer, now: float) -> None:
        """The connection was fed outside the data path (a kernel hint)."""
        self.host.loop.defer(self.service)

    def _flush(self, peer: Peer, conn: RekeyingClient | Association, now: float) -> None:
        out = conn.datagrams_to_send(now)
        if out and peer.sock is not None:
            send_datagrams(self.host, peer.sock, out, None, peer, now, self._send_failed)

    def _on_event(self, peer: Peer, conn: RekeyingClient, ev: Event | Rekeyed, now: float,
                  wall: float) -> None:
        assoc = conn.current
        match ev:
            case HandshakeCompleted():
                self._established(peer, assoc, ev, now, wall)
            case AssociationClosed(reason=reason, local=local):
                if ev.handshake:  # ops: failed handshakes counted and said (refusals.py)
                    self.refusals.client_failed(peer.name, ev, now)
                self._closed(peer, assoc, reason, local, now)
            case Rekeyed():
                self._rekeyed(peer, conn, ev, now, wall)
            case PeerUnresponsive():
                log.warning("peer %s unresponsive", peer.name)
                if not assoc.is_closed:
                    conn.close(now)
                    self._flush(peer, conn, now)
                self._closed(peer, assoc, "PeerUnresponsive", True, now)
            case SessionTicketReceived():
                self._save_ticket(ev.session)
            case _:
                peer_event(self.host, peer, assoc, peer.addr, ev, now)

    def _established(self, peer: Peer, assoc: Association, ev: HandshakeCompleted,
                     now: float, wall: float) -> None:
        # A resumed session was authenticated by the full handshake that made the ticket.
        if not ev.resumed and match_peer(self.host.cfg, ev) is None and not ev.psk_identity:
            log.error("server credential does not match [Peer] %s", peer.name)
            assoc.close(now)
            return
        if assoc.config.ca_certs != self.host.cfg.credentials.ca_certs:  # a trust reload
            alert = recheck(core_settings(self.host.cfg, peer.config), ev, wall)
            if alert is not None:  # (since the dial began)
                log.error("peer %s: the server's certificate fails the reloaded trust (%s)",
                          peer.name, alert)
                self.untrusted += 1
                assoc.abort(alert)
                return
        peer.assoc = assoc
        peer.note_handshake(ev, wall, renewal=False)
        self.host.set_underlay(peer, peer.addr)
        log.info("peer %s: handshake with %s done (%s, %s)", peer.name, display(peer.addr),
                 ev.suite_name, "resumed" if ev.resumed else "full")
        self.dialer.established(now)
        self._dial_timer.cancel()
        self.host.notifier.status(self.status_text())
        self.tcp.udp_up(now)

    def _rekeyed(self, peer: Peer, conn: RekeyingClient, ev: Rekeyed, now: float,
                 wall: float) -> None:
        """A renewal completed and carries the traffic now; the old association still opens
        records for the grace period (inside ``conn``).  Only the status changes."""
        assoc = conn.current
        result = assoc.handshake_result
        peer.assoc = assoc
        if result is None or (match_peer(self.host.cfg, result) is None
                              and not result.psk_identity):
            # The core checked the chain; the [Peer]'s pins must hold for every handshake.
            log.error("peer %s: server credential on key renewal does not match [Peer]",
                      peer.name)
            conn.close(now)  # AssociationClosed follows: redial
            return
        peer.note_handshake(result, wall, renewal=True)
        peer.generation = ev.generation  # (the same count, as RekeyingClient keeps it)
        log.info("peer %s: keys renewed with %s (generation %d, %s)", peer.name,
                 display(peer.addr), peer.generation, result.suite_name)

    def _closed(self, peer: Peer, assoc: Association, reason: str, local: bool,
                now: float) -> None:
        if peer.assoc is not assoc:
            return
        log.info("peer %s: association closed (%s)", peer.name, reason)
        peer.note_down(reason)
        if self.dialer.state not in (DialState.HANDSHAKING, DialState.UP):
            return  # (PeerUnresponsive, then its AssociationClosed)
        if (peer.resumed and peer.handshake_wall is not None and not local
                and self.host.loop.wall - peer.handshake_wall < RESUMED_RECENTLY):
            # The server ended a just-resumed session: don't offer that ticket again.
            self.tickets.forget(self._ticket_key(peer))
        self._lost(peer, now, reason)

    # --- reload, teardown, status -------------------------------------------------------

    def add_peer(self, peer: Peer, now: float) -> None:
        self.datapath.router.single = peer
        self.datapath.client_peer = peer
        self.tcp.start(now)
        if self.host.cfg.interface.transport != "tcp":
            self.dialer.start(now)
            self._dial_timer.schedule(self.dialer.deadline)

    def remove_peer(self, peer: Peer, now: float) -> None:
        if peer.conn is not None:
            peer.conn.close(now)
            self._flush(peer, peer.conn, now)
        self._close_socket(peer)
        self._conn_timer.cancel()
        self.tcp.stop(now)  # its TCP link too

    def reloaded(self, now: float, trust: bool) -> None:
        """The renewals use the reloaded credentials (the next dial reads them anyway).
        When the trust changed, a server that no longer validates ends the association
        with the alert, and the redial is judged by the new trust (``trust.py``)."""
        peer, conn = self.peer, self.peer.conn
        conf = core_settings(self.host.cfg, peer.config)
        ended = self.tcp.recheck(conf, now) if trust else []
        if conn is not None:
            self._pmtu = conf.pmtu
            conn.config = pmtu_capped(conf, self.path_mtu)
            alert = (recheck(conf, conn.current.handshake_result, self.host.loop.wall)
                     if trust and conn.is_established and not conn.is_closed else None)
            if alert is not None:
                ended.append((peer.name, alert))
                conn.current.abort(alert)
                conn.close(now)  # (a renewal under way, the old keys)
                self.service(now, self.host.loop.wall)
        for who, why in ended:
            log.error("peer %s: the server's certificate no longer validates after the "
                      "reload (%s): association closed", who, why)
        self.untrusted += len(ended)

    def teardown(self, now: float) -> None:
        peer = self.peer
        self.roamer.close()
        self.resolver.close()
        self.tcp.teardown(now)
        self.remove_peer(peer, now)
        if self.resolvers is not None:
            self.resolvers.restore()
        if self.policy is not None:
            self.policy.teardown()
        self.dialer.stop()
        self._dial_timer.cancel()

    def rekeying(self, peer: Peer) -> bool:
        """A renewal is under way: its handshake runs, or old keys are still accepted."""
        conn = peer.conn
        return conn is not None and (conn.pending is not None or conn.previous is not None)
