"""A DTLS 1.2 client driven through libgnutls.so.30 with ctypes (stdlib only).

gnutls-cli cannot send a heartbeat ping on demand (peers.md), but the library can:
`gnutls_heartbeat_ping` sends a HeartbeatRequest and, with GNUTLS_HEARTBEAT_WAIT, waits
for the matching response. This module is run as a program under `timeout` by the
interop tests (`python -m tests.interop.gnutls_ctypes ...`), so a hang in the library can
never hang the test run. Only documented GnuTLS API functions and constants
(gnutls/gnutls.h, gnutls/dtls.h) are used.

Output contract (stdout, one line per event, flushed):
- `handshake: <gnutls_session_get_desc> resumed=yes|no heartbeat=yes|no`
  (`heartbeat=yes`: the server's extension lets us send requests);
- `pong: size=N` per answered ping, `ping-error: size=N <message>` per failed one,
  `ping-retry: size=N <message>` when GnuTLS gave up waiting (see `Client.ping`);
- `answered-ping` each time we respond to the peer's HeartbeatRequest;
- `received: <line>` per application record;
- `done: pongs=N answered=M`, last.

Exit status: 0 when the handshake completed and every ping was answered, 1 otherwise,
2 when libgnutls cannot be loaded.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import sys
import time

# gnutls/gnutls.h
GNUTLS_CLIENT = 1 << 1
GNUTLS_DATAGRAM = 1 << 2
GNUTLS_CRD_CERTIFICATE = 1
GNUTLS_X509_FMT_PEM = 1
GNUTLS_NAME_DNS = 1
GNUTLS_SHUT_WR = 1
GNUTLS_HB_PEER_ALLOWED_TO_SEND = 1
GNUTLS_HB_LOCAL_ALLOWED_TO_SEND = 1 << 2
GNUTLS_HEARTBEAT_WAIT = 1
GNUTLS_E_AGAIN = -28
GNUTLS_E_INTERRUPTED = -52
GNUTLS_E_PONG_RECEIVED = -292
GNUTLS_E_PING_RECEIVED = -293
GNUTLS_E_TIMEDOUT = -319

PRIORITY = b"NORMAL:-VERS-ALL:+VERS-DTLS1.2"
MAX_PING_ATTEMPTS = 10
PONG_GRACE = 0.5  # seconds to wait for a pong after an interrupted ping


class GnutlsError(Exception):
    pass


def load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("gnutls") or "libgnutls.so.30"
    try:
        lib = ctypes.CDLL("libgnutls.so.30")
    except OSError:
        lib = ctypes.CDLL(name)
    vp, ci, cu, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p
    sig: dict[str, tuple[object, list[object]]] = {
        "gnutls_global_init": (ci, []),
        "gnutls_init": (ci, [ctypes.POINTER(vp), cu]),
        "gnutls_deinit": (None, [vp]),
        "gnutls_certificate_allocate_credentials": (ci, [ctypes.POINTER(vp)]),
        "gnutls_certificate_free_credentials": (None, [vp]),
        "gnutls_certificate_set_x509_trust_file": (ci, [vp, cs, ci]),
        "gnutls_credentials_set": (ci, [vp, ci, vp]),
        "gnutls_priority_set_direct": (ci, [vp, cs, ctypes.POINTER(cs)]),
        "gnutls_server_name_set": (ci, [vp, ci, cs, ctypes.c_size_t]),
        "gnutls_session_set_verify_cert": (None, [vp, cs, cu]),
        "gnutls_heartbeat_enable": (None, [vp, cu]),
        "gnutls_heartbeat_allowed": (cu, [vp, cu]),
        "gnutls_heartbeat_ping": (ci, [vp, ctypes.c_size_t, cu, cu]),
        "gnutls_heartbeat_pong": (ci, [vp, cu]),
        "gnutls_heartbeat_set_timeouts": (None, [vp, cu, cu]),
        "gnutls_transport_set_int2": (None, [vp, ci, ci]),
        "gnutls_dtls_set_timeouts": (None, [vp, cu, cu]),
        "gnutls_record_set_timeout": (None, [vp, cu]),
        "gnutls_handshake": (ci, [vp]),
        "gnutls_error_is_fatal": (ci, [ci]),
        "gnutls_strerror": (cs, [ci]),
        "gnutls_session_get_desc": (ctypes.POINTER(ctypes.c_char), [vp]),
        "gnutls_session_is_resumed": (ci, [vp]),
        "gnutls_record_send": (ctypes.c_ssize_t, [vp, ctypes.c_char_p, ctypes.c_size_t]),
        "gnutls_record_recv": (ctypes.c_ssize_t, [vp, ctypes.c_char_p, ctypes.c_size_t]),
        "gnutls_bye": (ci, [vp, ci]),
    }
    for fn, (restype, argtypes) in sig.items():
        f = getattr(lib, fn)
        f.restype = restype
        f.argtypes = argtypes
    return lib


def say(line: str) -> None:
    print(line, flush=True)


class Client:
    """One DTLS client session over a connected UDP socket."""

    def __init__(self, lib: ctypes.CDLL, sock: socket.socket, ca: str, server_name: str | None,
                 heartbeat: bool) -> None:
        self.lib = lib
        self.sock = sock
        self.session = ctypes.c_void_p()
        self.cred = ctypes.c_void_p()
        self.answered = 0
        self._check(lib.gnutls_global_init(), "global_init")
        self._check(lib.gnutls_init(ctypes.byref(self.session),
                                    GNUTLS_CLIENT | GNUTLS_DATAGRAM), "init")
        s = self.session
        self._check(lib.gnutls_certificate_allocate_credentials(ctypes.byref(self.cred)),
                    "allocate_credentials")
        n = lib.gnutls_certificate_set_x509_trust_file(self.cred, ca.encode(),
                                                       GNUTLS_X509_FMT_PEM)
        if n <= 0:
            raise GnutlsError(f"no trust anchor loaded from {ca} ({n})")
        self._check(lib.gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, self.cred),
                    "credentials_set")
        err = ctypes.c_char_p()
        self._check(lib.gnutls_priority_set_direct(s, PRIORITY, ctypes.byref(err)),
                    "priority_set_direct")
        if server_name:
            name = server_name.encode()
            self._check(lib.gnutls_server_name_set(s, GNUTLS_NAME_DNS, name, len(name)),
                        "server_name_set")
            lib.gnutls_session_set_verify_cert(s, name, 0)
        if heartbeat:
            # Offer RFC 6520 with mode peer_allowed_to_send: we answer the peer's requests.
            lib.gnutls_heartbeat_enable(s, GNUTLS_HB_PEER_ALLOWED_TO_SEND)
        fd = sock.fileno()
        lib.gnutls_transport_set_int2(s, fd, fd)
        lib.gnutls_dtls_set_timeouts(s, 1000, 10000)
        lib.gnutls_heartbeat_set_timeouts(s, 1000, 6000)

    def _check(self, rc: int, what: str) -> int:
        if rc < 0:
            raise GnutlsError(f"gnutls_{what}: {self.strerror(rc)} ({rc})")
        return rc

    def strerror(self, rc: int) -> str:
        text = self.lib.gnutls_strerror(rc)
        return text.decode(errors="replace") if text else str(rc)

    def handshake(self) -> None:
        while True:
            rc = self.lib.gnutls_handshake(self.session)
            if rc >= 0:
                break
            if self.lib.gnutls_error_is_fatal(rc):
                raise GnutlsError(f"handshake: {self.strerror(rc)} ({rc})")
        desc_ptr = self.lib.gnutls_session_get_desc(self.session)
        desc = ctypes.cast(desc_ptr, ctypes.c_char_p).value or b"?"
        resumed = "yes" if self.lib.gnutls_session_is_resumed(self.session) else "no"
        allowed = self.lib.gnutls_heartbeat_allowed(self.session, GNUTLS_HB_LOCAL_ALLOWED_TO_SEND)
        say(f"handshake: {desc.decode(errors='replace')} resumed={resumed} "
            f"heartbeat={'yes' if allowed else 'no'}")

    def pong(self) -> None:
        self._check(self.lib.gnutls_heartbeat_pong(self.session, 0), "heartbeat_pong")
        self.answered += 1
        say("answered-ping")

    def ping(self, size: int, deadline: float) -> bool:
        """One ping of `size` bytes (payload + 16 padding); True on the matching pong.

        GnuTLS 3.7 keeps one ping state and gives up waiting on anything but its pong:
        - a request from the peer (our server probes the path MTU and sends keepalives)
          makes it return PING_RECEIVED: we answer it, then wait for our own pong with
          `gnutls_record_recv`, which reports it as PONG_RECEIVED;
        - a response that does not match its current payload (a late answer to an
          earlier ping) makes it return E_AGAIN. Calling ping again at once would send a
          new payload while the answer to the previous one is in flight, and every
          answer would then arrive one ping late; so late answers are drained first.
        """
        attempts = 0
        while time.monotonic() < deadline and attempts < MAX_PING_ATTEMPTS:
            attempts += 1
            rc = self.lib.gnutls_heartbeat_ping(self.session, size, 5, GNUTLS_HEARTBEAT_WAIT)
            if rc == 0:
                say(f"pong: size={size}")
                return True
            if rc == GNUTLS_E_PING_RECEIVED:
                self.pong()
            elif rc not in (GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED):
                say(f"ping-error: size={size} {self.strerror(rc)} ({rc})")
                return False
            say(f"ping-retry: size={size} {self.strerror(rc)} ({rc})")
            if self._await_pong(PONG_GRACE):
                say(f"pong: size={size}")
                return True
        say(f"ping-error: size={size} no answer after {attempts} attempts")
        return False

    def _await_pong(self, seconds: float) -> bool:
        """Read records for up to `seconds`; True if the pong of our last ping arrives."""
        buf = ctypes.create_string_buffer(65536)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.lib.gnutls_record_set_timeout(self.session, max(1, int(left * 1000)))
            rc = self.lib.gnutls_record_recv(self.session, buf, len(buf))
            if rc == GNUTLS_E_PONG_RECEIVED:
                return True
            if rc == GNUTLS_E_PING_RECEIVED:
                self.pong()
            elif rc > 0:
                say(f"received: {buf.raw[:rc].decode(errors='replace').rstrip()}")
            elif rc not in (GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED, GNUTLS_E_TIMEDOUT):
                raise GnutlsError(f"record_recv: {self.strerror(rc)} ({rc})")
        return False

    def send(self, data: bytes) -> None:
        rc = self.lib.gnutls_record_send(self.session, data, len(data))
        if rc < 0:
            raise GnutlsError(f"record_send: {self.strerror(rc)} ({rc})")

    def receive_for(self, seconds: float, want: str | None = None) -> bool:
        """Read records (answering pings) for `seconds`, or until a line containing `want`."""
        buf = ctypes.create_string_buffer(65536)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.lib.gnutls_record_set_timeout(self.session, max(1, int(left * 1000)))
            rc = self.lib.gnutls_record_recv(self.session, buf, len(buf))
            if rc > 0:
                text = buf.raw[:rc].decode(errors="replace").rstrip("\n")
                say(f"received: {text}")
                if want is not None and want in text:
                    return True
            elif rc == GNUTLS_E_PING_RECEIVED:
                self.pong()
            elif rc in (GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED, GNUTLS_E_TIMEDOUT,
                        GNUTLS_E_PONG_RECEIVED):
                continue
            elif rc == 0:
                say("received: <close_notify>")
                return False
            else:
                say(f"recv-error: {self.strerror(rc)} ({rc})")
                return False
        return want is None

    def close(self) -> None:
        self.lib.gnutls_record_set_timeout(self.session, 1000)
        self.lib.gnutls_bye(self.session, GNUTLS_SHUT_WR)
        self.lib.gnutls_deinit(self.session)
        self.lib.gnutls_certificate_free_credentials(self.cred)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gnutls_ctypes", description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--ca", required=True, help="PEM trust anchors for the server")
    p.add_argument("--server-name", help="name to verify in the server certificate")
    p.add_argument("--no-heartbeat", action="store_true", help="do not offer extension 15")
    p.add_argument("--ping", type=int, action="append", default=[], metavar="SIZE",
                   help="send one heartbeat ping of SIZE bytes (repeatable)")
    p.add_argument("--send", action="append", default=[], metavar="LINE",
                   help="send LINE as one record after the pings (repeatable)")
    p.add_argument("--expect", metavar="TEXT", help="wait until a record contains TEXT")
    p.add_argument("--answer-for", type=float, default=0.0, metavar="S",
                   help="keep reading (and answering pings) for S seconds")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="overall time limit for the pings")
    args = p.parse_args(argv)
    try:
        lib = load_library()
    except (OSError, AttributeError) as exc:
        print(f"error: cannot load libgnutls: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((args.host, args.port))
    client = Client(lib, sock, args.ca, args.server_name, not args.no_heartbeat)
    ok = True
    pongs = 0
    try:
        client.handshake()
        deadline = time.monotonic() + args.timeout
        for size in args.ping:
            if client.ping(size, deadline):
                pongs += 1
            else:
                ok = False
        for line in args.send:
            client.send(line.encode() + b"\n")
        if args.expect is not None:
            ok = client.receive_for(args.timeout, args.expect) and ok
        if args.answer_for > 0:
            client.receive_for(args.answer_for)
    except GnutlsError as exc:
        say(f"error: {exc}")
        ok = False
    finally:
        client.close()
        sock.close()
    say(f"done: pongs={pongs} answered={client.answered}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
