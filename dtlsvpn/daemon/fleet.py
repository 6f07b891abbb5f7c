"""A server's part in a fleet: its CID layout and the shared ticket-key file.

Purpose: several servers behind one address (README "More than one server").  The DTLS
core issues CIDs through :class:`~dtlsvpn.dtls.cid.CidLayout`; this module builds that
from the ``[Interface]`` fleet keys, and keeps the server's ticket keys in step with the
fleet's one key file.

Ticket keys, one writer and many readers:
- The writer (``TicketKeyRotation = yes``, the default, and what a lone server is)
  rotates the ring (``maintain``) every :data:`TICK` seconds and after every handshake,
  and rewrites the file atomically when the key set changed.
- A reader (``TicketKeyRotation = no``) never rotates and never writes; every
  :data:`TICK` seconds it looks at the file (one ``stat`` while it is unchanged) and
  takes the new key set when it changed.  A reader whose file is missing or unusable
  keeps the keys it has (at start: none, so its first ticket is sealed with a key of
  its own, which only it can open) and logs why.
- Staleness: a reader's copy that lags by less than the writer's rotation period only
  means its new tickets are sealed with the previous key, which every server still
  opens.  A copy that lags longer makes some tickets unopenable on some servers: the
  client then does a full handshake (certificate or PSK work), never a failure.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from dtlsvpn.config.model import TICKET_KEY_RELOAD, Config, FleetConfig, InterfaceConfig
from dtlsvpn.crypto.tickets import DEFAULT_ROTATE_EVERY, TicketKey, TicketKeyRing
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.dtls.cid import CidLayout, CidMode
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.errors import ConfigError, UsageError

log = logging.getLogger("dtlsvpn.fleet")

TICK = TICKET_KEY_RELOAD


def cid_layout(fleet: FleetConfig) -> CidLayout | None:
    """The CIDs a server with ``ServerId`` issues, or None (random CIDs)."""
    if fleet.server_id is None:
        return None
    return CidLayout(fleet.server_id, CidMode(fleet.cid_mode), fleet.secret)


def ticket_key_path(iface: InterfaceConfig) -> Path:
    """``TicketKeyFile``, by default ``TicketStore/ticket.keys``."""
    if iface.fleet.ticket_key_file is not None:
        return iface.fleet.ticket_key_file
    return iface.ticket_store / "ticket.keys"


class SharedTicketKeys:
    """The server's :class:`TicketKeyRing` and the file it is written to or read from."""

    def __init__(self, iface: InterfaceConfig, loop: Loop) -> None:
        self.path = ticket_key_path(iface)
        self.writer = iface.fleet.ticket_key_rotation
        self.file = TicketKeyFile(self.path)
        self.reloads = 0  # key sets taken from the file after the first load
        self.reload_errors = 0
        try:
            self.ring = (self.file.load(os.urandom) if self.writer
                         else self.file.load(os.urandom, rotate_every=0))
        except ConfigError as exc:
            if self.writer and not self.path.exists():
                pass  # a writer's first start: it makes the file
            else:
                log.warning("%s; starting with %s", exc,
                            "new ticket keys" if self.writer else "no shared ticket keys yet")
            self.ring = TicketKeyRing(os.urandom,
                                      rotate_every=DEFAULT_ROTATE_EVERY if self.writer else 0)
        self.saved: tuple[TicketKey, ...] = self.ring.keys
        self._timer = loop.timer(self._on_tick)

    def start(self, now: float, wall: float) -> None:
        """Arm the timer; a writer writes its keys at once, so readers started after it
        never seal a ticket with a key of their own."""
        self.maintain(wall)
        self._timer.schedule(now + TICK)

    def stop(self) -> None:
        self._timer.cancel()

    def _on_tick(self, now: float, wall: float) -> None:
        self._timer.schedule(now + TICK)
        if self.writer:
            self.maintain(wall)
        else:
            self.reload()

    def maintain(self, wall: float) -> None:
        """Writer: rotate when due and write the file when the key set changed."""
        if not self.writer:
            return
        self.ring.maintain(wall)
        keys = self.ring.keys
        if keys == self.saved or not keys:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.file.save(self.ring)
            self.saved = keys
        except OSError as exc:
            log.warning("cannot save ticket keys to %s: %s", self.path, exc)

    def reload(self) -> bool:
        """Reader: take the file's keys if it changed; True when they were replaced."""
        try:
            changed = self.file.reload_if_changed(self.ring)
        except (ConfigError, UsageError) as exc:
            self.reload_errors += 1
            log.warning("%s; keeping the ticket keys loaded before", exc)
            return False
        if changed:
            self.reloads += 1
            log.info("ticket keys reloaded from %s (%d keys)", self.path, len(self.ring.keys))
        return changed


def peers_digest(cfg: Config) -> str:
    """A fingerprint of the ``[Peer]`` set (what authenticates whom, and their prefixes),
    independent of order, comments and line numbers: equal on servers that agree."""
    items = []
    for p in cfg.peers:
        psk = hashlib.sha256(p.psk).hexdigest() if p.psk is not None else ""
        items.append("|".join([
            p.name, ",".join(sorted(str(n) for n in p.allowed_prefixes)),
            ",".join(sorted(str(n) for n in p.routes)),
            ",".join(sorted(x.hex() for x in p.pinned_spki_sha256)),
            p.certificate_name or "", (p.psk_identity or b"").hex(), psk,
        ]))
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


def fleet_status(cfg: Config, endpoint: ServerEndpoint | None) -> dict[str, Any]:
    """``{"fleet": {...}}`` for a fleet server's status (``{}`` otherwise): who it is, what
    it drops and what it must share with the others.

    ``ticket_key`` is the first 8 hex digits of the current ticket key's name and
    ``peers_digest`` a fingerprint of the [Peer] set: both the same on every server of a
    fleet whose copies are up to date.
    """
    fleet = cfg.interface.fleet
    if fleet.server_id is None or endpoint is None:
        return {}
    stats = endpoint.stats
    ring = endpoint.config.ticket_keys
    keys = ring.keys if ring is not None else ()
    return {"fleet": {
        "server_id": fleet.server_id,
        "cid_mode": fleet.cid_mode,
        "unknown_cid": stats.unknown_cid,
        "cid_foreign": stats.cid_foreign,
        "cid_forged": stats.cid_forged,
        "ticket_key_file": str(ticket_key_path(cfg.interface)),
        "ticket_key_writer": fleet.ticket_key_rotation,
        "ticket_keys": len(keys),
        "ticket_key": keys[-1].key_name.hex()[:8] if keys else None,
        "peers_digest": peers_digest(cfg),
    }}
