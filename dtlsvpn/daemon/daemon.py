"""The daemon: configuration → devices → one loop, the role, the data path; then teardown.

Start-up order: first what can fail without the TUN (the instance lock, a server's
UDP port bound to ListenAddress and its TCP fallback's listener, the status socket), so
that a start that fails there creates no interface and installs no address or route;
then the TUN device, its MTU, addresses and routes (before the loop), the router with
every peer's allowed prefixes, the data path, the role (server: serves on the sockets
bound first; client: dialled, see ``client.py``), then the loop.  READY=1 goes out
when a server listens and when a client is configured and dialling (``client.py``:
offline start; STATUS= says whether it is connected).
SIGTERM/SIGINT stop the loop; teardown sends close_notify to every peer, removes
routes and addresses, closes the TUN descriptor (the interface disappears with it)
and removes the status socket.  SIGHUP reloads the [Peer] sections: changed peers
are removed and added again, unchanged ones keep their associations; the credential
files are read again (``trust.py``: new handshakes use them, and a CA change ends the
associations whose peer no longer validates); [Interface]: ``ifreload.py``.

Everything with a deadline is a loop Timer: the watchdog (half of ``WATCHDOG_USEC``),
each peer's MTU debounce (``mtu.py``), and the roles' own (dial, redial, association
timers, old keys' retirement).  Nothing scans the peers per wake-up.

Key renewal (``RekeyInterval``, make-before-break): see ``dtls/rekey.py`` (client),
``dtls/endpoint.py`` and ``binding.py`` (server).  Both sides keep old keys
``rekey_grace(RekeyInterval)`` seconds: 10 s, or half the interval (at least 2 s)
when that is shorter.  TUN MTU and MSS policy: ``tunmtu.py``; packets that do not fit:
``datapath.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import socket
from functools import partial
from pathlib import Path
from typing import Any

from dtlsvpn.config import Config, PeerConfig
from dtlsvpn.daemon import forwarding
from dtlsvpn.daemon.client import ClientRole
from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import Addr, Devices, LinkConfig, Platform, TunDevice
from dtlsvpn.daemon.dialer import Dialer
from dtlsvpn.daemon.fulltunnel import main_table_routes
from dtlsvpn.daemon.ifreload import apply_interface
from dtlsvpn.daemon.lane import Lane
from dtlsvpn.daemon.lane import attach as attach_lane
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.daemon.role import display
from dtlsvpn.daemon.server import Listeners, ServerRole, bind_listeners
from dtlsvpn.daemon.settings import load_config
from dtlsvpn.daemon.snapshot import snapshot
from dtlsvpn.daemon.startup import (
    InstanceLock,
    StartupError,
    describe_status,
    describe_tun,
)
from dtlsvpn.daemon.status import StatusServer
from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.transport import first_carrier
from dtlsvpn.daemon.trust import ca_changed, describe
from dtlsvpn.daemon.tunmtu import TunnelMtu
from dtlsvpn.daemon.udp import ErrorHint, family_of, normalise, packed
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.events import PathMtuChanged
from dtlsvpn.errors import ConfigError
from dtlsvpn.vpn.ip import TooBigResponder
from dtlsvpn.vpn.router import Router

log = logging.getLogger("dtlsvpn")


class Daemon:
    """One tunnel interface and its peers."""

    def __init__(self, cfg: Config, *, devices: Platform | None = None,
                 loop: Loop | None = None, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.devices: Platform = devices if devices is not None else Devices()
        self.notifier: Notifier = self.devices.notifier
        self.rng = rng or random.Random()
        self.is_client = cfg.interface.role == "client"
        self.loop = loop if loop is not None else Loop(contain=True)
        self.loop.on_error = self._internal_error
        self.peers = PeerTable()
        for peer_cfg in cfg.peers:
            self._new_peer(peer_cfg)
        self.tun: TunDevice | None = None
        self.netlink: LinkConfig | None = None
        self.status: StatusServer | None = None
        self.datapath: Datapath | None = None
        self.role: ClientRole | ServerRole | None = None
        self.lane: Lane | None = None  # the compiled lone-packet lane (lane.py)
        self.listeners: Listeners | None = None  # a server's, until its role takes them
        self.tunmtu = TunnelMtu(cfg.name, cfg.interface)
        self.ready_sent = False
        self.started_wall = 0.0
        self._watchdog = self.loop.timer(self._on_watchdog)
        self.lock: InstanceLock | None = None

    def _new_peer(self, peer_cfg: PeerConfig) -> Peer:
        peer = Peer(peer_cfg)
        peer.transport = first_carrier(self.cfg.interface.transport)  # (before any carrier)
        peer.mtu_timer = self.loop.timer(partial(self._on_mtu_due, peer))
        self.peers.add(peer)
        return peer

    # --- set-up and teardown -----------------------------------------------------

    def _underlay(self) -> tuple[socket.AddressFamily, int | None]:
        """The underlay's family, and the route's MTU towards a client's server."""
        if not self.is_client:
            listen = self.cfg.interface.listen
            return (family_of(listen[0]) if listen else socket.AF_INET), None
        endpoint = self.cfg.peers[0].endpoint
        if endpoint is None:
            return socket.AF_INET, None
        path = self.devices.route_mtu(endpoint[0]) if packed(endpoint[0]) else None
        return family_of(endpoint[0]), path

    def _open_sockets(self) -> None:
        """What can fail without the TUN, before it: the server's listening sockets, then
        the status socket (a start that fails here touches no interface or route)."""
        if not self.is_client:
            self.listeners = bind_listeners(self.cfg, self.devices)
        try:
            self.status = StatusServer(self.cfg.interface.status_socket, self.snapshot,
                                       self.loop)
        except OSError as exc:
            raise StartupError(describe_status(exc, self.cfg)) from exc

    def setup(self) -> None:
        iface = self.cfg.interface
        self.lock = InstanceLock.acquire(self.cfg)  # one instance per tunnel (startup.py)
        self._open_sockets()
        try:
            # TSO on read and C coalescing go with the compiled lane (daemon/tun.py)
            self.tun = tun = self.devices.open_tun(iface.device, iface.tun_offload,
                                                   use_compiled=iface.compiled_lane)
        except OSError as exc:
            raise StartupError(describe_tun(exc, self.cfg)) from exc
        self.netlink = self.tunmtu.link = self.devices.link(tun.name)
        mtu = self.tunmtu.initial(*self._underlay())
        routes = [r for p in self.cfg.peers for r in p.routes]
        # (roam) a client's /0 routes go to the full tunnel's table (fulltunnel.py)
        self.netlink.configure(mtu, iface.addresses,
                               main_table_routes(routes, client=self.is_client))
        router: Router[Peer] = Router(single=self.peers.first() if self.is_client else None)
        for peer in self.peers:
            router.add_peer(peer, peer.config.allowed_prefixes)
        # ICMP errors come "from" the unreachable destination: a source address local to
        # this host would be dropped as martian by the kernel (vpn/ip.py).
        dp = Datapath(tun, router, TooBigResponder(None, None, reply_from_destination=True),
                      self.peers)
        dp.on_hints = self.apply_hints
        dp.defer = self.loop.defer
        self.datapath = self.tunmtu.clamp_to = dp
        self.tunmtu.update_mss()
        if self.is_client:
            self.role = client = ClientRole(self, dp, self.tunmtu, Dialer(self.rng))
            client.setup(tun)
        else:
            assert self.listeners is not None
            self.role = server = ServerRole(self, dp)
            server.setup(tun, self.listeners)
        self.lane = attach_lane(self.loop, dp, tun, server=not self.is_client,
                                enabled=iface.compiled_lane)
        if self.lane is not None:
            dp.lane_counters = self.lane.counters
        listening = self.role.listening()
        log.info("%s: interface %s up, mtu %d (%s), %s", self.cfg.name, tun.name, mtu,
                 self.tunmtu.policy, f"listening on {listening}" if listening else "client")

    def teardown(self) -> None:
        self.notifier.stopping()
        if self.lane is not None:
            self.lane.close()
            self.lane = None
        if self.role is not None:
            self.role.teardown(self.loop.now)
        if self.listeners is not None:
            self.listeners.close()  # (what the role did not take: none once it did)
        if self.status is not None:
            self.status.close()
        if self.netlink is not None:
            self.netlink.teardown()
        if self.tun is not None:
            self.tun.close()
            if self.netlink is not None and not self.netlink.wait_gone():
                log.warning("interface %s still present after close", self.tun.name)
        self.loop.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def start(self) -> bool:
        """Set up the devices and the first deadlines; False (logged) when that failed."""
        try:
            self.setup()
        except (OSError, ConfigError, ValueError, StartupError) as exc:
            log.error("%s: start-up failed: %s", self.cfg.name, exc)
            with contextlib.suppress(Exception):
                self.teardown()
            return False
        now = self.loop.refresh_clock()
        self.started_wall = self.loop.wall
        if self.notifier.watchdog_interval:
            self._watchdog.schedule(now)
        assert self.role is not None
        self.role.start(now)
        self.loop.on_reload = self.on_reload
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
            self.loop.run()
        finally:
            self.stop()
        return 0

    # --- services for the roles ----------------------------------------------------

    def ready(self, status: str) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    def status_line(self) -> str:
        up = len(self.peers.up)  # established or on a TCP link; no walk (peers.py)
        return f"{up}/{len(self.peers)} peers up, mtu {self.tunmtu.mtu}"

    def status_text(self) -> str:
        """STATUS=: the role's full line (a client adds whether it is connected)."""
        return self.role.status_text() if self.role is not None else self.status_line()

    def _internal_error(self) -> None:
        """The loop contained an exception (loop.py): the interface's ``internal_error``."""
        if self.datapath is not None:
            self.datapath.drop("internal_error")

    def set_underlay(self, peer: Peer, addr: Addr | None) -> None:
        assert self.datapath is not None
        self.datapath.router.set_underlay(peer, packed(normalise(addr)[0]) if addr else None)

    def carrier_changed(self, peer: Peer) -> None:
        """A peer moved between UDP and a TCP link (TCP fallback): the MSS clamp follows."""
        self.tunmtu.follow_peer(self.peers, peer)

    def mtu_report(self, peer: Peer, assoc: Association, ev: PathMtuChanged,
                   now: float) -> None:
        peer.plpmtu = ev.plpmtu
        peer.inner_mtu = ev.inner_mtu
        if peer.mtu.report(assoc, ev.inner_mtu, now, final=ev.search_complete):
            self.tunmtu.follow_peer(self.peers, peer)  # (no walk over every peer)
        if peer.mtu_timer is not None:
            peer.mtu_timer.schedule(peer.mtu.due)

    def _on_mtu_due(self, peer: Peer, now: float, wall: float) -> None:
        if peer.mtu.poll(now):
            self.tunmtu.follow_peer(self.peers, peer)

    def _on_watchdog(self, now: float, wall: float) -> None:
        self.notifier.watchdog()
        assert self.notifier.watchdog_interval is not None
        self._watchdog.schedule(now + self.notifier.watchdog_interval / 2)

    def apply_hints(self, peer: Peer | None, hints: list[ErrorHint], now: float) -> None:
        """The socket error queue: path MTU hints to the peer's association, errors to
        its status."""
        for hint in hints:
            target = peer
            if target is None and hint.destination is not None:
                target = self.peers.at(hint.destination)
            if target is None:
                continue
            if hint.mtu is not None and target.assoc is not None:
                target.assoc.path_hint(hint.mtu, now)
                if self.role is not None:
                    self.role.poke(target, now)
            elif hint.errno:
                target.last_error = os.strerror(hint.errno)

    # --- reload ------------------------------------------------------------------

    def on_reload(self, now: float) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.cfg.path, name=self.cfg.name)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self.status_text())
            return
        interface = self.cfg.interface
        if new.interface != interface:  # (roam) what is safe now, the rest at a restart
            interface = apply_interface(interface, new.interface, link=self.netlink,
                                        tunmtu=self.tunmtu, set_dns=getattr(self.role,
                                                                            "set_dns", None))
        old_peers = {p.name: p for p in self.cfg.peers}
        new_peers = {p.name: p for p in new.peers}
        old_creds = self.cfg.credentials
        self.cfg = dataclasses.replace(new, interface=interface)
        trust = ca_changed(old_creds, new.credentials)  # (the files were read again)
        changed = describe(old_creds, new.credentials, ca=trust)
        if changed:
            log.info("reload: credentials changed: %s; new handshakes use them, established "
                     "associations keep their keys", changed)
        for name, old in old_peers.items():
            if new_peers.get(name) != old:
                self._remove_peer(name, now)
        for name, peer_cfg in new_peers.items():
            if old_peers.get(name) != peer_cfg:
                self._add_peer(peer_cfg, now)
            else:
                self.peers[name].config = peer_cfg
        if self.role is not None:
            self.role.reloaded(now, trust=trust)
        log.info("reloaded %s: %d peers", self.cfg.path, len(self.peers))
        self.notifier.ready(self.status_text())

    def _remove_peer(self, name: str, now: float) -> None:
        peer = self.peers.get(name)
        if peer is None or self.datapath is None or self.role is None:
            return
        self.role.remove_peer(peer, now)
        self.peers.remove(name)
        if peer.mtu_timer is not None:
            peer.mtu_timer.cancel()
        self.datapath.router.remove_peer(peer)
        if self.netlink is not None:
            self.netlink.remove_routes(peer.config.routes)

    def _add_peer(self, peer_cfg: PeerConfig, now: float) -> None:
        peer = self._new_peer(peer_cfg)
        assert self.datapath is not None and self.role is not None
        self.datapath.router.add_peer(peer, peer_cfg.allowed_prefixes)
        if self.netlink is not None:
            try:
                self.netlink.add_routes(main_table_routes(peer_cfg.routes,
                                                          client=self.is_client))
            except OSError as exc:
                log.warning("peer %s: cannot add routes: %s", peer_cfg.name, exc)
        self.role.add_peer(peer, now)

    # --- status --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        role = self.role
        return snapshot(
            self.cfg, list(self.peers), self.datapath,
            device=self.tun.name if self.tun else self.cfg.interface.device,
            listen=display(self.cfg.interface.listen), mtu=self.tunmtu.mtu,
            mtu_policy=self.tunmtu.policy, started_wall=self.started_wall,
            wall=self.loop.wall,
            rekeying=role.rekeying if role is not None else lambda _peer: False,
            handshake_failures=role.refusals.as_dict() if role is not None else None,
            tcp_closes=role.tcp.closes if role is not None else None,
            untrusted_closes=role.untrusted if role is not None else 0)


def run_daemon(path: Path, name: str | None = None, log_level: str | None = None) -> int:
    """Load the configuration and run until SIGTERM; the exit status of ``dtlsvpn run``.
    ``log_level`` (``run --log-level``) overrides the file's ``LogLevel``."""
    from dtlsvpn.daemon.systemd import setup_logging

    notifier = Notifier()
    try:
        cfg = load_config(path, name=name)
    except ConfigError as exc:
        setup_logging(log_level or "info")
        log.error("%s", exc)
        return 1
    setup_logging(log_level or cfg.interface.log_level)
    for warning in (*cfg.warnings, *forwarding.problems(cfg, unreadable=False)):
        log.warning("%s", warning)
    if not any(p for p in cfg.peers):
        log.error("%s: no [Peer] configured", cfg.path)
        return 1
    if cfg.interface.role == "client" and cfg.peers[0].endpoint is None:
        log.error("%s: the client's [Peer] needs an Endpoint", cfg.path)
        return 1
    return Daemon(cfg, devices=Devices(notifier)).run()
