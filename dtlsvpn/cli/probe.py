"""``dtlsvpn probe HOST:PORT``: is a dtlsvpn (or any DTLS 1.2) server there, and how is the path?

Two connections, on the daemon's event loop and socket code with the DTLS core
(``cli/probe_connection.py``):

1. a full handshake (or whatever the server grants), then heartbeats: the RTT of the
   first answered HeartbeatRequest, and path MTU discovery (RFC 8899) until the PLPMTU
   has not changed for ``PMTU_QUIET`` seconds, or at once when the change that ended
   the search (``search_complete``) came (or half the time left runs out);
2. when the server issued a session ticket, a second handshake offering it: ``resumed``
   says whether the server accepted it (an abbreviated handshake, RFC 5077).

Exit status: 0 when the first handshake completed, 1 when it did not, 2 for bad
arguments or unreadable files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes

from dtlsvpn.cli.argtypes import ArgumentProblem, format_hostport, hostport, read_file, seconds
from dtlsvpn.cli.probe_connection import ClientConnection
from dtlsvpn.config.credentials import read_secret_file
from dtlsvpn.config.values import is_ip_literal
from dtlsvpn.crypto.certs import load_certificates, load_private_key
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.udp import resolve
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PathMtuChanged,
    SessionTicketReceived,
)
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.errors import UsageError

E = TypeVar("E")

DEFAULT_TIMEOUT = 10.0
PMTU_QUIET = 1.5  # seconds without a PLPMTU change that count as "search settled"
HEARTBEAT_INTERVAL = 0.2  # idle seconds before the first keepalive (the RTT sample)


def add_parsers(commands: Any) -> None:
    probe = commands.add_parser(
        "probe", help="handshake with a server; report RTT, path MTU, suite, resumption",
        description="Connect to a DTLS 1.2 server, measure the heartbeat RTT and the path "
                    "MTU, then reconnect with the session ticket it issued. Exit status 0 "
                    "only when the handshake worked.",
    )
    probe.add_argument("server", metavar="HOST:PORT", type=hostport,
                       help="server address ([IPV6]:PORT for IPv6); names are resolved")
    trust = probe.add_mutually_exclusive_group()
    trust.add_argument("--ca", metavar="FILE", help="PEM CA certificates that verify the server")
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the server's certificate")
    probe.add_argument("--cert", metavar="FILE", help="client certificate chain (PEM)")
    probe.add_argument("--key", metavar="FILE", help="private key for --cert (PEM, mode 0600)")
    probe.add_argument("--psk-identity", metavar="ID", help="PSK identity")
    probe.add_argument("--psk-file", metavar="FILE", type=Path,
                       help="file with the PSK in hex (mode 0600, as written by genpsk)")
    probe.add_argument("--server-name", metavar="NAME",
                       help="name to check in the server certificate (default: HOST when "
                            "it is not an address)")
    probe.add_argument("--timeout", metavar="S", type=seconds, default=DEFAULT_TIMEOUT,
                       help=f"seconds for the whole probe (default {DEFAULT_TIMEOUT:g})")
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(func=probe_command, parser_of_command=probe)


def build_config(args: argparse.Namespace) -> DtlsConfig:
    """The client's DtlsConfig from the options; ArgumentProblem for bad ones."""
    if (args.cert is None) != (args.key is None):
        raise ArgumentProblem("--cert and --key go together")
    if (args.psk_identity is None) != (args.psk_file is None):
        raise ArgumentProblem("--psk-identity and --psk-file go together")
    if args.ca is None and not args.insecure and args.psk_file is None:
        raise ArgumentProblem("give --ca (or a PSK) to verify the server, or --insecure")
    kw: dict[str, Any] = {}
    try:
        if args.ca is not None:
            kw["ca_certs"] = tuple(load_certificates(read_file(args.ca, "CA file")))
            if not kw["ca_certs"]:
                raise ArgumentProblem(f"{args.ca}: no certificate found")
        if args.cert is not None:
            kw["certificate_chain"] = tuple(load_certificates(read_file(args.cert,
                                                                        "certificate")))
            kw["private_key"] = load_private_key(read_secret_file(Path(args.key)))
        if args.psk_file is not None:
            text = read_secret_file(args.psk_file).decode("ascii", errors="replace")
            kw["psk"] = bytes.fromhex("".join(text.split()))
            kw["psk_identity"] = args.psk_identity.encode()
    except (ValueError, TypeError) as exc:
        raise ArgumentProblem(str(exc)) from None
    host = args.server[0]
    name = args.server_name
    if name is None and not is_ip_literal(host):
        name = host
    timeout = float(args.timeout)
    kw["heartbeat_settings"] = HeartbeatSettings(
        interval=HEARTBEAT_INTERVAL, retransmit=HEARTBEAT_INTERVAL,
        timeout=max(timeout, 2 * HEARTBEAT_INTERVAL))
    try:
        return DtlsConfig(is_client=True, server_name=name, verify_peer=not args.insecure,
                          initial_timeout=min(1.0, timeout / 4), **kw)
    except (UsageError, ValueError, TypeError) as exc:
        raise ArgumentProblem(f"invalid configuration: {exc}") from None


