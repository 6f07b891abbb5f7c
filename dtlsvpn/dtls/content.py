"""What a record of each content type does on an Association's slow path.

RFC 5246 §6.2.1 / RFC 6520: ``dispatch`` hands an opened record (or an epoch-0 one) to
the handler of its (inner) content type; each returns True when the record was part of
a repeated flight of the peer.  The record layer around it (epochs, replay, the fast
path) is ``association.py``'s; the TLS-over-TCP association has its own table
(``stream.py``), as a stream has no epochs, repeats or heartbeat probing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dtlsvpn.dtls import failures
from dtlsvpn.dtls.epoch import ReadState
from dtlsvpn.dtls.events import AlertReceived, Event
from dtlsvpn.dtls.handshake_input import HandshakeInput
from dtlsvpn.dtls.keepalive import Keepalive
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import DecodeError
from dtlsvpn.wire.alert import decode_alert
from dtlsvpn.wire.constants import AlertDescription, AlertLevel, ContentType
from dtlsvpn.wire.record import Record


class Association(Protocol):
    """What the handlers use of ``association.Association`` (no import: it imports us)."""

    stats: Stats
    _handshake: HandshakeInput
    _read: ReadState
    _established: bool
    _closed: bool
    _events: list[Event]
    _keepalive: Keepalive | None
    _hb_pending: bool

    def _guard(self, fn: Callable[[], object], now: float) -> bool: ...
    def _slow_record(self, rec: Record, now: float, wall: float, out: list[bytes]) -> bool: ...
    def _send_alert(self, level: int, desc: int) -> None: ...
    def _close(self, *, local: bool, reason: str, alert: int | None,
               failure: str | None = None) -> None: ...
    def _note_peer_used_keys(self) -> None: ...


def dispatch(assoc: Association, ctype: int, epoch: int, payload: bytes, now: float,
             wall: float, out: list[bytes]) -> bool:
    handler = _BY_CONTENT_TYPE.get(ctype)
    if handler is None:
        assoc.stats.unexpected += 1  # RFC 5246 §6: unknown content types are dropped here
        return False
    return handler(assoc, epoch, payload, now, wall, out)


def _on_handshake(assoc: Association, epoch: int, payload: bytes, now: float, wall: float,
                  out: list[bytes]) -> bool:
    return assoc._guard(lambda: assoc._handshake.receive(
        payload, now, wall, established=assoc._established), now)


def _on_ccs(assoc: Association, epoch: int, payload: bytes, now: float, wall: float,
            out: list[bytes]) -> bool:
    held: list[Record] = []

    def step() -> None:
        held.extend(assoc._handshake.receive_ccs(payload, now, wall, assoc._read,
                                                 established=assoc._established))

    assoc._guard(step, now)
    for rec in held:  # security.md S9: what overtook the CCS, now in its epoch
        if assoc._closed:
            break
        assoc._slow_record(rec, now, wall, [])
    return False


def _on_alert(assoc: Association, epoch: int, payload: bytes, now: float, wall: float,
              out: list[bytes]) -> bool:
    try:
        level, desc = decode_alert(payload)
    except DecodeError:
        assoc.stats.malformed += 1
        return False
    assoc._events.append(AlertReceived(level=level, description=desc))
    if desc == AlertDescription.close_notify:
        # RFC 5246 §7.2.1: answer with a close_notify of our own, then stop.
        assoc._send_alert(AlertLevel.warning, AlertDescription.close_notify)
        assoc._close(local=False, reason="peer sent close_notify", alert=desc)
    elif level == AlertLevel.fatal:
        reason, failure = failures.peer_alert(desc, assoc._established)
        assoc._close(local=False, reason=reason, alert=desc, failure=failure)
    return False


def _on_application_data(assoc: Association, epoch: int, payload: bytes, now: float,
                         wall: float, out: list[bytes]) -> bool:
    # security.md S6: nothing reaches the tunnel before Finished is verified;
    # epoch-0 application data is never accepted.
    if assoc._established and epoch > 0:
        out.append(payload)
        assoc._note_peer_used_keys()
    else:
        assoc.stats.early_data += 1
    return False


def _on_heartbeat(assoc: Association, epoch: int, payload: bytes, now: float, wall: float,
                  out: list[bytes]) -> bool:
    ka = assoc._keepalive
    # RFC 6520 §3: nothing during a handshake or unprotected.
    if ka is None or epoch == 0:
        assoc.stats.heartbeat_dropped += 1
        return False
    if ka.receive(payload, now):
        assoc._hb_pending = True
    assoc._note_peer_used_keys()
    return False


_ContentHandler = Callable[[Association, int, bytes, float, float, list[bytes]], bool]

_BY_CONTENT_TYPE: dict[int, _ContentHandler] = {
    int(ContentType.handshake): _on_handshake,
    int(ContentType.change_cipher_spec): _on_ccs,
    int(ContentType.alert): _on_alert,
    int(ContentType.application_data): _on_application_data,
    int(ContentType.heartbeat): _on_heartbeat,
}
