"""``dtlsvpn dtls server|client --tcp``: the debug tools over TLS 1.2 on TCP.

The same flags and output lines as the DTLS tools (``output.py``), around one
:class:`~dtlsvpn.dtls.stream.StreamAssociation` per TCP connection instead of a
datagram association.  The handshake line says ``TLSv1.2``; the stats line counts
records and bytes (``stats: records_sent=N bytes_sent=N bytes_received=N ...``).

``--sp`` adds the SP framing of the TCP fallback (``vpn/sp.py``): after the handshake
each side sends the 8-byte SP header and checks the peer's, then each stdin line is
one length-prefixed message.  Without it (the default, for OpenSSL and GnuTLS peers)
each stdin line is one application_data record, as in the DTLS tools.

One wake-up of the loop::

    socket readable  → recv × RECV_BUDGET → assoc.receive_data → [SP] → stdout
    socket writable  → the send queue is written out
    stdin readable   → lines queued (client) or sent to the latest connection (server)
    assoc timer due  → assoc.handle_timer
    then             → events logged; sealed bytes queued and written

Exit status as for the DTLS tools: the client exits 0 only if its handshake
completed; ``server --once`` exits 0 only if its first connection did.
"""

from __future__ import annotations

import argparse
import select
import socket
from collections.abc import Callable

from dtlsvpn.cli.argtypes import ArgumentProblem, format_hostport
from dtlsvpn.cli.dtls.options import client_config, server_config
from dtlsvpn.cli.dtls.output import (
    PEER_HEARTBEAT_LINE,
    closed_reason,
    event_line,
    handshake_line,
    log,
    peer_certificate_line,
    write_record,
)
from dtlsvpn.cli.tool_loop import CoreTimer, LineReader, stdin_fd, tool_loop
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted, SessionTicketReceived
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.fileutil import replace_private
from dtlsvpn.vpn.sp import SendQueue, SpError, SpReceiver, encode_frame, encode_header

RECV_SIZE = 65536
RECV_BUDGET = 16
SEND_QUEUE = 4 << 20  # bytes held for a peer that does not read (x2 at most: push_control)
SP_MAX_MESSAGE = 16384 - 8  # one SP message per record at most

Handler = Callable[[argparse.Namespace], int]


def either(dtls: Handler) -> Handler:
    """The command handler: the DTLS tool, or this one with ``--tcp``."""
    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "tcp", False):
            return dtls(args)
        return run_tcp_client(args) if hasattr(args, "server") else run_tcp_server(args)
    return run


