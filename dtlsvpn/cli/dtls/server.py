"""``dtlsvpn dtls server``: a ServerEndpoint behind one bound UDP socket, on the loop.

Received application records go to stdout (``--echo`` also sends them back); each stdin
line goes to the association that completed its handshake most recently, or waits for
the next one.  stdin EOF does not stop the server.  One wake-up of the loop::

    socket readable   → recvfrom × RECV_BUDGET → endpoint.receive → records to stdout
    stdin readable    → each line protected for the current association, or queued
    endpoint timer    → endpoint.handle_timer
    then, once        → events logged per association; datagrams sent; closed
                        associations removed; the timer re-armed

``--ticket-keys FILE``: before a new association the file is re-read if it changed
(another server rotated), at most once a second; after a handshake the ring is written
back if sealing rotated it.

Exit status: ``--once`` exits when the first association closes, 0 only if it completed
its handshake; otherwise the server runs until SIGINT/SIGTERM, closes every association
and exits 0; 1 if it cannot bind.
"""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Iterable

from dtlsvpn.cli.argtypes import format_hostport
from dtlsvpn.cli.dtls.options import server_config
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
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.daemon.udp import MAX_DATAGRAM, RECV_BUDGET, Addr, family_of, open_udp
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import (
    AssociationClosed,
    Event,
    HandshakeCompleted,
    PeerAddressChanged,
)
from dtlsvpn.errors import ConfigError

TICKET_RELOAD_GAP = 1.0  # seconds between two checks of the --ticket-keys file


def run_server(args: argparse.Namespace) -> int:
    config = server_config(args)
    host, port = args.listen
    try:
        sock = open_udp(family_of(host), bind=(host, port), pmtu_probe=config.pmtu is not None,
                        recverr=False, large_buffers=False)
    except OSError as exc:
        log(f"error: cannot listen on {format_hostport((host, port))}: {exc.strerror}")
        return 1
    try:
        log(f"listening on {format_hostport(sock.getsockname())}")
        with tool_loop() as loop:
            return DtlsServer(args, config, loop, sock).run()
    finally:
        sock.close()


class TicketKeySync:
    """The ring of ``--ticket-keys FILE`` kept in step with the file."""

    def __init__(self, path: str, ring: TicketKeyRing) -> None:
        self.path = path
        self.file = TicketKeyFile(path)
        self.ring = ring
        self.saved_keys = ring.keys
        self.next_reload = 0.0

    def reload(self, now: float) -> None:
        """Before a new association: pick up keys another server wrote (rate-limited)."""
        if now < self.next_reload:
            return
        self.next_reload = now + TICKET_RELOAD_GAP
        try:
            if self.file.reload_if_changed(self.ring):
                self.saved_keys = self.ring.keys
                log(f"session: reloaded ticket keys from {self.path}")
        except ConfigError as exc:
            log(f"warning: keeping the current ticket keys: {exc}")

    def save(self) -> None:
        """After a handshake: write the ring back if sealing rotated it."""
        if self.ring.keys == self.saved_keys:
            return
        try:
            self.file.save(self.ring)
        except OSError as exc:
            log(f"warning: cannot write {self.path}: {exc.strerror}")
            return
        self.saved_keys = self.ring.keys
        log(f"session: ticket keys rotated, saved to {self.path}")


