"""What ``dtlsvpn dtls server|client`` print, line by line (the interop tests parse it).

- stdout: each received application record, one line per record, flushed
  (:func:`write_record`).
- stderr (:func:`log`): ``listening on HOST:PORT`` (server, once bound);
  ``handshake: DTLSv1.2 <IANA suite> ems=yes|no resumed=yes|no heartbeat=yes|no
  cid=no|RX/TX`` (:func:`handshake_line`; ``heartbeat=yes``: the peer accepts our
  HeartbeatRequests, RFC 6520 §2; ``cid``: the RFC 9146 connection IDs on records to us
  and from us, hex, ``-`` for an empty one); ``error: <reason>`` on failure; ``closed:
  <reason>``; one ``stats: ...`` line per association (:class:`SendStats`: the number and
  the largest size of the datagrams sent, for MTU checks, and the heartbeat counters).
- stderr, on request: ``heartbeat: rtt=<ms>ms[ probe=<size>]`` per answered request of
  ours and ``heartbeat: answered a request from the peer`` (``--heartbeat``);
  ``pmtu: plpmtu=N inner_mtu=M`` per PLPMTU change and ``pmtu: final ...`` at the end
  (``--pmtu``); always ``liveness: ...`` and ``alert: received ...``
  (:func:`event_line`).

The server appends `` peer=ADDR`` to the lines about one association.  Nothing here
decides anything: the role modules choose which line to print when.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PathMtuChanged,
    PeerAlive,
    PeerUnresponsive,
)
from dtlsvpn.wire.constants import AlertDescription, AlertLevel

PEER_HEARTBEAT_LINE = "heartbeat: answered a request from the peer"

_YES_NO = {True: "yes", False: "no"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_record(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")
    out.flush()


def alert_name(code: int | None) -> str:
    if code is None:
        return "none"
    try:
        return AlertDescription(code).name
    except ValueError:
        return f"alert {code}"


def level_name(level: int) -> str:
    try:
        return AlertLevel(level).name
    except ValueError:
        return str(level)


def _cid_text(ev: HandshakeCompleted) -> str:
    """``no``, or ``RX/TX`` in hex (``-`` for an empty CID) as negotiated (RFC 9146)."""
    if ev.rx_cid is None or ev.tx_cid is None:
        return "no"
    return f"{ev.rx_cid.hex() or '-'}/{ev.tx_cid.hex() or '-'}"


def handshake_line(ev: HandshakeCompleted) -> str:
    return (f"handshake: DTLSv1.2 {ev.suite_name} ems={_YES_NO[ev.ems]} "
            f"resumed={_YES_NO[ev.resumed]} heartbeat={_YES_NO[ev.heartbeat]} "
            f"cid={_cid_text(ev)}")


def peer_certificate_line(ev: HandshakeCompleted) -> str | None:
    if ev.peer_certificate is None:
        return None
    return f"peer certificate: {ev.peer_certificate.subject.rfc4514_string()}"


def heartbeat_line(ev: HeartbeatAnswered) -> str:
    probe = "" if ev.probe_size is None else f" probe={ev.probe_size}"
    return f"heartbeat: rtt={ev.rtt * 1000:.1f}ms{probe}"


def pmtu_line(plpmtu: int, inner_mtu: int, prefix: str = "") -> str:
    return f"pmtu: {prefix}plpmtu={plpmtu} inner_mtu={inner_mtu}"


def pmtu_summary(assoc: Association) -> str:
    if assoc.plpmtu is None or assoc.inner_mtu is None:
        why = ("no handshake" if assoc.handshake_result is None
               else "peer does not accept heartbeats" if not assoc.handshake_result.heartbeat
               else "discovery off")
        return f"pmtu: final none ({why})"
    return pmtu_line(assoc.plpmtu, assoc.inner_mtu, "final ")


def closed_reason(ev: AssociationClosed) -> str:
    if ev.alert is None:
        return ev.reason or "closed"
    who = "sent" if ev.local else "received"
    text = f"{who} alert {alert_name(ev.alert)}"
    return f"{text}: {ev.reason}" if ev.reason else text


def event_line(ev: Event, *, heartbeat: bool, pmtu: bool) -> str | None:
    """The line both roles print for an event that needs no decision, or None.

    ``heartbeat`` and ``pmtu`` are the ``--heartbeat`` and ``--pmtu`` flags.
    """
    match ev:
        case HeartbeatAnswered():
            return heartbeat_line(ev) if heartbeat else None
        case PathMtuChanged():
            return pmtu_line(ev.plpmtu, ev.inner_mtu) if pmtu else None
        case PeerUnresponsive():
            return f"liveness: peer unresponsive (silent for {ev.silent_for:.1f} s)"
        case PeerAlive():
            return "liveness: peer alive again"
        case AlertReceived():
            return f"alert: received {level_name(ev.level)} {alert_name(ev.description)}"
    return None


@dataclass(slots=True)
class SendStats:
    """What the shell sent: enough to check datagram sizes against --mtu."""

    datagrams: int = 0
    largest: int = 0
    received: int = 0
    answered: int = 0  # the peer's HeartbeatRequests already logged (--heartbeat)

    def sent(self, datagram: bytes) -> None:
        self.datagrams += 1
        self.largest = max(self.largest, len(datagram))

    def newly_answered(self, assoc: Association) -> int:
        """How many of the peer's requests were answered since the last call."""
        total = assoc.stats.heartbeat_answered
        new, self.answered = total - self.answered, total
        return new

    def line(self, assoc: Association | None = None, suffix: str = "") -> str:
        hb = ""
        if assoc is not None:
            st = assoc.stats
            hb = (f" heartbeats_sent={st.heartbeats_sent} probes_sent={st.probes_sent}"
                  f" heartbeats_answered={st.heartbeat_answered}")
        return (f"stats: datagrams_sent={self.datagrams} max_datagram={self.largest} "
                f"datagrams_received={self.received}{hb}{suffix}")
