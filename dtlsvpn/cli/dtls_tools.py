"""``dtlsvpn dtls server|client``: debug tools around the sans-I/O DTLS core.

A deliberately small real-socket shell (architecture.md, "Keep the shell tiny"):
one UDP socket, stdin, and a self-pipe for signals, multiplexed with ``poll``.
Each loop iteration reads ``time.monotonic()`` once (the core's ``now``) and
``time.time()`` once (the wall clock for certificate and ticket checks), feeds
datagrams in, fires the core's timer when its deadline (``get_timer()``) has
passed, then drains events and outgoing datagrams.

Output contract (the interop tests parse it):
- stdout: each received application record, one line per record, flushed.
- stderr: ``listening on HOST:PORT`` (server, once bound),
  ``handshake: DTLSv1.2 <IANA suite> ems=yes|no resumed=yes|no heartbeat=yes|no
  cid=no|RX/TX[ peer=ADDR]`` on one line (``heartbeat=yes``: the peer accepts our
  HeartbeatRequests, RFC 6520 §2; ``cid``: the RFC 9146 connection IDs on records to us
  and from us, hex, ``-`` for an empty one),
  ``error: <reason>`` on failure, and a ``stats: ...`` line per association with
  the number and the largest size of the datagrams we sent (MTU checks) and the
  heartbeat counters (``heartbeats_sent``, ``probes_sent``, ``heartbeats_answered``).
- stderr, on request: ``heartbeat: rtt=<ms>ms[ probe=<size>]`` per answered
  HeartbeatRequest of ours and ``heartbeat: answered a request from the peer``
  per request of the peer's we answered, logged once the response is sent
  (``--heartbeat``; ``probe=`` for a PMTU probe of that IP packet size);
  ``pmtu: plpmtu=N inner_mtu=M`` per PLPMTU change and
  ``pmtu: final plpmtu=N inner_mtu=M`` (or ``pmtu: final none (...)``) at the
  end (``--pmtu``); always ``liveness: peer unresponsive ...`` / ``liveness:
  peer alive again``; ``session: ...`` lines about tickets (``--sess-in``,
  ``--sess-out``, ``--ticket-keys``).

Exit status: 2 for bad arguments or unreadable files; the client exits 0 only
if its handshake completed; ``server --once`` exits 0 only if the association
it served completed its handshake.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dtlsvpn.crypto.certs import load_certificates, load_private_key
from dtlsvpn.crypto.suites import suite_by_name
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
    HandshakeCompleted,
    HeartbeatAnswered,
    PathMtuChanged,
    PeerAddressChanged,
    PeerAlive,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import ConfigError, DecodeError, UsageError
from dtlsvpn.fileutil import replace_private
from dtlsvpn.wire.constants import AlertDescription, AlertLevel, CipherSuite

Addr = tuple[str, int]

MAX_DATAGRAM = 65535
RECV_BUDGET = 64  # datagrams drained from the socket per wake-up
DEFAULT_LINGER = 0.75  # seconds of quiet after stdin EOF before the client closes
MIN_MTU = 128
MAX_MTU = 65507
DEFAULT_HEARTBEAT_INTERVAL = 0.5  # seconds of idleness before a keepalive, with --heartbeat
TICKET_RELOAD_GAP = 1.0  # seconds between two checks of the --ticket-keys file

# Linux <linux/in.h>, <linux/in6.h>: the socket module does not export these.
IP_MTU_DISCOVER, IP_MTU, IP_PMTUDISC_PROBE = 10, 14, 3
IPV6_MTU_DISCOVER, IPV6_MTU, IPV6_PMTUDISC_PROBE = 23, 24, 3


class ArgumentProblem(Exception):
    """A bad option value or an unreadable file: reported with exit status 2."""


# --- argument parsing -------------------------------------------------------


def parse_hostport(text: str) -> Addr:
    """``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port); argparse type function."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise argparse.ArgumentTypeError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


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
    p.add_argument("--heartbeat-interval", metavar="S", type=_seconds, default=None,
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


def add_parsers(commands: Any) -> None:
    """Register ``server`` and ``client`` on an argparse subparsers object."""
    server = commands.add_parser(
        "server", help="accept DTLS associations; print what they send",
        description="Accept DTLS 1.2 associations. Received application records go to "
                    "stdout; stdin lines go to the most recent association.",
    )
    server.add_argument("--listen", metavar="ADDR:PORT", type=parse_hostport, required=True,
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
    server.set_defaults(func=run_server, parser_of_command=server)

    client = commands.add_parser(
        "client", help="connect, send stdin lines, print replies",
        description="Connect to a DTLS 1.2 server, send each stdin line as one record and "
                    "print what comes back; close at stdin EOF after a moment of quiet.",
    )
    client.add_argument("server", metavar="HOST:PORT", type=parse_hostport)
    _common_arguments(client)
    client.add_argument("--server-name", metavar="NAME",
                        help="name to check in the server certificate (default: HOST "
                             "unless it is an IP address)")
    client.add_argument("--timeout", metavar="S", type=_seconds, default=10.0,
                        help="handshake time limit in seconds (default 10)")
    client.add_argument("--linger", metavar="S", type=_seconds, default=DEFAULT_LINGER,
                        help="seconds of quiet after stdin EOF before close_notify")
    client.add_argument("--insecure", action="store_true",
                        help="do not verify the server (debugging only)")
    client.add_argument("--sess-out", metavar="FILE",
                        help="write the session ticket the server issues to FILE (mode 0600, "
                             "atomic replace); it holds the master secret")
    client.add_argument("--sess-in", metavar="FILE",
                        help="offer the ticket in FILE (from --sess-out) to resume that session")
    client.set_defaults(func=run_client, parser_of_command=client)


# --- configuration ----------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ArgumentProblem(f"cannot read {path}: {exc.strerror}") from None


def _load_certs(path: str) -> tuple[Any, ...]:
    try:
        certs = load_certificates(_read(path))
    except ValueError as exc:
        raise ArgumentProblem(f"{path}: not a PEM certificate file ({exc})") from None
    if not certs:
        raise ArgumentProblem(f"{path}: no certificate found")
    return tuple(certs)


def _load_key(path: str) -> Any:
    try:
        return load_private_key(_read(path))
    except (ValueError, TypeError) as exc:
        raise ArgumentProblem(f"{path}: not a usable PEM private key ({exc})") from None


def _open_keylog(path: str | None) -> Callable[[str], None] | None:
    """A keylog callback appending to ``path``; the file is checked for writing now."""
    if path is None:
        return None
    try:
        with open(path, "a", encoding="ascii"):
            pass
    except OSError as exc:
        raise ArgumentProblem(f"cannot open {path}: {exc.strerror}") from None

    def write(line: str) -> None:
        # Opened per line: the core calls this once per handshake.
        with open(path, "a", encoding="ascii") as f:
            f.write(line if line.endswith("\n") else line + "\n")

    return write


def _credentials(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for DtlsConfig shared by both roles."""
    if (args.cert is None) != (args.key is None):
        raise ArgumentProblem("--cert and --key go together")
    if (args.psk is None) != (args.psk_identity is None):
        raise ArgumentProblem("--psk and --psk-identity go together")
    kw: dict[str, Any] = {}
    if args.cert is not None:
        kw["certificate_chain"] = _load_certs(args.cert)
        kw["private_key"] = _load_key(args.key)
    if args.ca is not None:
        kw["ca_certs"] = _load_certs(args.ca)
    if args.psk is not None:
        kw["psk"] = args.psk
        kw["psk_identity"] = args.psk_identity.encode()
    if args.ciphers is not None:
        kw["cipher_suites"] = args.ciphers
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
    if args.no_heartbeat:
        if args.heartbeat or args.pmtu or args.heartbeat_interval is not None:
            raise ArgumentProblem("--no-heartbeat excludes --heartbeat, --heartbeat-interval "
                                  "and --pmtu (PMTU probes are heartbeats)")
        kw["heartbeat"] = False
        kw["pmtu"] = None
    interval = args.heartbeat_interval
    if interval is None and args.heartbeat:
        interval = DEFAULT_HEARTBEAT_INTERVAL
    if interval is not None:
        default = HeartbeatSettings()
        kw["heartbeat_settings"] = HeartbeatSettings(
            interval=interval, retransmit=min(default.retransmit, interval),
            timeout=max(default.timeout, 4 * interval))
    keylog = _open_keylog(args.keylog)
    if keylog is not None:
        kw["keylog"] = keylog
    return kw


def _make_config(**kw: Any) -> DtlsConfig:
    try:
        return DtlsConfig(**kw)
    except (UsageError, ValueError, TypeError) as exc:  # the config validates itself
        raise ArgumentProblem(f"invalid configuration: {exc}") from None


def server_config(args: argparse.Namespace) -> DtlsConfig:
    kw = _credentials(args)
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


def client_config(args: argparse.Namespace) -> DtlsConfig:
    kw = _credentials(args)
    if "ca_certs" not in kw and "psk" not in kw and not args.insecure:
        raise ArgumentProblem("give --ca (or a PSK) to verify the server, or --insecure")
    host = args.server[0]
    name = args.server_name
    if name is None and not _is_ip_literal(host):
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
    text = _read(path).decode("ascii", errors="replace")
    try:
        session = ClientSession.decode(text)
    except DecodeError as exc:
        log(f"session: {path} is not a usable session ({exc}): full handshake")
        return None
    if not session.usable(wall):
        log(f"session: the session in {path} has expired or lacks EMS: full handshake")
        return None
    return session


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600."""
    replace_private(path, text.encode("ascii"))


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --- shell plumbing ---------------------------------------------------------


def format_addr(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _alert_name(code: int | None) -> str:
    if code is None:
        return "none"
    try:
        return AlertDescription(code).name
    except ValueError:
        return f"alert {code}"


def _level_name(level: int) -> str:
    try:
        return AlertLevel(level).name
    except ValueError:
        return str(level)


_YES_NO = {True: "yes", False: "no"}


def _cid_text(ev: HandshakeCompleted) -> str:
    """``no``, or ``RX/TX`` in hex (``-`` for an empty CID) as negotiated (RFC 9146)."""
    if ev.rx_cid is None or ev.tx_cid is None:
        return "no"
    return f"{ev.rx_cid.hex() or '-'}/{ev.tx_cid.hex() or '-'}"


def handshake_line(ev: HandshakeCompleted) -> str:
    return (f"handshake: DTLSv1.2 {ev.suite_name} ems={_YES_NO[ev.ems]} "
            f"resumed={_YES_NO[ev.resumed]} heartbeat={_YES_NO[ev.heartbeat]} "
            f"cid={_cid_text(ev)}")


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


def enable_pmtu_probing(sock: socket.socket) -> None:
    """Set DF and ignore the kernel's PMTU cache (IP_PMTUDISC_PROBE), Linux only.

    Without it the kernel fragments a datagram above a path MTU it learnt from
    ICMP, so a PMTU probe would get through whatever its size.  With it a
    probe larger than the path is lost, and one larger than the interface
    fails with EMSGSIZE (a hint for the core).
    """
    if not sys.platform.startswith("linux"):
        return
    if sock.family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
    with contextlib.suppress(OSError):  # also for IPv4-mapped peers of an IPv6 socket
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)


def kernel_path_mtu(sock: socket.socket) -> int | None:
    """The connected socket's IP_MTU / IPV6_MTU (an IP packet size), if the kernel says."""
    if not sys.platform.startswith("linux"):
        return None
    level, name = ((socket.IPPROTO_IPV6, IPV6_MTU) if sock.family == socket.AF_INET6
                   else (socket.IPPROTO_IP, IP_MTU))
    try:
        value = sock.getsockopt(level, name)
    except OSError:
        return None
    return value if value > 0 else None


def closed_reason(ev: AssociationClosed) -> str:
    if ev.alert is None:
        return ev.reason or "closed"
    who = "sent" if ev.local else "received"
    text = f"{who} alert {_alert_name(ev.alert)}"
    return f"{text}: {ev.reason}" if ev.reason else text


@dataclass(slots=True)
class SendStats:
    """What the shell sent: enough to check datagram sizes against --mtu."""

    datagrams: int = 0
    largest: int = 0
    received: int = 0
    answered: int = 0  # the peer's HeartbeatRequests already logged (--heartbeat)

    def line(self, assoc: Association | None = None, suffix: str = "") -> str:
        hb = ""
        if assoc is not None:
            st = assoc.stats
            hb = (f" heartbeats_sent={st.heartbeats_sent} probes_sent={st.probes_sent}"
                  f" heartbeats_answered={st.heartbeat_answered}")
        return (f"stats: datagrams_sent={self.datagrams} max_datagram={self.largest} "
                f"datagrams_received={self.received}{hb}{suffix}")


class StdinLines:
    """Non-blocking line reader over fd 0; a partial last line is delivered at EOF."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = sys.stdin.fileno() if sys.stdin is not None else None
        except (OSError, ValueError):
            self.fd = None
        self.eof = self.fd is None
        self._buf = b""

    def read(self) -> list[bytes]:
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            rest, self._buf = self._buf, b""
            return [rest] if rest else []
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        return [line + b"\n" for line in lines]


class Reactor:
    """poll() over the socket, stdin and a signal self-pipe.

    ``PollSelector`` rather than epoll: stdin may be a regular file or
    /dev/null, which epoll refuses.
    """

    def __init__(self, sock: socket.socket, stdin: StdinLines) -> None:
        self.sock = sock
        self.stdin = stdin
        self.stop_requested = False
        self.selector = selectors.PollSelector()
        self.selector.register(sock, selectors.EVENT_READ, "sock")
        if stdin.fd is not None:
            self.selector.register(stdin.fd, selectors.EVENT_READ, "stdin")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "signal")
        self._old_wakeup: int | None = None
        self._old_handlers: dict[int, Any] = {}
        try:
            self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, lambda _s, _f: None)
        except ValueError:  # not the main thread: no signal handling
            pass

    def wait(self, deadlines: Iterable[float | None], now: float) -> list[str]:
        """Block until input or the earliest deadline; return the ready sources."""
        pending = [d for d in deadlines if d is not None]
        timeout = max(0.0, min(pending) - now) if pending else None
        ready = [str(key.data) for key, _ in self.selector.select(timeout)]
        if "signal" in ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            self.stop_requested = True
        return ready

    def stdin_lines(self) -> list[bytes]:
        lines = self.stdin.read()
        if self.stdin.eof and self.stdin.fd is not None:
            self.selector.unregister(self.stdin.fd)
            self.stdin.fd = None
        return lines

    def close(self) -> None:
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old_handlers.items():
            # Shutting down already: where the signal would kill us (the default, which
            # is also what CPython's finalization puts back for Python handlers), it is
            # ignored instead, so that a second SIGTERM (coreutils `timeout` signals its
            # child, then the child's process group) cannot turn exit status 0 into
            # death by signal.
            signal.signal(sig, signal.SIG_IGN if handler is signal.SIG_DFL else handler)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.sock.close()


def write_record(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")
    out.flush()


# --- server -----------------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    config = server_config(args)
    host, port = args.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log(f"error: cannot listen on {format_addr((host, port))}: {exc.strerror}")
        return 1
    sock.setblocking(False)
    if config.pmtu is not None:
        enable_pmtu_probing(sock)
    log(f"listening on {format_addr(sock.getsockname())}")
    server = DtlsServer(args, config, Reactor(sock, StdinLines()))
    try:
        return server.run()
    finally:
        server.reactor.close()


class DtlsServer:
    """A ServerEndpoint behind one socket."""

    def __init__(self, args: argparse.Namespace, config: DtlsConfig, reactor: Reactor) -> None:
        self.echo: bool = args.echo
        self.once: bool = args.once
        self.show_heartbeat: bool = args.heartbeat
        self.show_pmtu: bool = args.pmtu
        self.endpoint = ServerEndpoint(config)
        self.reactor = reactor
        self.sock = reactor.sock
        self.current: Addr | None = None  # most recently established association
        self.pending: list[bytes] = []  # stdin lines waiting for an association
        self.completed: set[Addr] = set()
        self.stats: dict[Addr, SendStats] = {}
        self.exit_status: int | None = None
        # --ticket-keys: the file is re-read when it changes (another server rotated)
        # and rewritten when our ring rotated.
        self.ticket_path: str | None = args.ticket_keys
        self.ticket_file = None if args.ticket_keys is None else TicketKeyFile(args.ticket_keys)
        self.ticket_keys = config.ticket_keys
        self.saved_keys = () if self.ticket_keys is None else self.ticket_keys.keys
        self.next_reload = 0.0

    def run(self) -> int:
        now = time.monotonic()
        while self.exit_status is None:
            ready = self.reactor.wait([self.endpoint.get_timer()], now)
            now = time.monotonic()
            wall = time.time()
            if "sock" in ready:
                self._drain_socket(now, wall)
            if "stdin" in ready:
                for line in self.reactor.stdin_lines():
                    self._send_line(line)
            deadline = self.endpoint.get_timer()
            if deadline is not None and deadline <= now:
                self.endpoint.handle_timer(now)
            if self.reactor.stop_requested:
                self._close_all(now)
                self.exit_status = 0
            self._service(now)
        return self.exit_status

    def _send(self, datagrams: Iterable[bytes], addr: Addr) -> None:
        st = self.stats.setdefault(addr, SendStats())
        for d in datagrams:
            try:
                self.sock.sendto(d, addr)
            except OSError as exc:
                # EMSGSIZE: a PMTU probe above the interface MTU (IP_PMTUDISC_PROBE);
                # it counts as lost, which is what the search needs to learn.
                if exc.errno != errno.EMSGSIZE:
                    log(f"warning: sendto {format_addr(addr)}: {exc.strerror}")
                continue
            st.datagrams += 1
            st.largest = max(st.largest, len(d))

    def _drain_socket(self, now: float, wall: float) -> None:
        for _ in range(RECV_BUDGET):
            try:
                data, raw_addr = self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue
            addr: Addr = (raw_addr[0], raw_addr[1])
            if addr not in self.endpoint.associations:
                self._reload_ticket_keys(now)
            assoc, out = self.endpoint.receive(data, addr, now, wall)
            if assoc is None:
                self._send(out, addr)
                continue
            self.stats.setdefault(addr, SendStats()).received += 1
            for record in out:
                write_record(record)
                if self.echo:
                    self._send(assoc.protect([record]), addr)

    def _reload_ticket_keys(self, now: float) -> None:
        """Before a new association: pick up keys another server wrote (rate-limited)."""
        if self.ticket_file is None or self.ticket_keys is None or now < self.next_reload:
            return
        self.next_reload = now + TICKET_RELOAD_GAP
        try:
            if self.ticket_file.reload_if_changed(self.ticket_keys):
                self.saved_keys = self.ticket_keys.keys
                log(f"session: reloaded ticket keys from {self.ticket_path}")
        except ConfigError as exc:
            log(f"warning: keeping the current ticket keys: {exc}")

    def _save_ticket_keys(self) -> None:
        """After a handshake: write the ring back if sealing rotated it."""
        ring = self.ticket_keys
        if self.ticket_file is None or ring is None or ring.keys == self.saved_keys:
            return
        try:
            self.ticket_file.save(ring)
        except OSError as exc:
            log(f"warning: cannot write {self.ticket_path}: {exc.strerror}")
            return
        self.saved_keys = ring.keys
        log(f"session: ticket keys rotated, saved to {self.ticket_path}")

    def _send_line(self, line: bytes) -> None:
        assoc = self.endpoint.associations.get(self.current) if self.current else None
        if assoc is not None and assoc.is_established and not assoc.is_closed:
            assert self.current is not None
            self._send(assoc.protect([line]), self.current)
        else:
            self.pending.append(line)

    def _service(self, now: float) -> None:
        for addr, assoc in list(self.endpoint.associations.items()):
            for ev in assoc.pop_events():
                self._on_event(addr, assoc, ev)
        for addr, assoc in list(self.endpoint.associations.items()):
            self._send(assoc.datagrams_to_send(now), addr)
            if self.show_heartbeat:
                st = self.stats.setdefault(addr, SendStats())
                for _ in range(assoc.stats.heartbeat_answered - st.answered):
                    log(f"heartbeat: answered a request from the peer peer={format_addr(addr)}")
                st.answered = assoc.stats.heartbeat_answered
        self.endpoint.remove_closed()

    def _on_event(self, addr: Addr, assoc: Association, ev: object) -> None:
        peer = format_addr(addr)
        if isinstance(ev, HandshakeCompleted):
            log(f"{handshake_line(ev)} peer={peer}")
            if ev.psk_identity is not None:
                log(f"psk identity: {ev.psk_identity.decode(errors='replace')}")
            if ev.peer_certificate is not None:
                log(f"peer certificate: {ev.peer_certificate.subject.rfc4514_string()}")
            self.completed.add(addr)
            self.current = addr
            self._save_ticket_keys()
            lines, self.pending = self.pending, []
            if lines:
                self._send(assoc.protect(lines), addr)
        elif isinstance(ev, HeartbeatAnswered):
            if self.show_heartbeat:
                log(f"{heartbeat_line(ev)} peer={peer}")
        elif isinstance(ev, PathMtuChanged):
            if self.show_pmtu:
                log(f"{pmtu_line(ev.plpmtu, ev.inner_mtu)} peer={peer}")
        elif isinstance(ev, PeerAddressChanged):
            # RFC 9146 §6: the endpoint moved the association; follow it.
            old = ev.old if isinstance(ev.old, tuple) else None
            log(f"roaming: peer moved from {format_addr(old) if old else ev.old} to {peer}")
            if old is not None and old != addr:
                if old in self.stats:
                    self.stats[addr] = self.stats.pop(old)
                if old in self.completed:
                    self.completed.discard(old)
                    self.completed.add(addr)
                if self.current == old:
                    self.current = addr
        elif isinstance(ev, PeerUnresponsive):
            log(f"liveness: peer unresponsive (silent for {ev.silent_for:.1f} s) peer={peer}")
        elif isinstance(ev, PeerAlive):
            log(f"liveness: peer alive again peer={peer}")
        elif isinstance(ev, AlertReceived):
            log(f"alert: received {_level_name(ev.level)} {_alert_name(ev.description)} "
                f"peer={peer}")
        elif isinstance(ev, AssociationClosed):
            ok = addr in self.completed
            if ok:
                log(f"closed: {closed_reason(ev)} peer={peer}")
            else:
                log(f"error: handshake with {peer} failed: {closed_reason(ev)}")
            if ok and self.show_pmtu:
                log(f"{pmtu_summary(assoc)} peer={peer}")
            log(self.stats.get(addr, SendStats()).line(assoc, f" peer={peer}"))
            self.completed.discard(addr)
            if self.current == addr:
                self.current = None
            if self.once and self.exit_status is None:
                self.exit_status = 0 if ok else 1

    def _close_all(self, now: float) -> None:
        for assoc in self.endpoint.associations.values():
            if not assoc.is_closed:
                assoc.close(now)


# --- client -----------------------------------------------------------------


def run_client(args: argparse.Namespace) -> int:
    config = client_config(args)
    host, port = args.server
    if port == 0:
        raise ArgumentProblem("the server port must not be 0")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        log(f"error: cannot resolve {host}: {exc.strerror}")
        return 1
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        log(f"error: cannot reach {format_addr(sockaddr)}: {exc.strerror}")
        return 1
    sock.setblocking(False)
    if config.pmtu is not None:
        enable_pmtu_probing(sock)
    client = DtlsClient(args, config, Reactor(sock, StdinLines()), format_addr(sockaddr))
    try:
        return client.run()
    finally:
        client.reactor.close()


class DtlsClient:
    """One client Association over a connected socket."""

    def __init__(self, args: argparse.Namespace, config: DtlsConfig, reactor: Reactor,
                 peer: str) -> None:
        self.timeout: float = args.timeout
        self.linger: float = args.linger
        self.show_heartbeat: bool = args.heartbeat
        self.show_pmtu: bool = args.pmtu
        self.sess_in: str | None = args.sess_in
        self.sess_out: str | None = args.sess_out
        self.offered_ticket = config.session_tickets and config.resume_session is not None
        self.ticket_rejected = False
        self.ticket_saved = False
        self.resumed = False
        self.answered = 0  # the peer's HeartbeatRequests answered so far (--heartbeat)
        self.reactor = reactor
        self.sock = reactor.sock
        ip_header = 40 if self.sock.family == socket.AF_INET6 else 20
        self.assoc = Association(config, peer=peer.encode(), ip_header=ip_header)
        self.pending: list[bytes] = []
        self.stats = SendStats()
        self.established = False
        self.last_activity = 0.0
        self.net_error: str | None = None
        self.exit_status: int | None = None

    def run(self) -> int:
        now = time.monotonic()
        hs_deadline = now + self.timeout
        self.assoc.connect(now, time.time())
        self._service(now)
        while self.exit_status is None:
            close_at = self._close_deadline()
            wait_for = [self.assoc.get_timer(), close_at, None if self.established else hs_deadline]
            ready = self.reactor.wait(wait_for, now)
            now = time.monotonic()
            wall = time.time()
            if "sock" in ready:
                self._drain_socket(now, wall)
            if "stdin" in ready:
                self.pending.extend(self.reactor.stdin_lines())
                if self.reactor.stdin.eof:
                    self.last_activity = max(self.last_activity, now)
            timer = self.assoc.get_timer()
            if timer is not None and timer <= now:
                self.assoc.handle_timer(now)
            self._service(now)
            if self.exit_status is not None:
                break
            if self.established and self.pending:
                lines, self.pending = self.pending, []
                self._send(self.assoc.protect(lines), now)
                self.last_activity = now
            if not self.established and now >= hs_deadline:
                why = f" ({self.net_error})" if self.net_error else ""
                log(f"error: handshake timed out after {self.timeout:g} s{why}")
                self.exit_status = 1
            elif self.reactor.stop_requested or (
                (close_at := self._close_deadline()) is not None and now >= close_at
            ):
                self.assoc.close(now)
                self._service(now)
                self.exit_status = 0 if self.established else 1
        self._finish()
        return self.exit_status

    def _finish(self) -> None:
        if self.show_pmtu and self.established:
            log(pmtu_summary(self.assoc))
        if self.sess_out is not None and not self.ticket_saved:
            stale = (self.ticket_rejected and self.sess_in is not None
                     and _same_file(self.sess_in, self.sess_out))
            if stale:
                # The ticket in it was refused: offering it again is pointless.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.sess_out)
                log(f"session: no new ticket; removed the refused one from {self.sess_out}")
            elif self.resumed:
                log(f"session: resumed without a new ticket; {self.sess_out} not written")
            else:
                log(f"session: no ticket received; {self.sess_out} not written")
        log(self.stats.line(self.assoc))

    def _close_deadline(self) -> float | None:
        if self.established and self.reactor.stdin.eof and not self.pending:
            return self.last_activity + self.linger
        return None

    def _send(self, datagrams: Iterable[bytes], now: float) -> None:
        for d in datagrams:
            try:
                self.sock.send(d)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    # A PMTU probe above the interface MTU: a hint, never trusted
                    # above what a probe confirmed (Association.path_hint).
                    mtu = kernel_path_mtu(self.sock)
                    if mtu is not None:
                        self.assoc.path_hint(mtu, now)
                    continue
                self.net_error = exc.strerror  # e.g. ECONNREFUSED from an earlier ICMP
                continue
            self.stats.datagrams += 1
            self.stats.largest = max(self.stats.largest, len(d))

    def _drain_socket(self, now: float, wall: float) -> None:
        for _ in range(RECV_BUDGET):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP port unreachable: keep retransmitting
                self.net_error = exc.strerror
                return
            self.stats.received += 1
            self.last_activity = now
            for record in self.assoc.receive_datagram(data, now, wall):
                write_record(record)

    def _service(self, now: float) -> None:
        for ev in self.assoc.pop_events():
            self._on_event(ev)
        # A path hint (EMSGSIZE) while sending may queue a new probe at once.
        for _ in range(3):
            out = self.assoc.datagrams_to_send(now)
            if not out:
                break
            self._send(out, now)
        if self.show_heartbeat:
            # Logged once the responses are on the wire: a test may act on this line.
            answered = self.assoc.stats.heartbeat_answered
            for _ in range(answered - self.answered):
                log("heartbeat: answered a request from the peer")
            self.answered = answered

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, HandshakeCompleted):
            self.established = True
            log(handshake_line(ev))
            if ev.peer_certificate is not None:
                log(f"peer certificate: {ev.peer_certificate.subject.rfc4514_string()}")
            self.resumed = ev.resumed
            if self.offered_ticket and not ev.resumed:
                self.ticket_rejected = True
                log(f"session: the ticket from {self.sess_in} was not accepted: "
                    "full handshake")
        elif isinstance(ev, SessionTicketReceived):
            self._save_session(ev.session)
        elif isinstance(ev, HeartbeatAnswered):
            if self.show_heartbeat:
                log(heartbeat_line(ev))
        elif isinstance(ev, PathMtuChanged):
            if self.show_pmtu:
                log(pmtu_line(ev.plpmtu, ev.inner_mtu))
        elif isinstance(ev, PeerUnresponsive):
            log(f"liveness: peer unresponsive (silent for {ev.silent_for:.1f} s)")
        elif isinstance(ev, PeerAlive):
            log("liveness: peer alive again")
        elif isinstance(ev, AlertReceived):
            log(f"alert: received {_level_name(ev.level)} {_alert_name(ev.description)}")
        elif isinstance(ev, AssociationClosed):
            if self.established:
                log(f"closed: {closed_reason(ev)}")
                self.exit_status = 0
            else:
                log(f"error: {closed_reason(ev)}")
                self.exit_status = 1

    def _save_session(self, session: ClientSession) -> None:
        if self.sess_out is None:
            log("session: ticket received (use --sess-out to keep it)")
            return
        try:
            write_private(self.sess_out, session.encode())
        except OSError as exc:
            log(f"warning: cannot write {self.sess_out}: {exc.strerror}")
            return
        self.ticket_saved = True
        log(f"session: ticket saved to {self.sess_out} "
            f"(lifetime hint {session.lifetime_hint} s)")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
