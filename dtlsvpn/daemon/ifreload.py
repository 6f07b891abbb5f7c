"""``[Interface]`` changes on reload (SIGHUP): applied where that is safe, else kept.

Applied at once, without touching the sessions:

- ``Address``: the addresses that went are removed from the interface, the new ones
  added (a peer's tunnel address changes with the server's config too, so this is the
  operator's business; the sessions stay up);
- ``MTU`` between two fixed values: the interface MTU and the MSS clamp (``auto`` ↔ a
  number changes the policy that PMTU discovery feeds: restart);
- ``MSSClamp``, ``LogLevel``;
- ``DNS`` (a client): the old resolvers restored, the new ones set;
- ``Certificate``, ``PrivateKey``, ``CA``: the files are read again at every reload
  (contents count, not paths: ``trust.py``), so a new path changes nothing more here;
  new handshakes, resumptions and a client's renewals use them, established
  associations keep their keys, and a CA change ends those whose peer no longer
  validates (the roles' ``reloaded``).

Everything else needs a restart and keeps its running value (one warning names the
keys): ``Role``, ``ListenAddress``, ``Device``, ``Ciphers`` (the handshakes in progress
use them), ``HeartbeatInterval``/``DeadPeerTimeout``/
``RekeyInterval``/``ConnectionID`` (negotiated per association), ``TicketStore``,
``StatusSocket``, ``UDPOffload``/``TUNOffload``/``CompiledLane`` (the open sockets and
TUN, the loop's poller),
``FwMark``/``Table``/``KillSwitch`` (the policy rules of a running full tunnel).
Routes are ``[Peer]`` keys: a changed peer is removed and added again, with its routes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from dtlsvpn.config import InterfaceConfig
from dtlsvpn.daemon.devices import Interface
from dtlsvpn.daemon.tunmtu import TunnelMtu

log = logging.getLogger("dtlsvpn")

SAFE = ("addresses", "mtu", "mss_clamp", "log_level", "dns",
        "certificate", "private_key", "ca")  # (credentials: read by every load, trust.py)
KEY_NAMES = {  # field → the README's key, for the warning
    "role": "Role", "listen": "ListenAddress", "device": "Device", "addresses": "Address",
    "mtu": "MTU", "certificate": "Certificate", "private_key": "PrivateKey", "ca": "CA",
    "cipher_suites": "Ciphers", "heartbeat_interval": "HeartbeatInterval",
    "dead_peer_timeout": "DeadPeerTimeout", "ticket_store": "TicketStore",
    "status_socket": "StatusSocket", "mss_clamp": "MSSClamp", "log_level": "LogLevel",
    "rekey_interval": "RekeyInterval", "connection_id": "ConnectionID",
    "udp_offload": "UDPOffload", "tun_offload": "TUNOffload", "dns": "DNS",
    "compiled_lane": "CompiledLane",
    "fwmark": "FwMark", "table": "Table",
    "kill_switch": "KillSwitch",
}


class Addresses(Protocol):
    def set_addresses(self, addresses: tuple[Interface, ...]) -> None: ...
    def set_mtu(self, mtu: int) -> None: ...


def changed_fields(old: InterfaceConfig, new: InterfaceConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(InterfaceConfig)
            if f.compare and getattr(old, f.name) != getattr(new, f.name)]


def split_changes(old: InterfaceConfig, new: InterfaceConfig) -> tuple[list[str], list[str]]:
    """(fields applied now, fields that need a restart)."""
    applied: list[str] = []
    restart: list[str] = []
    for name in changed_fields(old, new):
        safe = name in SAFE
        if name == "mtu":  # only from one fixed value to another
            safe = old.mtu is not None and new.mtu is not None
        (applied if safe else restart).append(name)
    return applied, restart


def apply_interface(old: InterfaceConfig, new: InterfaceConfig, *, link: Addresses | None,
                    tunmtu: TunnelMtu, set_dns: Callable[[tuple[str, ...]], None] | None
                    ) -> InterfaceConfig:
    """Apply what is safe; the configuration now in effect (restart-only keys keep their
    running values)."""
    applied, restart = split_changes(old, new)
    done: dict[str, object] = {}
    for name in applied:
        try:
            _apply(name, new, link, tunmtu, set_dns)
        except OSError as exc:
            log.warning("reload: cannot apply %s: %s; keeping the running value",
                        KEY_NAMES[name], exc)
            continue
        done[name] = getattr(new, name)
    if restart:
        log.warning("reload: [Interface] %s changed: needs a restart (the running values "
                    "stay)", ", ".join(KEY_NAMES[n] for n in restart))
    if done:
        log.info("reload: [Interface] %s applied", ", ".join(KEY_NAMES[n] for n in done))
    return dataclasses.replace(old, **done)  # type: ignore[arg-type]


def _apply(name: str, new: InterfaceConfig, link: Addresses | None, tunmtu: TunnelMtu,
           set_dns: Callable[[tuple[str, ...]], None] | None) -> None:
    if name == "addresses" and link is not None:
        link.set_addresses(new.addresses)
    elif name == "mtu" and link is not None and new.mtu is not None:
        link.set_mtu(new.mtu)
        tunmtu.mtu = new.mtu
        tunmtu.iface = dataclasses.replace(tunmtu.iface, mtu=new.mtu)
        tunmtu.update_mss()
    elif name == "mss_clamp":
        tunmtu.iface = dataclasses.replace(tunmtu.iface, mss_clamp=new.mss_clamp)
        tunmtu.update_mss()
    elif name == "log_level":
        log.setLevel(new.log_level.upper())
    elif name == "dns" and set_dns is not None:
        set_dns(new.dns)
