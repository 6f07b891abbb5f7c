"""``dtlsvpn dtls client``: one client Association over a connected UDP socket, on the loop.

Each stdin line is sent as one record once the handshake is done; each record received
goes to stdout.  At stdin EOF the client waits ``--linger`` seconds of quiet, then sends
close_notify.  One wake-up of the loop::

    socket readable   → recv × RECV_BUDGET → assoc.receive_datagram → records to stdout
    stdin readable    → lines queued
    assoc timer due   → assoc.handle_timer
    then, once        → events logged; datagrams sent; queued lines protected and sent;
                        the handshake deadline and the linger deadline checked;
                        the timers re-armed

Exit status: 0 only if the handshake completed (and nothing failed after it); 1 for a
handshake that failed or timed out, or a server that cannot be resolved or reached.
SIGINT/SIGTERM close the association and exit the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
from collections.abc import Iterable

from dtlsvpn.cli.argtypes import ArgumentProblem, format_hostport
from dtlsvpn.cli.dtls.options import client_config
from dtlsvpn.cli.dtls.output import (
    PEER_HEARTBEAT_LINE,
    SendStats,
    closed_reason,
    event_line,
    handshake_line,
    log,
    peer_certificate_line,
    pmtu_summary,
    write_record,
)
from dtlsvpn.cli.tool_loop import CoreTimer, LineReader, stdin_fd, tool_loop
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.udp import MAX_DATAGRAM, RECV_BUDGET, open_udp, resolve, socket_mtu
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    SessionTicketReceived,
)
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.fileutil import replace_private


def run_client(args: argparse.Namespace) -> int:
    config = client_config(args)
    host, port = args.server
    if port == 0:
        raise ArgumentProblem("the server port must not be 0")
    try:
        family, addr = resolve(host, port)
    except OSError as exc:
        log(f"error: cannot resolve {host}: {exc.strerror}")
        return 1
    try:
        sock = open_udp(family, connect=addr, pmtu_probe=config.pmtu is not None,
                        recverr=False, large_buffers=False)
    except OSError as exc:
        log(f"error: cannot reach {format_hostport(addr)}: {exc.strerror}")
        return 1
    try:
        with tool_loop() as loop:
            return DtlsClient(args, config, loop, sock, format_hostport(addr)).run()
    finally:
        sock.close()


class DtlsClient:
    """One client Association over a connected socket, driven by the loop."""

    def __init__(self, args: argparse.Namespace, config: DtlsConfig, loop: Loop,
                 sock: socket.socket, peer: str) -> None:
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
        self.loop = loop
        self.sock = sock
        ip_header = 40 if sock.family == socket.AF_INET6 else 20
        self.assoc = Association(config, peer=peer.encode(), ip_header=ip_header)
        self.pending: list[bytes] = []
        self.stats = SendStats()
        self.established = False
        self.last_activity = 0.0
        self.net_error: str | None = None
        self.exit_status: int | None = None
        self.handshake_deadline = 0.0
        self.assoc_timer = CoreTimer(loop, self.assoc, self._after_timer)
        self.deadline_timer = loop.timer(self._after_timer)
        loop.add(sock.fileno(), self._on_socket)
        self.stdin = LineReader(loop, stdin_fd(), self._on_stdin)

    def run(self) -> int:
        now = self.loop.refresh_clock()
        self.handshake_deadline = now + self.timeout
        self.assoc.connect(now, self.loop.wall)
        self._service(now)
        if self.exit_status is None:
            self._rearm()
            self.loop.run()
        if self.exit_status is None:  # SIGINT or SIGTERM
            self._close(self.loop.now)
        self._finish()
        assert self.exit_status is not None
        return self.exit_status

    # --- loop callbacks ---------------------------------------------------------------

    def _on_socket(self, _mask: int, now: float, wall: float) -> None:
        self._drain_socket(now, wall)
        self.assoc_timer.rearm()
        self.loop.defer(self._tick)

    def _on_stdin(self, lines: list[bytes], now: float) -> None:
        self.pending.extend(lines)
        if self.stdin.eof:
            self.last_activity = max(self.last_activity, now)
        self.loop.defer(self._tick)

    def _after_timer(self, _now: float, _wall: float) -> None:
        self.loop.defer(self._tick)

    def _tick(self, now: float, _wall: float) -> None:
        self._service(now)
        if self.exit_status is None:
            self._send_pending(now)
            self._check_deadlines(now)
        if self.exit_status is not None:
            self.loop.stop()
            return
        self._rearm()

    def _rearm(self) -> None:
        self.assoc_timer.rearm()
        close_at = self._close_deadline()
        self.deadline_timer.schedule(close_at if self.established else
                                     self.handshake_deadline)

    # --- what a wake-up does ----------------------------------------------------------

    def _send_pending(self, now: float) -> None:
        if self.established and self.pending:
            lines, self.pending = self.pending, []
            self._send(self.assoc.protect(lines), now)
            self.last_activity = now

    def _check_deadlines(self, now: float) -> None:
        if not self.established and now >= self.handshake_deadline:
            why = f" ({self.net_error})" if self.net_error else ""
            self.assoc.close(now)  # the core says what it was waiting for
            closed = [e for e in self.assoc.pop_events() if isinstance(e, AssociationClosed)]
            if closed and closed[0].failure == "finished_unanswered":
                why += f": {closed[0].reason}"
            log(f"error: handshake timed out after {self.timeout:g} s{why}")
            self.exit_status = 1
            return
        close_at = self._close_deadline()
        if close_at is not None and now >= close_at:
            self._close(now)

    def _close(self, now: float) -> None:
        self.assoc.close(now)
        self._service(now)
        self.exit_status = 0 if self.established else 1

    def _close_deadline(self) -> float | None:
        if self.established and self.stdin.eof and not self.pending:
            return self.last_activity + self.linger
        return None

    def _finish(self) -> None:
        if self.show_pmtu and self.established:
            log(pmtu_summary(self.assoc))
        if self.sess_out is not None and not self.ticket_saved:
            self._explain_no_ticket(self.sess_out)
        log(self.stats.line(self.assoc))

    def _explain_no_ticket(self, sess_out: str) -> None:
        stale = (self.ticket_rejected and self.sess_in is not None
                 and _same_file(self.sess_in, sess_out))
        if stale:
            # The ticket in it was refused: offering it again is pointless.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sess_out)
            log(f"session: no new ticket; removed the refused one from {sess_out}")
        elif self.resumed:
            log(f"session: resumed without a new ticket; {sess_out} not written")
        else:
            log(f"session: no ticket received; {sess_out} not written")

    # --- socket -----------------------------------------------------------------------

    def _send(self, datagrams: Iterable[bytes], now: float) -> None:
        for d in datagrams:
            try:
                self.sock.send(d)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    # A PMTU probe above the interface MTU: a hint, never trusted
                    # above what a probe confirmed (Association.path_hint).
                    mtu = socket_mtu(self.sock)
                    if mtu is not None:
                        self.assoc.path_hint(mtu, now)
                    continue
                self.net_error = exc.strerror  # e.g. ECONNREFUSED from an earlier ICMP
                continue
            self.stats.sent(d)

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

    # --- events -----------------------------------------------------------------------

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
            for _ in range(self.stats.newly_answered(self.assoc)):
                log(PEER_HEARTBEAT_LINE)

    def _on_event(self, ev: Event) -> None:
        match ev:
            case HandshakeCompleted():
                self._on_handshake(ev)
            case SessionTicketReceived():
                self._save_session(ev.session)
            case AssociationClosed():
                if self.established:
                    log(f"closed: {closed_reason(ev)}")
                    self.exit_status = 0
                else:
                    log(f"error: {closed_reason(ev)}")
                    self.exit_status = 1
            case _:
                line = event_line(ev, heartbeat=self.show_heartbeat, pmtu=self.show_pmtu)
                if line is not None:
                    log(line)

    def _on_handshake(self, ev: HandshakeCompleted) -> None:
        self.established = True
        log(handshake_line(ev))
        certificate = peer_certificate_line(ev)
        if certificate is not None:
            log(certificate)
        self.resumed = ev.resumed
        if self.offered_ticket and not ev.resumed:
            self.ticket_rejected = True
            log(f"session: the ticket from {self.sess_in} was not accepted: full handshake")

    def _save_session(self, session: ClientSession) -> None:
        if self.sess_out is None:
            log("session: ticket received (use --sess-out to keep it)")
            return
        try:
            replace_private(self.sess_out, session.encode().encode("ascii"))
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
