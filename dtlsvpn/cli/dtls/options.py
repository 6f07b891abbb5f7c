"""The options of ``dtlsvpn dtls server|client`` and the DtlsConfig they make.

Purpose: every flag of the two debug tools (argparse), and the translation of the parsed
options into one validated :class:`DtlsConfig` per role, with the files they name read
now: certificates, keys, the ``--sess-in`` session and the ``--ticket-keys`` ring.

Invariants:
- A bad value fails in argparse (``argparse.ArgumentTypeError``); options that exclude
  each other, a missing partner option, an unreadable or unusable file raise
  :class:`ArgumentProblem`: both are exit status 2 with a message naming the option or
  the file.  A session file that does not decode, or has expired, is not an error: it
  only means a full handshake (said on stderr).
- ``DtlsConfig`` validates itself once; its objections are ArgumentProblems too.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from dtlsvpn.cli.argtypes import ArgumentProblem, hostport, read_file, seconds
from dtlsvpn.cli.dtls.keylog import open_keylog
from dtlsvpn.cli.dtls.output import log
from dtlsvpn.cli.dtls.stream_options import add_stream_arguments
from dtlsvpn.config.values import is_ip_literal
from dtlsvpn.crypto.certs import PrivateKey, load_certificates, load_private_key
from dtlsvpn.crypto.suites import suite_by_name
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import ConfigError, DecodeError, UsageError
from dtlsvpn.wire.constants import CipherSuite

DEFAULT_LINGER = 0.75  # seconds of quiet after stdin EOF before the client closes
MIN_MTU = 128
MAX_MTU = 65507
DEFAULT_HEARTBEAT_INTERVAL = 0.5  # seconds of idleness before a keepalive, with --heartbeat

Handler = Callable[[argparse.Namespace], int]


# --- argparse -----------------------------------------------------------------------


def _psk_hex(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hex string") from None
    if not key:
        raise argparse.ArgumentTypeError("the PSK must not be empty")
    return key


def _cipher_list(text: str) -> tuple[CipherSuite, ...]:
    suites: list[CipherSuite] = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        try:
            suites.append(CipherSuite(suite_by_name(name).code))
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(f"unknown cipher suite {name!r}") from None
    if not suites:
        raise argparse.ArgumentTypeError("empty cipher suite list")
    return tuple(suites)


def _cid_length(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CID length: {text!r}") from None
    if not 0 <= n <= 32:
        raise argparse.ArgumentTypeError(f"CID length {n} is outside 0..32")
    return n


def _mtu(text: str) -> int:
    if not text.isdigit() or not MIN_MTU <= int(text) <= MAX_MTU:
        raise argparse.ArgumentTypeError(f"MTU must be an integer from {MIN_MTU} to {MAX_MTU}")
    return int(text)


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", metavar="FILE", help="PEM certificate chain (leaf first)")
    p.add_argument("--key", metavar="FILE", help="PEM private key for --cert")
    p.add_argument("--ca", metavar="FILE", help="PEM CA certificates that verify the peer")
    p.add_argument("--psk-identity", metavar="ID", help="PSK identity")
    p.add_argument("--psk", metavar="HEX", type=_psk_hex, help="pre-shared key in hex")
    p.add_argument("--ciphers", metavar="NAME,...", type=_cipher_list,
                   help="cipher suites, IANA or OpenSSL names, comma-separated")
    p.add_argument("--mtu", metavar="N", type=_mtu, default=None,
                   help="largest UDP payload: a fixed path MTU (turns PMTU discovery off)")
    p.add_argument("--keylog", metavar="FILE", help="append NSS key log lines (debug only!)")
    p.add_argument("--heartbeat", action="store_true",
                   help="print the RTT of every answered heartbeat (RFC 6520) and send "
                        "keepalives after --heartbeat-interval seconds of quiet")
    p.add_argument("--heartbeat-interval", metavar="S", type=seconds, default=None,
                   help=f"idle seconds before a keepalive (default {DEFAULT_HEARTBEAT_INTERVAL:g} "
                        "with --heartbeat, else the core's default)")
    p.add_argument("--no-heartbeat", action="store_true",
                   help="neither offer nor accept the heartbeat extension (no liveness, no "
                        "PMTU discovery)")
    p.add_argument("--pmtu", action="store_true",
                   help="print each PLPMTU found by path MTU discovery (RFC 8899) and the "
                        "inner MTU it allows, and a final summary")
    p.add_argument("--cid", metavar="N", type=_cid_length, default=None,
                   help="RFC 9146 connection ID: the length (0-32) of the CID we ask the peer "
                        "to put on its records (default: client 0, server 8)")
    p.add_argument("--no-cid", action="store_true",
                   help="neither offer nor accept connection IDs (RFC 9146)")
    p.add_argument("--no-tickets", action="store_true",
                   help="no session tickets (RFC 5077): client does not offer the extension, "
                        "server issues none")
    add_stream_arguments(p)  # --tcp, --sp: cli/dtls/stream_options.py


def add_server_parser(commands: Any, run: Handler) -> None:
    server = commands.add_parser(
        "server", help="accept DTLS associations; print what they send",
        description="Accept DTLS 1.2 associations. Received application records go to "
                    "stdout; stdin lines go to the most recent association.",
    )
    server.add_argument("--listen", metavar="ADDR:PORT", type=hostport, required=True,
                        help="address to bind; port 0 picks a free port")
    _common_arguments(server)
    server.add_argument("--require-client-cert", action="store_true",
                        help="refuse clients without a certificate signed by --ca")
    server.add_argument("--echo", action="store_true", help="send every record back")
    server.add_argument("--once", action="store_true",
                        help="exit after the first association closes")
    server.add_argument("--ticket-keys", metavar="FILE",
                        help="session ticket key file (mode 0600), created if missing and "
                             "rewritten atomically on rotation; without it tickets use keys "
                             "that live as long as the process")
    server.set_defaults(func=run, parser_of_command=server)


def add_client_parser(commands: Any, run: Handler) -> None:
    client = commands.add_parser(
        "client", help="connect, send stdin lines, print replies",
        description="Connect to a DTLS 1.2 server, send each stdin line as one record and "
                    "print what comes back; close at stdin EOF after a moment of quiet.",
    )
    client.add_argument("server", metavar="HOST:PORT", type=hostport)
    _common_arguments(client)
    client.add_argument("--server-name", metavar="NAME",
                        help="name to check in the server certificate (default: HOST "
                             "unless it is an IP address)")
    client.add_argument("--timeout", metavar="S", type=seconds, default=10.0,
                        help="handshake time limit in seconds (default 10)")
    client.add_argument("--linger", metavar="S", type=seconds, default=DEFAULT_LINGER,
                        help="seconds of quiet after stdin EOF before close_notify")
    client.add_argument("--insecure", action="store_true",
                        help="do not verify the server (debugging only)")
    client.add_argument("--sess-out", metavar="FILE",
                        help="write the session ticket the server issues to FILE (mode 0600, "
                             "atomic replace); it holds the master secret")
    client.add_argument("--sess-in", metavar="FILE",
                        help="offer the ticket in FILE (from --sess-out) to resume that session")
    client.set_defaults(func=run, parser_of_command=client)


# --- files ----------------------------------------------------------------------------


def _load_certs(path: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = load_certificates(read_file(path))
    except ValueError as exc:
        raise ArgumentProblem(f"{path}: not a PEM certificate file ({exc})") from None
    if not certs:
        raise ArgumentProblem(f"{path}: no certificate found")
    return tuple(certs)


def _load_key(path: str) -> PrivateKey:
    try:
        return load_private_key(read_file(path))
    except (ValueError, TypeError) as exc:
        raise ArgumentProblem(f"{path}: not a usable PEM private key ({exc})") from None


def _check_writable(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ArgumentProblem(f"cannot write {path}: directory {directory} is not writable")
    if os.path.isdir(path):
        raise ArgumentProblem(f"cannot write {path}: it is a directory")


def read_session(path: str, wall: float) -> ClientSession | None:
    """The session saved in ``path``; None (full handshake) when unusable.

    An unreadable file is an argument error; a file that does not decode, or
    a session that expired or lacks EMS, only means a full handshake.
    """
    text = read_file(path).decode("ascii", errors="replace")
    try:
        session = ClientSession.decode(text)
    except DecodeError as exc:
        log(f"session: {path} is not a usable session ({exc}): full handshake")
        return None
    if not session.usable(wall):
        log(f"session: the session in {path} has expired or lacks EMS: full handshake")
        return None
    return session


def ticket_key_ring(args: argparse.Namespace, wall: float) -> TicketKeyRing | None:
    """The server's ring: none (--no-tickets), from/into --ticket-keys, or in memory."""
    if args.no_tickets:
        if args.ticket_keys is not None:
            raise ArgumentProblem("--no-tickets and --ticket-keys exclude each other")
        return None
    path = args.ticket_keys
    if path is None:
        return TicketKeyRing(os.urandom)  # resumption works within this run
    if os.path.lexists(path):
        try:
            return TicketKeyFile(path).load(os.urandom)
        except ConfigError as exc:
            raise ArgumentProblem(str(exc)) from None
    ring = TicketKeyRing(os.urandom)
    ring.maintain(wall)
    try:
        TicketKeyFile(path).save(ring)
    except OSError as exc:
        raise ArgumentProblem(f"cannot write {path}: {exc.strerror}") from None
    log(f"session: created ticket key file {path}")
    return ring