class StreamPeer:
    """One TCP connection: socket, association, optional SP framing, send queue."""

    def __init__(self, loop: Loop, sock: socket.socket, assoc: StreamAssociation, name: str,
                 *, sp: bool, on_message: Callable[[StreamPeer, bytes], None],
                 on_event: Callable[[StreamPeer, Event], None],
                 after: Callable[[float, float], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.assoc = assoc
        self.name = name
        self.sp = sp
        # App data only flows after the handshake, so the receiver can exist from the start.
        self.sp_rx = SpReceiver(SP_MAX_MESSAGE) if sp else None
        self.on_message = on_message
        self.on_event = on_event
        self.queue = SendQueue(SEND_QUEUE)
        self.answered = 0
        self.established = False
        self.done = False  # closed and flushed
        self.eof = False
        self.timer = CoreTimer(loop, assoc, after)
        sock.setblocking(False)
        loop.add(sock.fileno(), self._on_socket)
        self._writing = False

    # --- input ----------------------------------------------------------------------

    def _on_socket(self, mask: int, now: float, wall: float) -> None:
        if mask & select.EPOLLOUT:
            self._flush()
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._drain(now, wall)
        self.service(now)

    def _drain(self, now: float, wall: float) -> None:
        for _ in range(RECV_BUDGET):
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                log(f"warning: {self.name}: {exc.strerror}")
                data = b""
            if not data:
                self.eof = True
                if not self.assoc.is_closed:
                    log(f"error: {self.name} closed the connection without close_notify")
                    self.assoc.close(now)
                return
            for record in self.assoc.receive_data(data, now, wall):
                self._message_in(record, now)

    def _message_in(self, record: bytes, now: float) -> None:
        if self.sp_rx is None:
            self.on_message(self, record)
            return
        try:
            messages = self.sp_rx.feed(record)
        except SpError as exc:
            log(f"error: {self.name}: {exc}")
            self.assoc.close(now)
            return
        for m in messages:
            self.on_message(self, m)

    # --- output ---------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        if self.sp:
            payload = encode_frame(payload, SP_MAX_MESSAGE)
        self.assoc.send([payload])

    def service(self, now: float) -> None:
        self._events()
        new = self.assoc.stats.heartbeat_answered - self.answered
        self.answered += new
        self._queue(now)
        self._flush()
        for _ in range(new):
            log(f"{PEER_HEARTBEAT_LINE} peer={self.name}")
        if self.assoc.is_closed and (not self.queue or self.eof) and not self.done:
            self.done = True
            self.timer.cancel()
            self.loop.remove(self.sock.fileno())
            self.sock.close()
        elif not self.done:
            self.timer.rearm()

    def _events(self) -> None:
        for ev in self.assoc.pop_events():
            if isinstance(ev, HandshakeCompleted):
                self.established = True
                if self.sp:
                    self.assoc.send([encode_header()])
            self.on_event(self, ev)

    def _queue(self, now: float) -> None:
        """Sealed bytes join the queue, past its limit if need be, up to the daemon's
        bound (``SendQueue.push_control``); beyond, the peer does not read what it makes
        us send (an echo, heartbeat answers): the connection is given up, nothing more
        is written."""
        data = self.assoc.data_to_send()
        q = self.queue
        if q.push_control(data):
            return
        log(f"error: {self.name} does not read what it makes us send: "
            f"over {q.control_limit} bytes queued")
        self.eof = True
        q.consume(len(q))
        if not self.assoc.is_closed:
            self.assoc.close(now)
        self.assoc.data_to_send()  # (the close_notify is not written either)
        self._events()

    def _flush(self) -> None:
        q = self.queue
        while q:
            try:
                n = self.sock.send(q.peek())
            except BlockingIOError:
                break
            except OSError as exc:
                log(f"warning: {self.name}: {exc.strerror}")
                q.consume(len(q))
                self.eof = True
                break
            q.consume(n)
        want = bool(q)
        if want != self._writing and not self.done:
            self._writing = want
            self.loop.modify(self.sock.fileno(), select.EPOLLIN | (select.EPOLLOUT if want else 0))

    def stats_line(self) -> str:
        st = self.assoc.stats
        return (f"stats: records_sent={st.tx_records} bytes_sent={st.tx_bytes} "
                f"bytes_received={st.rx_bytes} heartbeats_sent={st.heartbeats_sent} "
                f"probes_sent={st.probes_sent} heartbeats_answered={st.heartbeat_answered} "
                f"peer={self.name}")


def tls_handshake_line(ev: HandshakeCompleted) -> str:
    return handshake_line(ev).replace("DTLSv1.2", "TLSv1.2", 1).removesuffix(" cid=no")


# --- client ---------------------------------------------------------------------------


def run_tcp_client(args: argparse.Namespace) -> int:
    config = client_config(args)
    host, port = args.server
    if port == 0:
        raise ArgumentProblem("the server port must not be 0")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _t, _p, _c, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        log(f"error: cannot resolve {host}: {exc.strerror}")
        return 1
    sock.settimeout(args.timeout)
    try:
        sock.connect(addr)
    except OSError as exc:
        log(f"error: cannot connect to {format_hostport(addr)}: {exc.strerror or exc}")
        sock.close()
        return 1
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with tool_loop() as loop:
        return TcpClient(args, config, loop, sock, format_hostport(addr)).run()


class TcpClient:
    def __init__(self, args: argparse.Namespace, config: DtlsConfig, loop: Loop,
                 sock: socket.socket, name: str) -> None:
        self.args = args
        self.loop = loop
        self.show_heartbeat: bool = args.heartbeat
        self.linger: float = args.linger
        self.pending: list[bytes] = []
        self.last_activity = 0.0
        self.exit_status: int | None = None
        assoc = StreamAssociation(config, handshake_timeout=args.timeout)
        self.peer = StreamPeer(loop, sock, assoc, name, sp=args.sp, on_message=self._on_message,
                               on_event=self._on_event, after=self._after)
        self.linger_timer = loop.timer(self._after)
        self.stdin = LineReader(loop, stdin_fd(), self._on_stdin)

    def run(self) -> int:
        now = self.loop.refresh_clock()
        self.peer.assoc.connect(now, self.loop.wall)
        self.peer.service(now)
        if self.exit_status is None:
            self.loop.run()
        if self.exit_status is None:  # SIGINT or SIGTERM
            self.peer.assoc.close(self.loop.now)
            self.peer.service(self.loop.now)
            self.exit_status = 0 if self.peer.established else 1
        log(self.peer.stats_line())
        return self.exit_status

    def _on_message(self, _peer: StreamPeer, data: bytes) -> None:
        self.last_activity = self.loop.now
        write_record(data)

    def _on_stdin(self, lines: list[bytes], now: float) -> None:
        self.pending.extend(lines)
        if self.stdin.eof:
            self.last_activity = max(self.last_activity, now)
        self.loop.defer(self._after)

    def _after(self, now: float, _wall: float) -> None:
        peer = self.peer
        if peer.established and not peer.assoc.is_closed and self.pending:
            for line in self.pending:
                peer.send(line)
            self.pending = []
            self.last_activity = now
        if (peer.established and self.stdin.eof and not self.pending
                and not peer.assoc.is_closed):
            close_at = self.last_activity + self.linger
            if now >= close_at:
                peer.assoc.close(now)
            else:
                self.linger_timer.schedule(close_at)
        peer.service(now)
        if peer.done and self.exit_status is None:
            self.exit_status = 0 if peer.established else 1
        if self.exit_status is not None:
            self.loop.stop()

    def _on_event(self, _peer: StreamPeer, ev: Event) -> None:
        match ev:
            case HandshakeCompleted():
                log(tls_handshake_line(ev))
                cert = peer_certificate_line(ev)
                if cert is not None:
                    log(cert)
                self.loop.defer(self._after)
            case SessionTicketReceived():
                self._save_session(ev)
            case AssociationClosed():
                prefix = "closed" if self.peer.established else "error"
                log(f"{prefix}: {closed_reason(ev)}")
                self.loop.defer(self._after)
            case _:
                line = event_line(ev, heartbeat=self.show_heartbeat, pmtu=False)
                if line is not None:
                    log(line)

    def _save_session(self, ev: SessionTicketReceived) -> None:
        path: str | None = self.args.sess_out
        if path is None:
            log("session: ticket received (use --sess-out to keep it)")
            return
        try:
            replace_private(path, ev.session.encode().encode("ascii"))
        except OSError as exc:
            log(f"warning: cannot write {path}: {exc.strerror}")
            return
        log(f"session: ticket saved to {path} (lifetime hint {ev.session.lifetime_hint} s)")


# --- server ---------------------------------------------------------------------------


def run_tcp_server(args: argparse.Namespace) -> int:
    config = server_config(args)
    host, port = args.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(16)
    except OSError as exc:
        log(f"error: cannot listen on {format_hostport((host, port))}: {exc.strerror}")
        lsock.close()
        return 1
    lsock.setblocking(False)
    try:
        log(f"listening on {format_hostport(lsock.getsockname())}")
        with tool_loop() as loop:
            return TcpServer(args, config, loop, lsock).run()
    finally:
        lsock.close()


class TcpServer:
    def __init__(self, args: argparse.Namespace, config: DtlsConfig, loop: Loop,
                 lsock: socket.socket) -> None:
        self.config = config
        self.loop = loop
        self.lsock = lsock
        self.echo: bool = args.echo
        self.once: bool = args.once
        self.sp: bool = args.sp
        self.show_heartbeat: bool = args.heartbeat
        self.peers: list[StreamPeer] = []
        self.current: StreamPeer | None = None
        self.pending: list[bytes] = []
        self.exit_status: int | None = None
        loop.add(lsock.fileno(), self._on_accept)
        self.stdin = LineReader(loop, stdin_fd(), self._on_stdin)

    def run(self) -> int:
        self.loop.refresh_clock()
        self.loop.run()
        if self.exit_status is None:  # SIGINT or SIGTERM
            now = self.loop.now
            for p in self.peers:
                p.assoc.close(now)
                p.service(now)
                log(p.stats_line())
            self.exit_status = 0
        return self.exit_status

    def _on_accept(self, _mask: int, now: float, _wall: float) -> None:
        try:
            sock, addr = self.lsock.accept()
        except OSError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = StreamAssociation(self.config)
        assoc.accept(now)
        peer = StreamPeer(self.loop, sock, assoc, format_hostport(addr), sp=self.sp,
                          on_message=self._on_message, on_event=self._on_event,
                          after=self._after)
        self.peers.append(peer)
        peer.service(now)

    def _on_stdin(self, lines: list[bytes], now: float) -> None:
        cur = self.current
        if cur is not None and cur.established and not cur.assoc.is_closed:
            for line in lines:
                cur.send(line)
            cur.service(now)
        else:
            self.pending.extend(lines)

    def _on_message(self, peer: StreamPeer, data: bytes) -> None:
        write_record(data)
        if self.echo:
            peer.send(data)

    def _after(self, now: float, _wall: float) -> None:
        for p in list(self.peers):
            p.service(now)
        if self.exit_status is not None:
            self.loop.stop()

    def _on_event(self, peer: StreamPeer, ev: Event) -> None:
        match ev:
            case HandshakeCompleted():
                log(f"{tls_handshake_line(ev)} peer={peer.name}")
                if ev.psk_identity is not None:
                    log(f"psk identity: {ev.psk_identity.decode(errors='replace')}")
                cert = peer_certificate_line(ev)
                if cert is not None:
                    log(cert)
                self.current = peer
                waiting, self.pending = self.pending, []
                for data in waiting:
                    peer.send(data)
            case AssociationClosed():
                self._on_closed(peer, ev)
            case _:
                text = event_line(ev, heartbeat=self.show_heartbeat, pmtu=False)
                if text is not None:
                    log(f"{text} peer={peer.name}")

    def _on_closed(self, peer: StreamPeer, ev: AssociationClosed) -> None:
        if peer.established:
            log(f"closed: {closed_reason(ev)} peer={peer.name}")
        else:
            log(f"error: handshake with {peer.name} failed: {closed_reason(ev)}")
        log(peer.stats_line())
        if self.current is peer:
            self.current = None
        if peer in self.peers:
            self.peers.remove(peer)
        if self.once and self.exit_status is None:
            self.exit_status = 0 if peer.established else 1
            self.loop.defer(self._after)
