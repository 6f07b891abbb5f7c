"""StreamLink: one TLS/TCP connection carrying a peer's tunnel (the TCP fallback carrier).

The shell around :class:`~dtlsvpn.dtls.stream.StreamAssociation` and the SP framing of
``vpn/sp.py``, for one non-blocking connected TCP socket:

    readable  → recv × RECV_BUDGET → assoc.receive_data → SpReceiver → inner packets
    send      → room in the queue? → encode_frame → assoc.send → SendQueue
    writable  → the queue is written (partial writes kept); ``wants_write`` says
                whether the loop should watch EPOLLOUT
    service   → events; after HandshakeCompleted our SP header goes out; sealed
                control bytes (flights, alerts, heartbeats) join the queue

Invariants:

* Bounded memory for a stalled peer: a packet is framed and sealed only when the
  send queue holds less than ``queue_limit`` bytes; otherwise it is dropped and
  counted (``dropped``), before any sequence number is spent, so the TLS stream
  never has a gap.  Control bytes (flights, alerts, heartbeat answers) are queued
  past that limit, but not without end: a peer that makes us answer and never reads
  would grow the queue for ever, so once it would hold more than
  ``CONTROL_LIMIT_FACTOR`` × ``queue_limit`` (``vpn/sp.py``) the link is given up at once
  (``control_overflow``: nothing more is written, the socket is closed).  On the
  receive side the record and SP buffers hold at most one record and one frame.
* ``ready`` only once the TLS handshake completed *and* the peer's SP header
  checked out; inner packets before that cannot exist (no application data
  before Finished, and the header is the first message).
* ``hold_header``: a client's standby link (dialled beside a UDP association that
  went quiet, ``vpn/transport.py``) holds its SP header back until
  :meth:`start_carrying`; the server makes a link its peer's carrier only once that
  header arrived, so a standby never draws the server's traffic.
* A bad SP header, an unknown version or an oversized frame closes the
  connection with close_notify and ``close_reason`` naming what the peer sent;
  so does a TCP EOF without close_notify ("connection closed by peer").
* ``close_cause`` is the stable word counted in the status's ``tcp_closes``: set here
  (``sp_error``, ``connection_lost``) or by the roles (``dead_peer``, ``replaced``, ...)
  through :meth:`closing`, else the core's (``StreamAssociation.close_cause``).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.vpn.sp import (
    FRAME_OVERHEAD,
    SP_PROTOCOL_DTLSVPN,
    SendQueue,
    SpError,
    SpReceiver,
    encode_frame,
    encode_header,
)

REPLAY_MAX = 256  # inner packets kept while UDP is suspect, for the move (tcpclient.py)
MIN_INNER_MTU = 576  # the TCP carrier's inner MTU is never taken below this (stream.inner_mtu)
RECV_SIZE = 65536
RECV_BUDGET = 16  # reads per readable wake-up
DEFAULT_QUEUE_LIMIT = 1 << 20  # bytes queued for a peer that stopped reading


class StreamLink:
    """One peer's TLS/TCP connection (either role)."""

    __slots__ = ("_due_told", "_sp", "assoc", "close_cause", "close_reason", "dropped", "eof",
                 "header_sent", "hold_header", "max_message", "name", "notify", "queue",
                 "sock")

    def __init__(self, sock: socket.socket, assoc: StreamAssociation, *, max_message: int,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT, protocol: int = SP_PROTOCOL_DTLSVPN,
                 name: str = "", hold_header: bool = False) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.assoc = assoc
        self.name = name
        self.max_message = max_message
        self.queue = SendQueue(queue_limit)
        self._sp = SpReceiver(max_message, protocol)
        self.dropped = 0  # inner packets refused (send_packets says why)
        self.eof = False
        self.close_reason: str | None = None
        self.close_cause: str | None = None  # the shell's word; None: the core's
        self.hold_header = hold_header
        self.header_sent = False
        # Called when sending spent the record budget (renewal due) or closed the keys:
        # the role services the link then, not at its next read or timer.
        self.notify: Callable[[], None] | None = None
        self._due_told = False

    def closing(self, cause: str) -> None:
        """Why this link is being closed (the first word given stays)."""
        if self.close_cause is None and not self.closed:
            self.close_cause = cause

    @property
    def cause(self) -> str:
        """The word ``tcp_closes`` counts this link's close under."""
        return self.close_cause or self.assoc.close_cause or "closed"

    @property
    def ready(self) -> bool:
        """Inner packets may flow: TLS established and the peer's SP header accepted."""
        return self.assoc.is_established and self._sp.header_ok

    @property
    def closed(self) -> bool:
        return self.assoc.is_closed or self.eof

    @property
    def wants_write(self) -> bool:
        return bool(self.queue) and not self.eof

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def inner_mtu(self) -> int:
        """The MSS clamp's input while this link carries: the largest inner packet that
        fits one segment of the outer connection (its ``TCP_MAXSEG``, options already
        taken off) with the SP length (8 bytes) and the TLS record (5-byte header and the
        suite's AEAD expansion); at most ``max_message``, at least ``MIN_INNER_MTU`` (a
        larger packet still goes through, spanning two outer segments)."""
        try:
            mss = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        except OSError:  # (not a TCP socket: the tests' socketpairs)
            return self.max_message
        fits = mss - FRAME_OVERHEAD - self.assoc.record_overhead
        return max(MIN_INNER_MTU, min(self.max_message, fits))

    # --- in -----------------------------------------------------------------------------

    def on_readable(self, now: float, wall: float) -> list[bytes]:
        """Read what the socket has (bounded); return the inner packets it completed."""
        packets: list[bytes] = []
        for _ in range(RECV_BUDGET):
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                self._lost(now, f"connection error: {exc.strerror}")
                break
            if not data:
                self._lost(now, "connection closed by peer")
                break
            for record in self.assoc.receive_data(data, now, wall):
                self._framed(record, now, packets)
            if self.assoc.is_closed:
                break
        return packets

    def _framed(self, record: bytes, now: float, packets: list[bytes]) -> None:
        # (also when a close_notify followed in the same read: the reason is the framing)
        try:
            packets += self._sp.feed(record)
        except SpError as exc:
            self.close_reason = f"peer {self.name or '?'} broke the SP framing: {exc}"
            self.closing("sp_error")
            self.assoc.close(now)

    def _lost(self, now: float, reason: str) -> None:
        self.closing("connection_lost")
        self.eof = True
        if self.close_reason is None and not self.assoc.is_closed:
            self.close_reason = reason
        if not self.assoc.is_closed:
            self.assoc.close(now)  # queues close_notify and AssociationClosed

    # --- out ----------------------------------------------------------------------------

    def send_packets(self, packets: list[bytes],
                     drop: Callable[[str, int], None] | None = None) -> int:
        """Frame, seal and queue inner packets; returns how many were accepted.  The rest
        are counted in ``dropped`` and, by reason, through ``drop`` (the peer's counters):
        ``stream_not_ready`` (no SP header yet, or closing), ``stream_queue_full`` (the
        queue's hard limit: a peer that stopped reading), ``stream_keys_spent`` (the keys
        reached their record limit in this batch)."""
        if not self.ready:
            self._refuse(drop, "stream_not_ready", len(packets))
            return 0
        q = self.queue
        room = q.limit - q.size
        per_packet = FRAME_OVERHEAD + self.assoc.record_overhead
        accepted: list[bytes] = []
        full = 0
        for pkt in packets:
            cost = len(pkt) + per_packet
            if cost > room:
                full += 1
                continue
            room -= cost
            accepted.append(encode_frame(pkt, self.max_message))
        if full:
            self._refuse(drop, "stream_queue_full", full)
        sealed = 0
        if accepted:
            assoc = self.assoc
            sealed = assoc.send(accepted)  # (fewer: the keys reached their record limit)
            if sealed < len(accepted):
                self._refuse(drop, "stream_keys_spent", len(accepted) - sealed)
            self._queue(assoc.data_to_send())
            self.flush()
            if self.notify is not None and (assoc.is_closed or self.eof or (
                    not self._due_told and assoc.records_exhausted())):
                self._due_told = True
                self.notify()
        return sealed

    def _refuse(self, drop: Callable[[str, int], None] | None, reason: str, n: int) -> None:
        self.dropped += n
        if drop is not None:
            drop(reason, n)

    def flush(self) -> None:
        """Write as much of the queue as the socket takes."""
        q = self.queue
        while q and not self.eof:
            try:
                n = self.sock.send(q.peek())
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.closing("connection_lost")
                    self.eof = True
                    self.close_reason = self.close_reason or "connection reset by peer"
                    return
                raise
            q.consume(n)

    def service(self, now: float) -> list[Event]:
        """Events and control output; the SP header goes out after the handshake."""
        events = self.assoc.pop_events()
        for ev in events:
            if (isinstance(ev, HandshakeCompleted) and self.assoc.is_established
                    and not self.hold_header):
                self._send_header()
            elif isinstance(ev, AssociationClosed) and self.close_reason is None:
                self.close_reason = ev.reason
        self._queue(self.assoc.data_to_send())
        self.flush()
        return events

    def start_carrying(self) -> None:
        """A held SP header goes out now (the link becomes the carrier)."""
        self.hold_header = False
        if self.assoc.is_established and not self.assoc.is_closed:
            self._send_header()
            self._queue(self.assoc.data_to_send())
            self.flush()

    def _send_header(self) -> None:
        if not self.header_sent:
            self.header_sent = True
            self.assoc.send([encode_header(self._sp.protocol)])

    def close(self, now: float) -> None:
        """close_notify, one last flush, then the socket."""
        if not self.assoc.is_closed:
            self.assoc.close(now)
        self._queue(self.assoc.data_to_send())
        self.flush()
        self.sock.close()

    def _queue(self, data: bytes) -> None:
        """Sealed bytes join the queue, past its limit if need be (they are sealed, so
        the stream cannot skip them), up to ``CONTROL_LIMIT_FACTOR`` x the limit: beyond
        that the peer is not reading what it makes us send, and the link is given up."""
        q = self.queue
        if self.eof or not data:
            return  # (nothing is written after EOF or a give-up)
        if not q.push_control(data):
            self.closing("control_overflow")
            self.close_reason = (f"peer {self.name or '?'} does not read what it makes us "
                                 f"send: over {q.control_limit} bytes queued")
            self.eof = True