# --- DtlsConfig -----------------------------------------------------------------------


def _pair(a: object, b: object, message: str) -> None:
    if (a is None) != (b is None):
        raise ArgumentProblem(message)


def _credentials(args: argparse.Namespace) -> dict[str, Any]:
    _pair(args.cert, args.key, "--cert and --key go together")
    _pair(args.psk, args.psk_identity, "--psk and --psk-identity go together")
    kw: dict[str, Any] = {}
    if args.cert is not None:
        kw["certificate_chain"] = _load_certs(args.cert)
        kw["private_key"] = _load_key(args.key)
    if args.ca is not None:
        kw["ca_certs"] = _load_certs(args.ca)
    if args.psk is not None:
        kw["psk"] = args.psk
        kw["psk_identity"] = args.psk_identity.encode()
    return kw


def _path_options(args: argparse.Namespace) -> dict[str, Any]:
    """--mtu, --cid/--no-cid and the heartbeat flags."""
    kw: dict[str, Any] = {}
    if args.mtu is not None:
        # A fixed MTU: handshake datagrams fit it and no PMTU probe exceeds it.
        if args.pmtu:
            raise ArgumentProblem("--pmtu discovers the path MTU; --mtu fixes it: pick one")
        kw["mtu"] = args.mtu
        kw["pmtu"] = None
    if args.no_cid:
        if args.cid is not None:
            raise ArgumentProblem("--no-cid excludes --cid")
        kw["connection_id"] = False
    elif args.cid is not None:
        kw["cid_length"] = args.cid
    kw.update(_heartbeat_options(args))
    return kw