def _first(events: list[Event], kind: type[E]) -> E | None:
    return next((ev for ev in events if isinstance(ev, kind)), None)


def run_probe(config: DtlsConfig, host: str, port: int, timeout: float) -> dict[str, Any]:
    """Both connections; the result as a dict (see ``format_human`` for the fields)."""
    start = time.monotonic()
    deadline = start + timeout
    result: dict[str, Any] = {
        "server": format_hostport((host, port)),
        "address": None, "handshake": False, "handshake_ms": None, "suite": None,
        "full_handshake": None, "heartbeat": False, "heartbeat_rtt_ms": None,
        "plpmtu": None, "inner_mtu": None, "record_overhead": None, "ticket": False,
        "resumed": None, "resumption_ms": None, "error": None, "certificate": None,
    }
    try:
        family, addr = resolve(host, port)
    except OSError as exc:
        result["error"] = f"cannot resolve {host}: {exc.strerror or exc}"
        return result
    result["address"] = format_hostport(addr)
    with contextlib.closing(Loop()) as loop:
        first = ClientConnection(loop, config, family, addr)
        try:
            completed = _full_handshake(first, result, start, timeout)
        finally:
            first.close()
        if not completed:
            return result
        ticket: SessionTicketReceived | None = _first(first.events, SessionTicketReceived)
        if ticket is None:
            return result
        result["ticket"] = True
        second = ClientConnection(loop, _with_session(config, ticket), family, addr)
        try:
            _resumption(second, result, deadline)
        finally:
            second.close()
    return result


def _why_not(conn: ClientConnection, timeout: float) -> str:
    """Why the handshake did not complete: the core's reason, else ours for giving up
    (which says so when the server answered but never accepted our Finished)."""
    conn.events += conn.assoc.pop_events()
    if not conn.assoc.is_closed:
        conn.assoc.close(conn.loop.refresh_clock())  # our deadline: the core says where
        conn.events += conn.assoc.pop_events()
    closed: AssociationClosed | None = _first(conn.events, AssociationClosed)
    if closed is not None and closed.failure == "finished_unanswered":
        return f"no handshake within {timeout:g} s: {closed.reason}"
    if closed is not None and closed.failure != "closed":
        return closed.reason
    return ("; ".join(dict.fromkeys(conn.send_errors))
            or f"no handshake within {timeout:g} s")


def _full_handshake(conn: ClientConnection, result: dict[str, Any], start: float,
                    timeout: float) -> bool:
    """The first connection: handshake, then RTT and path MTU, and wait for a ticket."""
    deadline = start + timeout
    conn.connect()
    done = conn.run(lambda: conn.assoc.is_established, deadline)
    hs: HandshakeCompleted | None = _first(conn.events, HandshakeCompleted)
    if not done or hs is None:
        result["error"] = _why_not(conn, timeout)
        return False
    result.update(handshake=True, suite=hs.suite_name, full_handshake=not hs.resumed,
                  heartbeat=hs.heartbeat,
                  handshake_ms=round((time.monotonic() - start) * 1000, 2),
                  record_overhead=conn.assoc.record_overhead,
                  certificate=_certificate(hs))
    if hs.heartbeat:
        conn.path_mtu_hint()
        _measure(conn, result, start + timeout / 2)
    if _first(conn.events, SessionTicketReceived) is None:
        # The ticket follows the server's Finished in the same flight; give a
        # straggler a moment.
        conn.run(lambda: _first(conn.events, SessionTicketReceived) is not None,
                 min(deadline, time.monotonic() + 0.2))
    return True