class DtlsServer:
    """A ServerEndpoint behind one socket, driven by the loop."""

    def __init__(self, args: argparse.Namespace, config: DtlsConfig, loop: Loop,
                 sock: socket.socket) -> None:
        self.echo: bool = args.echo
        self.once: bool = args.once
        self.show_heartbeat: bool = args.heartbeat
        self.show_pmtu: bool = args.pmtu
        self.endpoint = ServerEndpoint(config)
        self.loop = loop
        self.sock = sock
        self.current: Addr | None = None  # most recently established association
        self.pending: list[bytes] = []  # stdin lines waiting for an association
        self.completed: set[Addr] = set()
        self.stats: dict[Addr, SendStats] = {}
        self.exit_status: int | None = None
        self.tickets = (TicketKeySync(args.ticket_keys, config.ticket_keys)
                        if args.ticket_keys is not None and config.ticket_keys is not None
                        else None)
        self.timer = CoreTimer(loop, self.endpoint, self._after_timer)
        loop.add(sock.fileno(), self._on_socket)
        self.stdin = LineReader(loop, stdin_fd(), self._on_stdin)

    def run(self) -> int:
        self.loop.refresh_clock()
        self.loop.run()
        if self.exit_status is None:  # SIGINT or SIGTERM
            now = self.loop.now
            self._close_all(now)
            self.exit_status = 0
            self._service(now)
        return self.exit_status

    # --- loop callbacks ---------------------------------------------------------------

    def _on_socket(self, _mask: int, now: float, wall: float) -> None:
        self._drain_socket(now, wall)
        self.timer.rearm()
        self.loop.defer(self._tick)

    def _on_stdin(self, lines: list[bytes], _now: float) -> None:
        for line in lines:
            self._send_line(line)
        self.loop.defer(self._tick)

    def _after_timer(self, _now: float, _wall: float) -> None:
        self.loop.defer(self._tick)

    def _tick(self, now: float, _wall: float) -> None:
        self._service(now)
        if self.exit_status is not None:
            self.loop.stop()
        else:
            self.timer.rearm()

    # --- socket -----------------------------------------------------------------------

    def _send(self, datagrams: Iterable[bytes], addr: Addr) -> None:
        st = self.stats.setdefault(addr, SendStats())
        for d in datagrams:
            try:
                self.sock.sendto(d, addr)
            except OSError as exc:
                # EMSGSIZE: a PMTU probe above the interface MTU (IP_PMTUDISC_PROBE);
                # it counts as lost, which is what the search needs to learn.
                if exc.errno != errno.EMSGSIZE:
                    log(f"warning: sendto {format_hostport(addr)}: {exc.strerror}")
                continue
            st.sent(d)

    def _drain_socket(self, now: float, wall: float) -> None:
        for _ in range(RECV_BUDGET):
            try:
                data, raw_addr = self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue
            addr: Addr = (raw_addr[0], raw_addr[1])
            if addr not in self.endpoint.associations and self.tickets is not None:
                self.tickets.reload(now)
            assoc, out = self.endpoint.receive(data, addr, now, wall)
            if assoc is None:
                self._send(out, addr)
                continue
            self.stats.setdefault(addr, SendStats()).received += 1
            for record in out:
                write_record(record)
                if self.echo:
                    self._send(assoc.protect([record]), addr)

    def _send_line(self, line: bytes) -> None:
        assoc = self.endpoint.associations.get(self.current) if self.current else None
        if assoc is not None and assoc.is_established and not assoc.is_closed:
            assert self.current is not None
            self._send(assoc.protect([line]), self.current)
        else:
            self.pending.append(line)

    # --- events -----------------------------------------------------------------------

    def _service(self, now: float) -> None:
        for addr, assoc in list(self.endpoint.associations.items()):
            for ev in assoc.pop_events():
                self._on_event(addr, assoc, ev)
        for addr, assoc in list(self.endpoint.associations.items()):
            self._send(assoc.datagrams_to_send(now), addr)
            challenge = assoc.take_path_challenge()  # to the candidate address alone
            if challenge is not None and isinstance(challenge[1], tuple):
                self._send([challenge[0]], challenge[1])
            if self.show_heartbeat:
                st = self.stats.setdefault(addr, SendStats())
                for _ in range(st.newly_answered(assoc)):
                    log(f"{PEER_HEARTBEAT_LINE} peer={format_hostport(addr)}")
        self.endpoint.remove_closed()

    def _on_event(self, addr: Addr, assoc: Association, ev: Event) -> None:
        match ev:
            case HandshakeCompleted():
                self._on_handshake(addr, assoc, ev)
            case PeerAddressChanged():
                self._on_moved(addr, ev)
            case AssociationClosed():
                self._on_closed(addr, assoc, ev)
            case _:
                line = event_line(ev, heartbeat=self.show_heartbeat, pmtu=self.show_pmtu)
                if line is not None:
                    log(f"{line} peer={format_hostport(addr)}")

    def _on_handshake(self, addr: Addr, assoc: Association, ev: HandshakeCompleted) -> None:
        log(f"{handshake_line(ev)} peer={format_hostport(addr)}")
        if ev.psk_identity is not None:
            log(f"psk identity: {ev.psk_identity.decode(errors='replace')}")
        certificate = peer_certificate_line(ev)
        if certificate is not None:
            log(certificate)
        self.completed.add(addr)
        self.current = addr
        if self.tickets is not None:
            self.tickets.save()
        lines, self.pending = self.pending, []
        if lines:
            self._send(assoc.protect(lines), addr)

    def _on_moved(self, addr: Addr, ev: PeerAddressChanged) -> None:
        """RFC 9146 §6: the endpoint moved the association to ``addr``; follow it."""
        old = ev.old if isinstance(ev.old, tuple) else None
        log(f"roaming: peer moved from {format_hostport(old) if old else ev.old} "
            f"to {format_hostport(addr)}")
        if old is None or old == addr:
            return
        if old in self.stats:
            self.stats[addr] = self.stats.pop(old)
        if old in self.completed:
            self.completed.discard(old)
            self.completed.add(addr)
        if self.current == old:
            self.current = addr

    def _on_closed(self, addr: Addr, assoc: Association, ev: AssociationClosed) -> None:
        peer = format_hostport(addr)
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
