"""What the client and server roles share: the daemon as they see it, the slow-path send,
and the per-peer events both roles handle alike.

A role (``client.py``, ``server.py``) owns its sockets, its associations and their
timers; it reaches the rest of the daemon only through :class:`Host`: the loop, the
devices, the peer table, the notifier, the TUN MTU policy and the router.  Events
that mean the same in both roles (heartbeat RTT, PMTU reports, alerts, a peer heard
again) go through :func:`peer_event`; each role matches the rest itself.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Protocol

from dtlsvpn.config import Config
from dtlsvpn.daemon.devices import Addr, Platform, UdpPort
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.peers import Peer, PeerTable
from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.udp import ErrorHint, normalise
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.events import (
    AlertReceived,
    Event,
    HeartbeatAnswered,
    PathMtuChanged,
    PeerAlive,
)
from dtlsvpn.dtls.rekey import Rekeyed

log = logging.getLogger("dtlsvpn")

REKEY_GRACE = 10.0  # seconds old keys stay usable after a renewal (RFC-less policy)
REKEY_GRACE_MIN = 2.0


def rekey_grace(interval: float | None) -> float:
    """How long the old association of a renewal still opens records: 10 s, or half the
    interval (at least 2 s) when renewals come more often than every 20 s."""
    if interval is None:
        return REKEY_GRACE
    return max(REKEY_GRACE_MIN, min(REKEY_GRACE, interval / 2))


def display(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    host, port = normalise(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Host(Protocol):
    """The daemon's services, as the roles use them."""

    cfg: Config
    loop: Loop
    devices: Platform
    peers: PeerTable
    notifier: Notifier

    def status_line(self) -> str: ...
    def ready(self, status: str) -> None: ...
    def mtu_report(self, peer: Peer, assoc: Association, ev: PathMtuChanged,
                   now: float) -> None: ...
    def apply_hints(self, peer: Peer | None, hints: list[ErrorHint], now: float) -> None: ...
    def set_underlay(self, peer: Peer, addr: Addr | None) -> None: ...
    def carrier_changed(self, peer: Peer) -> None: ...


def send_datagrams(host: Host, sock: UdpPort, out: list[bytes], addr: Addr | None,
                   peer: Peer | None, now: float,
                   failed: Callable[[Peer, OSError, float], None] | None = None) -> None:
    """Slow-path output (flights, alerts, heartbeats) to ``addr`` (None: connected);
    ``failed`` is told of each send the kernel refused (the client: EMSGSIZE, roaming)."""
    for d in out:
        try:
            if addr is None:
                sock.send(d)
            else:
                sock.sendto(d, addr)
        except BlockingIOError:
            if peer is not None:
                peer.drop("send_buffer_full")
        except OSError as exc:
            # EMSGSIZE: a PMTU probe above the local interface MTU (the kernel's answer
            # is read from the error queue as a hint).
            if peer is not None:
                peer.drop("emsgsize" if exc.errno == errno.EMSGSIZE else "send_error")
                if exc.errno != errno.EMSGSIZE:
                    peer.last_error = exc.strerror
            if exc.errno == errno.EMSGSIZE:
                host.apply_hints(peer, sock.read_errors(), now)
            if failed is not None and peer is not None:
                failed(peer, exc, now)


def peer_event(host: Host, peer: Peer | None, assoc: Association, addr: Addr | None,
               ev: Event | Rekeyed, now: float) -> None:
    """The events both roles handle alike; any other event is ignored here."""
    match ev:
        case PathMtuChanged() if peer is not None and peer.assoc is assoc:
            # (not the reports of a renewal's old association: the new one's count)
            host.mtu_report(peer, assoc, ev, now)
        case HeartbeatAnswered() if peer is not None:
            peer.rtt = ev.rtt
        case PeerAlive() if peer is not None:
            log.info("peer %s: heard again", peer.name)
        case AlertReceived():
            log.debug("alert %s/%s from %s", ev.level, ev.description, display(addr))
        case _:
            pass
