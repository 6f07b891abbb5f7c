"""The daemon: configuration → objects → file descriptors, then the loop, then teardown.

Start-up order: TUN device, its MTU, addresses and routes (pyroute2, before the loop),
the router with every peer's allowed prefixes, the UDP socket (server: bound to
ListenAddress; client: dialled, see below), the status socket, then the loop.
READY=1 goes out when a server listens and when a client's first handshake completes
(the tunnel can pass traffic).  SIGTERM/SIGINT stop the loop; teardown sends
close_notify to every peer, removes routes and addresses, closes the TUN descriptor
(the interface disappears with it) and removes the status socket.  SIGHUP reloads.

Client: dial = resolve the Endpoint host again (every attempt), open a connected UDP
socket, start a handshake (resuming with a stored ticket when there is one).  A dial
that does not complete within DIAL_TIMEOUT, an association that closes, or
``PeerUnresponsive`` from the core lead to a redial after a capped, jittered exponential
back-off: ``min(30 s, 2^n s) × uniform(0.5, 1)``; n resets after a handshake.

Server: one ServerEndpoint; each association is bound to its [Peer] by ``match_peer``
when its handshake completes (closed when no peer matches); a peer that reconnects from
a new address replaces its old association.

Key renewal (``RekeyInterval``, make-before-break): the client's connection is a
``RekeyingClient`` (``dtls/rekey.py``) that starts a new full handshake (never a ticket
resumption) when the interval runs out or a record budget nears its end, while the
current association keeps carrying traffic; ``Rekeyed`` then updates the peer's status
(generation, last handshake) and nothing else: the TUN device, routes, counters and the
applied MTU stay (the new association's ``PathMtuChanged`` reports feed ``mtu.py`` as a
new source).  The first dial and every redial still resume with a stored ticket.  On the
server a renewal is a new association from the address of an established one: the
endpoint keeps the old one for records in flight and retires it ``rekey_grace`` after
the client switched; the daemon keeps both bound to the [Peer] (``Peer.previous``)
and sends on ``endpoint.sending_association(addr)``.  Only an association from another
address (or one that replaced a half-open one) closes the old association as before.
Both sides keep old keys ``rekey_grace(RekeyInterval)`` seconds: 10 s, or half the
interval (at least 2 s) when that is shorter.

TUN MTU policy (``MTU =`` in [Interface]):
- a number: fixed; never changed.
- ``auto`` (default): start from ``min(1400, MTU of the route to the peer) − overhead``
  with overhead = IP header (20 or 40 for the underlay family) + UDP 8 + DTLS record
  header 13 + the largest AEAD expansion of any suite (24): 1335 on an IPv4 path of
  1400 or more.  When the core reports ``PathMtuChanged`` (DPLPMTUD), the TUN MTU
  follows its inner MTU (the smallest over connected peers on a server), debounced by
  ``daemon/mtu.py``: lowering at once, raising when the search settles (at most every
  few seconds).  Never below 1280 when the interface has IPv6 addresses (the kernel
  would drop IPv6 from it); never below 576.
- Either way, inner packets above a peer's applied inner MTU get an ICMP "too big"
  through the TUN, or are fragmented (IPv4 without DF): see ``datapath.py``.

TCP MSS clamping (``MSSClamp = yes``, the default): the MSS option of TCP SYNs crossing
the tunnel in either direction is lowered to ``M − 40`` (IPv4) / ``M − 60`` (IPv6) with
M = min(TUN MTU, the smallest applied inner MTU); see ``vpn/mss.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import random
import socket
from pathlib import Path
from typing import Any

from dtlsvpn.config.schema import Config, PeerConfig
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.crypto.tickets import TicketKey, TicketKeyRing
from dtlsvpn.daemon import binding
from dtlsvpn.daemon.binding import Ending, Verdict
from dtlsvpn.daemon.datapath import Addr, Datapath
from dtlsvpn.daemon.devices import Devices, LinkConfig, TunDevice, UdpPort
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.daemon.settings import dtls_config, load_config, match_peer
from dtlsvpn.daemon.status import StatusServer
from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.ticketstore import TicketStore
from dtlsvpn.daemon.udp import ErrorHint, family_of, normalise, packed
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PathMtuChanged,
    PeerAddressChanged,
    PeerAlive,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.rekey import Rekeyed, RekeyingClient
from dtlsvpn.errors import ConfigError
from dtlsvpn.vpn.ip import TooBigResponder
from dtlsvpn.vpn.mss import mss_for_mtu
from dtlsvpn.vpn.router import Router

log = logging.getLogger("dtlsvpn")

DEFAULT_PATH_MTU = 1400
UDP_HEADER = 8
RECORD_HEADER = 13
MAX_AEAD_OVERHEAD = max(s.overhead for s in SUITES.values())
MIN_TUN_MTU = 576
MIN_TUN_MTU_IPV6 = 1280
DIAL_TIMEOUT = 10.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
REKEY_GRACE = 10.0  # seconds old keys stay usable after a renewal (RFC-less policy)
REKEY_GRACE_MIN = 2.0

# Stats counters of the DTLS core that count dropped records (the rest count traffic).
DTLS_DROP_REASONS = frozenset({
    "malformed", "bad_mac", "bad_cid", "replay", "unknown_epoch", "early_data", "unexpected",
    "buffer_full", "stale_handshake", "after_close", "heartbeat_dropped",
    "heartbeat_malformed", "heartbeat_unexpected"})

def tunnel_overhead(family: socket.AddressFamily) -> int:
    ip_header = 40 if family == socket.AF_INET6 else 20
    return ip_header + UDP_HEADER + RECORD_HEADER + MAX_AEAD_OVERHEAD


def default_tun_mtu(family: socket.AddressFamily, path_mtu: int | None) -> int:
    """The ``auto`` MTU before any discovery: a safe guess from the route's MTU."""
    path = min(DEFAULT_PATH_MTU, path_mtu or DEFAULT_PATH_MTU)
    return path - tunnel_overhead(family)