def _certificate(hs: HandshakeCompleted) -> dict[str, str] | None:
    """The server's leaf as shown in the handshake: did a renewal take?"""
    cert = hs.peer_certificate
    if cert is None:
        return None
    return {"subject": cert.subject.rfc4514_string(), "serial": f"{cert.serial_number:x}",
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
            "sha256": cert.fingerprint(hashes.SHA256()).hex()}


def _resumption(conn: ClientConnection, result: dict[str, Any], deadline: float) -> None:
    """The second connection, offering the ticket: did the server accept it?"""
    t0 = time.monotonic()
    conn.connect()
    if conn.run(lambda: conn.assoc.is_established, deadline):
        hs: HandshakeCompleted | None = _first(conn.events, HandshakeCompleted)
        result["resumed"] = bool(hs is not None and hs.resumed)
        result["resumption_ms"] = round((time.monotonic() - t0) * 1000, 2)
    else:
        result["resumed"] = False


def _with_session(config: DtlsConfig, ticket: SessionTicketReceived) -> DtlsConfig:
    return dataclasses.replace(config, resume_session=ticket.session)


def _measure(conn: ClientConnection, result: dict[str, Any], until: float) -> None:
    """Heartbeat RTT and PMTU discovery until the PLPMTU is quiet (or ``until``)."""
    last_change = time.monotonic()
    complete = False  # the latest PLPMTU change ended the search (no need to wait)
    seen = 0

    def settled() -> bool:
        nonlocal last_change, complete, seen
        events = conn.events
        if len(events) != seen:
            changes = [ev for ev in events[seen:] if isinstance(ev, PathMtuChanged)]
            if changes:
                last_change = time.monotonic()
                complete = changes[-1].search_complete
            seen = len(events)
        answered = any(isinstance(ev, HeartbeatAnswered) for ev in events)
        return answered and (complete or time.monotonic() - last_change >= PMTU_QUIET)

    conn.run(settled, until)
    rtts = [ev.rtt for ev in conn.events
            if isinstance(ev, HeartbeatAnswered) and ev.probe_size is None]
    if not rtts:
        rtts = [ev.rtt for ev in conn.events if isinstance(ev, HeartbeatAnswered)]
    if rtts:
        result["heartbeat_rtt_ms"] = round(min(rtts) * 1000, 3)
    result["plpmtu"] = conn.assoc.plpmtu
    result["inner_mtu"] = conn.assoc.inner_mtu


def format_human(r: dict[str, Any]) -> str:
    lines = [f"probe {r['server']}" + (f" ({r['address']})" if r["address"] and
                                        r["address"] != r["server"] else "")]
    if not r["handshake"]:
        lines.append(f"  handshake: FAILED: {r['error']}")
        return "\n".join(lines) + "\n"
    lines += [f"  handshake: ok in {r['handshake_ms']} ms "
              f"({'full' if r['full_handshake'] else 'resumed'})",
              f"  suite: {r['suite']}"]
    cert = r.get("certificate")
    if cert:
        lines.append(f"  certificate: {cert['subject']}, serial {cert['serial']}, "
                     f"expires {cert['not_after']}")
    if not r["heartbeat"]:
        lines.append("  heartbeat: not negotiated (no RTT, no path MTU discovery)")
    else:
        rtt = r["heartbeat_rtt_ms"]
        lines.append(f"  heartbeat rtt: {rtt} ms" if rtt is not None
                     else "  heartbeat rtt: no answer")
        lines.append(f"  path mtu: {r['plpmtu']}, inner mtu: {r['inner_mtu']}"
                     if r["plpmtu"] else "  path mtu: unknown")
    if not r["ticket"]:
        lines.append("  resumed: no (the server issued no session ticket)")
    elif r["resumed"]:
        lines.append(f"  resumed: yes (ticket accepted, {r['resumption_ms']} ms)")
    else:
        lines.append("  resumed: no (ticket refused: full handshake)")
    return "\n".join(lines) + "\n"


def probe_command(args: argparse.Namespace) -> int:
    config = build_config(args)
    host, port = args.server
    result = run_probe(config, host, port, float(args.timeout))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(format_human(result))
    return 0 if result["handshake"] else 1