def _heartbeat_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.no_heartbeat:
        if args.heartbeat or args.pmtu or args.heartbeat_interval is not None:
            raise ArgumentProblem("--no-heartbeat excludes --heartbeat, --heartbeat-interval "
                                  "and --pmtu (PMTU probes are heartbeats)")
        return {"heartbeat": False, "pmtu": None}
    interval = args.heartbeat_interval
    if interval is None and args.heartbeat:
        interval = DEFAULT_HEARTBEAT_INTERVAL
    if interval is None:
        return {}
    default = HeartbeatSettings()
    return {"heartbeat_settings": HeartbeatSettings(
        interval=interval, retransmit=min(default.retransmit, interval),
        timeout=max(default.timeout, 4 * interval))}


def _shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for DtlsConfig shared by both roles."""
    kw = _credentials(args)
    if args.ciphers is not None:
        kw["cipher_suites"] = args.ciphers
    kw.update(_path_options(args))
    if args.keylog is not None:
        kw["keylog"] = open_keylog(args.keylog)  # security: 0600, loud warning
    return kw


def _make_config(**kw: Any) -> DtlsConfig:
    try:
        return DtlsConfig(**kw)
    except (UsageError, ValueError, TypeError) as exc:  # the config validates itself
        raise ArgumentProblem(f"invalid configuration: {exc}") from None


def server_config(args: argparse.Namespace) -> DtlsConfig:
    kw = _shared_options(args)
    if "private_key" not in kw and "psk" not in kw:
        raise ArgumentProblem("the server needs --cert/--key or --psk/--psk-identity")
    if args.require_client_cert and "ca_certs" not in kw:
        raise ArgumentProblem("--require-client-cert needs --ca")
    if "psk" in kw:
        expected, key = kw["psk_identity"], kw["psk"]
        kw["psk_lookup"] = lambda identity: key if identity == expected else None
    kw["require_client_cert"] = args.require_client_cert
    kw["ticket_keys"] = ticket_key_ring(args, time.time())
    return _make_config(is_client=False, **kw)


def client_config(args: argparse.Namespace) -> DtlsConfig:
    kw = _shared_options(args)
    if "ca_certs" not in kw and "psk" not in kw and not args.insecure:
        raise ArgumentProblem("give --ca (or a PSK) to verify the server, or --insecure")
    host = args.server[0]
    name = args.server_name
    if name is None and not is_ip_literal(host):
        name = host
    kw["server_name"] = name
    kw["verify_peer"] = not args.insecure
    if args.no_tickets:
        if args.sess_in is not None or args.sess_out is not None:
            raise ArgumentProblem("--no-tickets excludes --sess-in and --sess-out")
        kw["session_tickets"] = False
    if args.sess_out is not None:
        _check_writable(args.sess_out)
    if args.sess_in is not None:
        kw["resume_session"] = read_session(args.sess_in, time.time())
    return _make_config(is_client=True, **kw)