def rekey_grace(interval: float | None) -> float:
    """How long the old association of a renewal still opens records: 10 s, or half the
    interval (at least 2 s) when renewals come more often than every 20 s."""
    if interval is None:
        return REKEY_GRACE
    return max(REKEY_GRACE_MIN, min(REKEY_GRACE, interval / 2))


def backoff_delay(attempt: int, rng: random.Random) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 16)) * rng.uniform(0.5, 1.0)


def _display(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    host, port = normalise(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Daemon:
    """One tunnel interface and its peers."""

    def __init__(self, cfg: Config, *, devices: Devices | None = None,
                 loop: Loop | None = None, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.devices = devices if devices is not None else Devices()
        self.notifier = self.devices.notifier
        self.rng = rng or random.Random()
        self.is_client = cfg.interface.role == "client"
        self.loop = loop if loop is not None else Loop()
        self.peers = PeerTable()
        for peer_cfg in cfg.peers:
            self.peers.add(Peer(peer_cfg))
        self.tun: TunDevice | None = None
        self.netlink: LinkConfig | None = None
        self.status: StatusServer | None = None
        self.datapath: Datapath | None = None
        self.endpoint: ServerEndpoint | None = None
        self.server_sock: UdpPort | None = None
        self.tickets = TicketStore(cfg.interface.ticket_store) if self.is_client else None
        self.tun_mtu = 0
        self.mtu_policy = "fixed"
        self.ready_sent = False
        self.started_wall = 0.0
        # client dialling state
        self.attempt = 0
        self.redial_at: float | None = None
        self.dial_deadline: float | None = None
        self.offered_ticket = False
        self.watchdog_at: float | None = None
        self.ticket_ring: TicketKeyRing | None = None  # server
        self.ticket_keys_saved: tuple[TicketKey, ...] = ()

    # --- set-up and teardown -----------------------------------------------------

    def _underlay_family(self) -> socket.AddressFamily:
        if self.is_client:
            endpoint = self.cfg.peers[0].endpoint
            return family_of(endpoint[0]) if endpoint else socket.AF_INET
        listen = self.cfg.interface.listen
        return family_of(listen[0]) if listen else socket.AF_INET

    def _initial_mtu(self) -> int:
        iface = self.cfg.interface
        if iface.mtu is not None:
            self.mtu_policy = "fixed"
            return iface.mtu
        self.mtu_policy = "auto"
        path: int | None = None
        if self.is_client and self.cfg.peers[0].endpoint is not None:
            host = self.cfg.peers[0].endpoint[0]
            if packed(host) is not None:
                path = self.devices.route_mtu(host)
        return self._clamp_mtu(default_tun_mtu(self._underlay_family(), path))

    def _clamp_mtu(self, mtu: int) -> int:
        has_v6 = any(a.version == 6 for a in self.cfg.interface.addresses)
        return max(mtu, MIN_TUN_MTU_IPV6 if has_v6 else MIN_TUN_MTU)

    def setup(self) -> None:
        iface = self.cfg.interface
        self.tun = self.devices.open_tun(iface.device)
        self.netlink = self.devices.link(self.tun.name)
        self.tun_mtu = self._initial_mtu()
        routes: list[Any] = []
        for p in self.cfg.peers:
            routes += p.routes
        self.netlink.configure(self.tun_mtu, iface.addresses, routes)
        router: Router[Peer] = Router(
            single=self.peers.first() if self.is_client else None)
        for state in self.peers:
            router.add_peer(state, state.config.allowed_prefixes)
        # ICMP errors come "from" the unreachable destination: a source address local to
        # this host would be dropped as martian by the kernel (vpn/ip.py).
        dp = Datapath(self.tun, router, TooBigResponder(None, None, reply_from_destination=True),
                      self.peers)
        dp.on_hints = self._on_hints
        self.datapath = dp
        self._update_mss()
        if self.is_client:
            dp.client_peer = self.peers.first()
            self.loop.add(self.tun.fd, dp.client_tun)
        else:
            assert iface.listen is not None
            self.server_sock = self.devices.open_udp(family_of(iface.listen[0]),
                                                     bind=iface.listen)
            self.endpoint = ServerEndpoint(self._server_dtls_config(),
                                           rekey_grace=rekey_grace(iface.rekey_interval))
            dp.sock = self.server_sock
            dp.endpoint = self.endpoint
            dp.bind = self._bind
            self.loop.add(self.server_sock.fileno(), dp.server_udp)
            self.loop.add(self.tun.fd, dp.server_tun)
        self.status = StatusServer(iface.status_socket, self.snapshot, self.loop)
        log.info("%s: interface %s up, mtu %d (%s), %s", self.cfg.name, self.tun.name,
                 self.tun_mtu, self.mtu_policy,
                 f"listening on {_display(iface.listen)}" if iface.listen else "client")

    def teardown(self) -> None:
        self.notifier.stopping()
        now = self.loop.now
        for state in self.peers:
            conn = state.conn
            if conn is not None:
                conn.close(now)  # the current association and any renewal's
                self._flush(state.addr, conn, now, state)
                continue
            assoc = state.assoc
            if assoc is not None and not assoc.is_closed:
                assoc.close(now)
                self._flush(state.addr, assoc, now, state)
        if self.status is not None:
            self.status.close()
        if self.netlink is not None:
            self.netlink.teardown()
        if self.tun is not None:
            self.tun.close()
            if self.netlink is not None and not self.netlink.wait_gone():
                log.warning("interface %s still present after close", self.tun.name)
        for state in self.peers:
            if state.sock is not None:
                state.sock.close()
                state.sock = None
        if self.server_sock is not None:
            self.server_sock.close()
        self.loop.close()

    def start(self) -> bool:
        """Set up the devices and the first deadlines; False (logged) when that failed."""
        try:
            self.setup()
        except (OSError, ConfigError, ValueError) as exc:
            log.error("%s: start-up failed: %s", self.cfg.name, exc)
            with contextlib.suppress(Exception):
                self.teardown()
            return False
        now = self.loop.refresh_clock()
        self.started_wall = self.loop.wall
        if self.notifier.watchdog_interval:
            self.watchdog_at = now
        if self.is_client:
            self.redial_at = now
        else:
            self._ready(f"listening on {_display(self.cfg.interface.listen)}")
        self.loop.attach(self)
        return True

    def stop(self) -> None:
        """Close every association and undo the set-up (after the loop ended)."""
        log.info("%s: stopping", self.cfg.name)
        self.teardown()

    def run(self) -> int:
        self.loop.install_signals()
        if not self.start():
            return 1
        try:
            self.loop.run(self)
        finally:
            self.stop()
        return 0

    def _ready(self, status: str) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    # --- loop owner ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        if self.is_client:
            state = self.peers.first()
            if state.conn is not None:
                t = state.conn.get_timer()
                if t is not None:
                    deadlines.append(t)
            if self.redial_at is not None:
                deadlines.append(self.redial_at)
            if self.dial_deadline is not None:
                deadlines.append(self.dial_deadline)
        elif self.endpoint is not None:
            t = self.endpoint.get_timer()
            if t is not None:
                deadlines.append(t)
        if self.watchdog_at is not None:
            deadlines.append(self.watchdog_at)
        for state in self.peers:
            if state.mtu.due is not None:
                deadlines.append(state.mtu.due)
        # RekeyingClient.get_timer() is inf with RekeyInterval = off and no other timer;
        # epoll cannot wait that long (OverflowError): treat it as "no deadline".
        finite = [d for d in deadlines if math.isfinite(d)]
        return min(finite) if finite else None

    def on_timer(self, now: float, wall: float) -> None:
        if self.watchdog_at is not None and now >= self.watchdog_at:
            self.notifier.watchdog()
            assert self.notifier.watchdog_interval is not None
            self.watchdog_at = now + self.notifier.watchdog_interval / 2
        if any([state.mtu.poll(now) for state in self.peers]):
            self._apply_mtus()
        if self.is_client:
            self._client_timers(now, wall)
        elif self.endpoint is not None:
            self.endpoint.handle_timer(now)
            for addr, assoc in list(self.endpoint.associations.items()):
                self._service(addr, assoc, now)
            self.endpoint.remove_closed()
            self._retire_previous()

    def after_iteration(self, now: float) -> None:
        if self.is_client:
            state = self.peers.first()
            if state.conn is not None:
                self._service_client(state, now)
            return
        dp = self.datapath
        if dp is None or not dp.touched:
            return
        touched, dp.touched = dp.touched, {}
        closed = False
        for assoc, addr in touched.items():
            self._service(addr, assoc, now)
            closed |= assoc.is_closed
        if closed and self.endpoint is not None:
            self.endpoint.remove_closed()

    # --- slow path: events and output --------------------------------------------

    def _flush(self, addr: Addr | None, assoc: Association | RekeyingClient, now: float,
               state: Peer | None) -> None:
        out = assoc.datagrams_to_send(now)
        if not out:
            return
        sock = (state.sock if state is not None else None) if self.is_client else self.server_sock
        if sock is None or (addr is None and not self.is_client):
            return
        for d in out:
            try:
                if self.is_client:
                    sock.send(d)
                else:
                    sock.sendto(d, addr)  # type: ignore[arg-type]
            except BlockingIOError:
                if state is not None:
                    state.drop("send_buffer_full")
            except OSError as exc:
                # EMSGSIZE: a PMTU probe above the local interface MTU (the kernel's
                # answer is read from the error queue as a hint).
                if state is not None:
                    state.drop("emsgsize" if exc.errno == errno.EMSGSIZE else "send_error")
                    if exc.errno != errno.EMSGSIZE:
                        state.last_error = exc.strerror
                if exc.errno == errno.EMSGSIZE:
                    self._on_hints(state, sock.read_errors(), now)

    def _service(self, addr: Addr | None, assoc: Association, now: float,
                 state: Peer | None = None) -> None:
        events = assoc.pop_events()
        if state is None:
            state = self.peers.owner(assoc)
        for ev in events:
            state = self._on_event(addr, assoc, ev, now, state)
        self._flush(addr, assoc, now, state)

    def _service_client(self, state: Peer, now: float) -> None:
        """The client's events (those of the current association, and ``Rekeyed``) and
        everything its associations have to send."""
        conn = state.conn
        assert conn is not None
        for ev in conn.pop_events():
            self._on_event(state.addr, conn.current, ev, now, state)
        self._flush(state.addr, conn, now, state)

    def _on_event(self, addr: Addr | None, assoc: Association, ev: Event | Rekeyed,
                  now: float, state: Peer | None) -> Peer | None:
        wall = self.loop.wall
        match ev:
            case HandshakeCompleted():
                if self.is_client:
                    state = self._client_established(assoc, ev, now, wall)
                else:
                    state = self._server_established(addr, assoc, ev, now, wall)
            case AssociationClosed(reason=reason, local=local):
                self._on_closed(addr, assoc, reason, local, now, state)
            case Rekeyed():
                if self.is_client and state is not None and state.conn is not None:
                    self._client_rekeyed(state, state.conn, ev, wall)
            case PeerUnresponsive():
                self._on_unresponsive(addr, assoc, now, state)
            case PeerAddressChanged() if state is not None and not self.is_client:
                self._on_address_changed(state, assoc, ev)
            case PathMtuChanged() if state is not None and state.assoc is assoc:
                # (not the reports of a renewal's old association: the new one's count)
                self._on_path_mtu(state, assoc, ev, now)
            case SessionTicketReceived() if self.is_client and state is not None:
                self._store_ticket(state, ev)
            case AlertReceived():
                log.debug("alert %s/%s from %s", ev.level, ev.description, _display(addr))
            case HeartbeatAnswered() if state is not None:
                state.rtt = ev.rtt
            case PeerAlive() if state is not None:
                log.info("peer %s: heard again", state.name)
        return state

    def _on_unresponsive(self, addr: Addr | None, assoc: Association, now: float,
                         state: Peer | None) -> None:
        log.warning("peer %s unresponsive", state.name if state else _display(addr))
        conn = state.conn if state is not None and self.is_client else None
        target: Association | RekeyingClient = assoc if conn is None else conn
        if not assoc.is_closed:
            target.close(now)
            self._flush(addr, target, now, state)
        self._on_closed(addr, assoc, "PeerUnresponsive", True, now, state)

    def _store_ticket(self, state: Peer, ev: SessionTicketReceived) -> None:
        if self.tickets is not None:
            try:
                self.tickets.save(self._ticket_key(state), ev.session)
            except OSError as exc:
                log.warning("cannot store ticket: %s", exc)

    def _note_handshake(self, state: Peer, assoc: Association, ev: HandshakeCompleted,
                        addr: Addr | None, wall: float, *, renewal: bool = False) -> None:
        state.assoc = assoc
        state.addr = addr
        state.established = True
        state.handshake_wall = wall
        state.handshakes += 1
        state.resumed = bool(ev.resumed)
        state.suite = ev.suite_name
        state.last_error = None
        if renewal:
            # Same peer, same path: the status keeps the PMTU found so far until the new
            # association's own search reports.
            state.generation += 1
            state.rekeys += 1
            state.rekey_wall = wall
            log.info("peer %s: keys renewed with %s (generation %d, %s)", state.name,
                     _display(addr), state.generation, ev.suite_name)
            return
        state.generation = 0
        if assoc.plpmtu is not None:
            state.plpmtu = assoc.plpmtu
        if assoc.inner_mtu is not None:
            state.inner_mtu = assoc.inner_mtu
        assert self.datapath is not None
        self.datapath.router.set_underlay(state, packed(normalise(addr)[0]) if addr else None)
        log.info("peer %s: handshake with %s done (%s, %s)", state.name, _display(addr),
                 ev.suite_name, "resumed" if ev.resumed else "full")

    def _client_established(self, assoc: Association, ev: HandshakeCompleted, now: float,
                            wall: float) -> Peer | None:
        state = self.peers.first()
        # A resumed session was authenticated by the full handshake that made the ticket.
        if not ev.resumed and match_peer(self.cfg, ev) is None and not ev.psk_identity:
            log.error("server credential does not match [Peer] %s", state.name)
            assoc.close(now)
            return state
        self._note_handshake(state, assoc, ev, state.addr, wall)
        self.attempt = 0
        self.dial_deadline = None
        self._ready(self._status_line())
        return state

    def _client_rekeyed(self, state: Peer, conn: RekeyingClient, ev: Rekeyed,
                        wall: float) -> None:
        """A renewal completed and carries the traffic now; the old association still opens
        records for the grace period (inside ``conn``).  Only the status changes."""
        assoc = conn.current
        result = assoc.handshake_result
        state.assoc = assoc
        if result is None or (match_peer(self.cfg, result) is None
                              and not result.psk_identity):
            # The core checked the chain; the [Peer]'s pins must hold for every handshake.
            log.error("peer %s: server credential on key renewal does not match [Peer]",
                      state.name)
            conn.close(self.loop.now)  # AssociationClosed follows: redial
            return
        self._note_handshake(state, assoc, result, state.addr, wall, renewal=True)
        state.generation = ev.generation  # (the same count, as RekeyingClient keeps it)

    def _server_established(self, addr: Addr | None, assoc: Association,
                            ev: HandshakeCompleted,
                            now: float, wall: float) -> Peer | None:
        peer_cfg = match_peer(self.cfg, ev)
        state = self.peers.get(peer_cfg.name) if peer_cfg is not None else None
        endpoint = self.endpoint
        assert endpoint is not None and self.datapath is not None
        current = state.assoc if state is not None else None
        decision = binding.authenticated(
            assoc, addr, matched=state is not None, resumed=ev.resumed, current=current,
            previous=state.previous if state is not None else None,
            current_addr=endpoint.address_of(current) if current is not None else None,
            newest_at_addr=endpoint.associations.get(addr) if addr is not None else None)
        if decision.verdict is Verdict.REJECT or state is None or addr is None:
            log.warning("association from %s matches no [Peer]: closed", _display(addr))
            self.datapath.drop("unknown_peer")
            assoc.close(now)
            return None
        for stale in decision.close:
            stale.close(now)  # the peer came back (new address or association)
            self._flush(state.addr, stale, now, state)
        renewal = decision.verdict is Verdict.RENEWAL
        self.peers.bind(state, assoc, addr, renewal=renewal)
        self._note_handshake(state, assoc, ev, addr, wall, renewal=renewal)
        self._save_ticket_keys(wall)
        self.notifier.status(self._status_line())
        return state

    def _on_address_changed(self, state: Peer, assoc: Association,
                            ev: PeerAddressChanged) -> None:
        """RFC 9146 §6: the peer moved (the core follows it by connection ID)."""
        assert self.datapath is not None
        new_addr = binding.moved(assoc, ev.new, current=state.assoc)
        if new_addr is None:
            return
        log.info("peer %s: moved from %s to %s", state.name, _display(state.addr),
                 _display(new_addr))
        self.peers.move(state, new_addr)
        self.datapath.router.set_underlay(state, packed(normalise(new_addr)[0]))

    def _bind(self, addr: Addr, assoc: Association, now: float) -> Peer | None:
        """Datapath hook: service a just-completed association so it gets its peer."""
        self._service(addr, assoc, now)
        return self.peers.owner(assoc)

    def _retire_previous(self) -> None:
        """Server timers: drop renewals' old associations the endpoint has retired."""
        assert self.endpoint is not None
        for state in self.peers.renewing():
            prev = state.previous
            assert prev is not None
            if binding.retired(prev, self.endpoint.address_of(prev)):
                prev.pop_events()  # its AssociationClosed: the peer is still up
                log.debug("peer %s: old keys retired", state.name)
                self.peers.retire(state)

    def _on_closed(self, addr: Addr | None, assoc: Association, reason: str, local: bool,
                   now: float, state: Peer | None) -> None:
        if state is None:
            return
        ending = binding.closed(assoc, current=state.assoc,
                                previous=None if self.is_client else state.previous)
        if ending is Ending.OLD_KEYS_RETIRED:
            self.peers.retire(state)  # a renewal's old association: the peer is still up
            return
        if ending is Ending.UNRELATED:
            return
        log.info("peer %s: association closed (%s)", state.name, reason)
        state.note_down(reason)
        if not self.is_client:
            self.peers.release(state)
            self.notifier.status(self._status_line())
        elif self.redial_at is None:  # (PeerUnresponsive, then its AssociationClosed)
            if (state.resumed and state.handshake_wall is not None and self.tickets
                    and self.loop.wall - state.handshake_wall < 5.0
                    and not local):
                # The server ended a just-resumed session: don't offer that ticket again.
                self.tickets.forget(self._ticket_key(state))
            self._lost(now, reason)

    def _on_path_mtu(self, state: Peer, assoc: Association, ev: PathMtuChanged,
                     now: float) -> None:
        state.plpmtu = ev.plpmtu
        state.inner_mtu = ev.inner_mtu
        if state.mtu.report(assoc, ev.inner_mtu, now):
            self._apply_mtus()

    def _apply_mtus(self) -> None:
        """Applied inner MTUs → per-peer limits, the TUN MTU (``auto``) and the MSS clamp."""
        applied: list[int] = []
        for p in self.peers:
            value = p.mtu.applied
            p.limit = value or 0
            if p.established and value:
                applied.append(value)
        if not applied:
            return
        inner = min(applied)
        if self.mtu_policy != "fixed":
            self.mtu_policy = "pmtu"
            self._set_tun_mtu(inner)
        self._update_mss(inner)

    def _set_tun_mtu(self, inner: int) -> None:
        mtu = self._clamp_mtu(inner)
        if mtu != self.tun_mtu and self.netlink is not None:
            try:
                self.netlink.set_mtu(mtu)
            except OSError as exc:
                log.warning("cannot set MTU %d: %s", mtu, exc)
                return
            log.info("%s: tunnel MTU %d → %d (path)", self.cfg.name, self.tun_mtu, mtu)
            self.tun_mtu = mtu

    def _update_mss(self, inner: int | None = None) -> None:
        dp = self.datapath
        if dp is None:
            return
        if not self.cfg.interface.mss_clamp:
            dp.mss4 = dp.mss6 = 0
            return
        mtu = self.tun_mtu if inner is None else min(inner, self.tun_mtu)
        dp.mss4, dp.mss6 = mss_for_mtu(mtu)

    def _on_hints(self, state: Peer | None, hints: list[ErrorHint], now: float) -> None:
        for hint in hints:
            if state is None and hint.destination is not None:
                state = self.peers.at(hint.destination)
            if state is None:
                continue
            if hint.mtu is not None and state.assoc is not None:
                state.assoc.path_hint(hint.mtu, now)
            elif hint.errno:
                state.last_error = os.strerror(hint.errno)

    # --- client dialling ---------------------------------------------------------

    def _ticket_key(self, state: Peer) -> str:
        endpoint = state.config.endpoint
        return f"{state.name}-{endpoint[0]}-{endpoint[1]}" if endpoint else state.name

    def _client_dtls_config(self, state: Peer, wall: float) -> DtlsConfig:
        conf = self._apply_knobs(dtls_config(self.cfg, state.config))
        self.offered_ticket = False
        if self.tickets is not None:
            session = self.tickets.load(self._ticket_key(state), wall)
            if session is not None:
                conf = dataclasses.replace(conf, resume_session=session)
                self.offered_ticket = True
        return conf

    def _server_dtls_config(self) -> DtlsConfig:
        return self._apply_knobs(dtls_config(self.cfg))

    def _apply_knobs(self, conf: DtlsConfig) -> DtlsConfig:
        """Heartbeat settings from [Interface] and the server's ticket keys."""
        iface = self.cfg.interface
        heartbeats = HeartbeatSettings(interval=iface.heartbeat_interval,
                                       retransmit=min(1.0, iface.heartbeat_interval),
                                       timeout=iface.dead_peer_timeout)
        if self.is_client:
            return dataclasses.replace(conf, heartbeat_settings=heartbeats)
        return dataclasses.replace(conf, heartbeat_settings=heartbeats,
                                   ticket_keys=self._ticket_ring())

    def _ticket_ring(self) -> TicketKeyRing:
        """The server's ticket keys, kept in TicketStore/ticket.keys across restarts."""
        if self.ticket_ring is not None:
            return self.ticket_ring
        path = self.cfg.interface.ticket_store / "ticket.keys"
        try:
            ring = TicketKeyRing.load(path, os.urandom)
        except ConfigError as exc:
            if path.exists():
                log.warning("%s; starting with new ticket keys", exc)
            ring = TicketKeyRing(os.urandom)
        self.ticket_ring = ring
        self.ticket_keys_saved = ring.keys
        return ring

    def _save_ticket_keys(self, wall: float) -> None:
        ring = self.ticket_ring
        if ring is None:
            return
        ring.maintain(wall)
        if ring.keys == self.ticket_keys_saved or not ring.keys:
            return
        path = self.cfg.interface.ticket_store / "ticket.keys"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            ring.save(path)
            self.ticket_keys_saved = ring.keys
        except OSError as exc:
            log.warning("cannot save ticket keys to %s: %s", path, exc)

    def _client_timers(self, now: float, wall: float) -> None:
        state = self.peers.first()
        conn = state.conn
        if conn is not None:
            t = conn.get_timer()
            if t is not None and now >= t:
                conn.handle_timer(now, wall)  # retransmissions, heartbeats, renewals
        if self.dial_deadline is not None and now >= self.dial_deadline:
            self.dial_deadline = None
            if conn is not None and not conn.is_established:
                log.warning("peer %s: no handshake within %gs", state.name, DIAL_TIMEOUT)
                conn.close(now)
                self._flush(state.addr, conn, now, state)
                conn.pop_events()
                if self.offered_ticket and self.tickets is not None:
                    self.tickets.forget(self._ticket_key(state))
                self._lost(now, "handshake timed out")
        if self.redial_at is not None and now >= self.redial_at:
            self.redial_at = None
            self._dial(state, now, wall)

    def _lost(self, now: float, reason: str) -> None:
        state = self.peers.first()
        state.established = False
        self.dial_deadline = None
        delay = backoff_delay(self.attempt, self.rng)
        self.attempt += 1
        self.redial_at = now + delay
        log.info("peer %s: %s; redialling in %.1fs", state.name, reason, delay)
        self.notifier.status(self._status_line())

    def _dial(self, state: Peer, now: float, wall: float) -> None:
        assert state.config.endpoint is not None and self.datapath is not None
        host, port = state.config.endpoint
        if state.sock is not None:
            self.loop.remove(state.sock.fileno())
            state.sock.close()
            state.sock = None
        state.assoc = None
        state.conn = None
        try:
            family, addr = self.devices.resolve(host, port)
            sock = self.devices.open_udp(family, connect=addr)
        except OSError as exc:  # gaierror included
            state.last_error = str(exc)
            self._lost(now, f"cannot reach {host}: {exc}")
            return
        state.sock = sock
        state.addr = addr
        self.loop.add(sock.fileno(), self.datapath.client_udp)
        if self.mtu_policy == "auto" and state.inner_mtu is None:
            self._adjust_default_mtu(sock, family)
        # A dial resumes with the stored ticket when there is one; the renewals that
        # RekeyingClient starts later never do (fresh ECDHE keys are their point).
        conn = RekeyingClient(self._client_dtls_config(state, wall),
                              grace=rekey_grace(self.cfg.interface.rekey_interval),
                              ip_header=40 if family == socket.AF_INET6 else 20,  # PLPMTU
                              peer=f"{host}:{port}".encode())
        state.conn = conn
        state.assoc = conn.current
        self.dial_deadline = now + DIAL_TIMEOUT
        conn.connect(now, wall)
        self._flush(addr, conn, now, state)

    def _adjust_default_mtu(self, sock: UdpPort, family: socket.AddressFamily) -> None:
        path = sock.path_mtu()
        if path is None:
            return
        mtu = self._clamp_mtu(default_tun_mtu(family, path))
        if mtu != self.tun_mtu and self.netlink is not None:
            with contextlib.suppress(OSError):
                self.netlink.set_mtu(mtu)
                self.tun_mtu = mtu
                self._update_mss()

    # --- reload ------------------------------------------------------------------

    def on_reload(self, now: float) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.cfg.path, name=self.cfg.name)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self._status_line())
            return
        if new.interface != self.cfg.interface:
            log.warning("reload: [Interface] changes need a restart; applying [Peer] changes")
        old_peers = {p.name: p for p in self.cfg.peers}
        new_peers = {p.name: p for p in new.peers}
        self.cfg = dataclasses.replace(new, interface=self.cfg.interface)
        for name, old in old_peers.items():
            if new_peers.get(name) != old:
                self._remove_peer(name, now)
        for name, peer_cfg in new_peers.items():
            if old_peers.get(name) != peer_cfg:
                self._add_peer(peer_cfg, now)
            else:
                peer = self.peers.get(name)
                assert peer is not None
                peer.config = peer_cfg
        if self.endpoint is not None:
            self.endpoint.config = self._server_dtls_config()
        log.info("reloaded %s: %d peers", self.cfg.path, len(self.peers))
        self.notifier.ready(self._status_line())

    def _remove_peer(self, name: str, now: float) -> None:
        state = self.peers.get(name)
        if state is None or self.datapath is None:
            return
        if state.conn is not None:
            state.conn.close(now)
            self._flush(state.addr, state.conn, now, state)
        for assoc in (state.assoc, state.previous):
            if assoc is not None and not assoc.is_closed:
                assoc.close(now)
                self._flush(state.addr, assoc, now, state)
        self.peers.remove(name)
        self.datapath.router.remove_peer(state)
        if self.netlink is not None:
            self.netlink.remove_routes(state.config.routes)
        if state.sock is not None:
            self.loop.remove(state.sock.fileno())
            state.sock.close()

    def _add_peer(self, peer_cfg: PeerConfig, now: float) -> None:
        state = Peer(peer_cfg)
        self.peers.add(state)
        assert self.datapath is not None
        self.datapath.router.add_peer(state, peer_cfg.allowed_prefixes)
        if self.netlink is not None:
            try:
                self.netlink.add_routes(peer_cfg.routes)
            except OSError as exc:
                log.warning("peer %s: cannot add routes: %s", peer_cfg.name, exc)
        if self.is_client:
            self.datapath.router.single = state
            self.datapath.client_peer = state
            self.attempt = 0
            self.redial_at = now

    # --- status --------------------------------------------------------------------

    def _status_line(self) -> str:
        up = sum(1 for p in self.peers if p.established)
        return f"{up}/{len(self.peers)} peers up, mtu {self.tun_mtu}"

    def _rekeying(self, state: Peer) -> bool:
        """A renewal is under way: its handshake runs, or old keys are still accepted."""
        conn = state.conn
        if conn is not None:
            return conn.pending is not None or conn.previous is not None
        return state.previous is not None

    def snapshot(self) -> dict[str, Any]:
        iface = self.cfg.interface
        wall = self.loop.wall
        dp = self.datapath
        peers = []
        for state in self.peers:
            assoc = state.assoc
            drops: dict[str, int] = dict(state.drops)
            if dp is not None:
                rs = dp.router.peer_stats.get(state)
                if rs is not None:
                    drops.update({k: v for k, v in rs.as_dict().items() if v})
            if assoc is not None:  # record-layer drops of the current association
                drops.update({k: v for k, v in assoc.stats.as_dict().items()
                              if v and k in DTLS_DROP_REASONS})
            endpoint = _display(state.addr)
            if endpoint is None and state.config.endpoint is not None:
                endpoint = _display(state.config.endpoint)
            peers.append({
                "name": state.name,
                "endpoint": endpoint,
                "state": ("established" if state.established
                          else "connecting" if assoc is not None and not assoc.is_closed
                          else "down"),
                "transport": "udp",
                "suite": state.suite,
                "last_handshake": state.handshake_wall,
                "last_handshake_ago": (round(wall - state.handshake_wall, 1)
                                       if state.handshake_wall else None),
                "resumed": state.resumed,
                "handshakes": state.handshakes,
                "rekey_generation": state.generation,
                "rekeys": state.rekeys,
                "last_rekey": state.rekey_wall,
                "last_rekey_ago": (round(wall - state.rekey_wall, 1)
                                   if state.rekey_wall else None),
                "rekeying": self._rekeying(state),
                "heartbeat_rtt_ms": (round(state.rtt * 1000, 2) if state.rtt is not None
                                     else None),
                "plpmtu": state.plpmtu,
                "record_overhead": assoc.record_overhead if assoc is not None else None,
                "inner_mtu": state.inner_mtu,
                "mtu_limit": state.limit or None,
                "allowed_ips": [str(n) for n in state.config.allowed_prefixes],
                "rx_bytes": state.rx_bytes,
                "rx_packets": state.rx_packets,
                "tx_bytes": state.tx_bytes,
                "tx_packets": state.tx_packets,
                "retransmissions": assoc.stats.retransmissions if assoc else 0,
                "last_error": state.last_error,
                "drops": drops,
                "dtls": ({k: v for k, v in assoc.stats.as_dict().items() if v}
                         if assoc is not None else {}),
            })
        iface_drops = dict(dp.drops) if dp is not None else {}
        counters: dict[str, Any] = {}
        if dp is not None:
            iface_drops.update({k: v for k, v in dp.router.stats.as_dict().items() if v})
            counters["mss_clamp"] = ({"ipv4": dp.mss4, "ipv6": dp.mss6} if dp.mss4 else None)
            counters["mss_clamped"] = dp.mss_clamped
            counters["fragmented"] = dp.fragmented
            if dp.too_big is not None:
                counters["icmp_too_big_sent"] = dp.too_big.sent
                counters["icmp_too_big_rate_limited"] = dp.too_big.rate_limited
        return {
            "interface": {
                "name": self.cfg.name,
                "device": self.tun.name if self.tun else iface.device,
                "role": iface.role,
                "listen": _display(iface.listen),
                "addresses": [str(a) for a in iface.addresses],
                "mtu": self.tun_mtu,
                "mtu_policy": self.mtu_policy,
                "rekey_interval": iface.rekey_interval,
                "pid": os.getpid(),
                "uptime": round(wall - self.started_wall, 1) if self.started_wall else 0,
                "config": self.cfg.path,
                **counters,
                "drops": iface_drops,
            },
            "peers": peers,
        }


def run_daemon(path: Path, name: str | None = None) -> int:
    """Load the configuration and run until SIGTERM; the exit status of ``dtlsvpn run``."""
    from dtlsvpn.daemon.systemd import setup_logging

    notifier = Notifier()
    try:
        cfg = load_config(path, name=name)
    except ConfigError as exc:
        setup_logging("info")
        log.error("%s", exc)
        return 1
    setup_logging(cfg.interface.log_level)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    if not any(p for p in cfg.peers):
        log.error("%s: no [Peer] configured", cfg.path)
        return 1
    if cfg.interface.role == "client" and cfg.peers[0].endpoint is None:
        log.error("%s: the client's [Peer] needs an Endpoint", cfg.path)
        return 1
    return Daemon(cfg, devices=Devices(notifier)).run()

