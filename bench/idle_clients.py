"""Many idle DTLS clients in one process: ``python -m bench.idle_clients`` (in a namespace).

Each client is a sans-I/O :class:`~dtlsvpn.dtls.association.Association` with a PSK
identity of its own (``PREFIX00001`` …) on its own connected UDP socket, so the
server sees N peers at N source ports.  The sockets bind to the ``--bind`` addresses in
turn: the server admits at most 20 new associations a second from one source host
(README "Security"), so N peers from one address would take N / 20 seconds to come
up, where from 64 hosts they come up as fast as the two ends can handshake.
Handshakes start at most ``--concurrency`` at a time; once established a client stays
idle and its keepalives run as the core schedules them (a heartbeat after 2 s without
traffic; it answers the server's too).
Path MTU discovery is off on these clients (the server still probes them).

One epoll set holds every socket; the timers sit in a heap of (deadline, index)
whose stale entries are skipped, so a wake-up costs the work due, not N.  This
process shares the bench's 2 cores with the server it loads, so it is kept lean: a
deadline is pushed only when it changed (``armed``), an entry that is not the armed
deadline is skipped without asking its association, and the clocks are read once per
epoll wake-up, not per datagram.  The core's keepalive does the rest: the client runs
the pair's one keepalive per idle interval (the server defers to it, dtls/heartbeat.py)
and the server's answers are taken at the record header (dtls/hbfast.py).
Progress is written as JSON to ``--status`` (atomically, twice a second):
established, handshaking, failed, closed and unresponsive counts.  The process ends
after ``--limit`` seconds or on SIGTERM, after a close_notify from every association
(so the server drops them at once and the bench can measure without them again).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import resource
import select
import signal
import socket
import time
from pathlib import Path

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import AssociationClosed, HandshakeCompleted, PeerUnresponsive

RECV_SIZE = 65535


class Clients:
    def __init__(self, server: tuple[str, int], binds: list[str], psk: bytes, prefix: str,
                 count: int) -> None:
        self.server, self.binds, self.psk, self.prefix = server, binds, psk, prefix
        self.count = count
        self.epoll = select.epoll()
        self.socks: list[socket.socket] = []
        self.assocs: list[Association] = []
        self.by_fd: dict[int, int] = {}
        self.polls: list[select.poll] = []  # one per socket: is another datagram waiting?
        self.timers: list[tuple[float, int]] = []
        self.armed: list[float | None] = []  # the deadline pushed for each association
        self.counts = {"established": 0, "handshaking": 0, "failed": 0, "closed": 0,
                       "unresponsive": 0, "started": 0}
        self.up: set[int] = set()  # indexes of established associations

    def start_one(self, now: float) -> None:
        i = len(self.assocs)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.binds[i % len(self.binds)], 0))
        sock.connect(self.server)
        sock.setblocking(False)
        identity = f"{self.prefix}{i + 1:05d}".encode()
        assoc = Association(DtlsConfig(is_client=True, psk=self.psk, psk_identity=identity,
                                       pmtu=None, rekey_interval=None))
        self.socks.append(sock)
        self.assocs.append(assoc)
        self.armed.append(None)
        self.by_fd[sock.fileno()] = i
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN)
        self.polls.append(poll)
        self.counts["started"] += 1
        self.counts["handshaking"] += 1
        assoc.connect(now, time.time())
        self.service(i, now)

    def service(self, i: int, now: float, floor: float = 0.0) -> None:
        """Send what association ``i`` queued, take its events, re-arm its timer."""
        assoc, sock = self.assocs[i], self.socks[i]
        for d in assoc.datagrams_to_send(now):
            with contextlib.suppress(OSError):
                sock.send(d)
        for ev in assoc.pop_events():
            self._note(i, ev)
        t = assoc.get_timer()
        if t is not None:
            t = max(t, floor)
            if t != self.armed[i]:
                self.armed[i] = t
                heapq.heappush(self.timers, (t, i))
        else:
            self.armed[i] = None

    def _note(self, i: int, ev: object) -> None:
        c = self.counts
        if isinstance(ev, HandshakeCompleted):
            c["established"] += 1
            c["handshaking"] -= 1
            self.up.add(i)
        elif isinstance(ev, AssociationClosed):
            if i in self.up:
                self.up.discard(i)
                c["established"] -= 1
                c["closed"] += 1
            else:
                c["handshaking"] -= 1
                c["failed"] += 1
        elif isinstance(ev, PeerUnresponsive):
            c["unresponsive"] += 1

    def readable(self, fd: int, now: float, wall: float) -> None:
        """Drain the socket: after each datagram a zero-timeout poll says whether another
        waits, so a lone keepalive answer costs no recv that fails with EAGAIN (one
        exception per wake-up, ≈7 000 instructions, against ≈1 000 for the poll)."""
        i = self.by_fd[fd]
        sock, assoc = self.socks[i], self.assocs[i]
        more = self.polls[i].poll
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except OSError:  # ECONNREFUSED and the like (or a spurious wake-up): nothing
                break
            assoc.receive_datagram(data, now, wall)
            if not more(0):
                break
        self.service(i, now)

    def due(self, now: float) -> None:
        timers, armed = self.timers, self.armed
        while timers and timers[0][0] <= now:
            t, i = heapq.heappop(timers)
            if armed[i] != t:
                continue  # stale: the association was re-armed since
            armed[i] = None
            current = self.assocs[i].get_timer()
            if current is not None and current <= now:
                self.assocs[i].handle_timer(now)
            self.service(i, now, floor=now + 0.001)

    def close_all(self, now: float) -> None:
        """close_notify from every association, so the server forgets them at once."""
        for i, assoc in enumerate(self.assocs):
            if not assoc.is_closed:
                assoc.close(now)
                self.service(i, now)
        for sock in self.socks:
            sock.close()

    def next_wait(self, now: float) -> float:
        return max(0.0, min(0.5, self.timers[0][0] - now)) if self.timers else 0.5


def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.count + 64)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    host, port = args.server.rsplit(":", 1)
    psk = bytes.fromhex(Path(args.psk_file).read_text().strip())
    binds = [b.strip() for b in args.bind.split(",") if b.strip()]
    clients = Clients((host, int(port)), binds, psk, args.prefix, args.count)
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    status = Path(args.status)
    end = time.monotonic() + args.limit
    next_status = 0.0
    while not stop and (now := time.monotonic()) < end:
        c = clients.counts
        while c["started"] < args.count and c["handshaking"] < args.concurrency:
            clients.start_one(now)
        events = clients.epoll.poll(clients.next_wait(now))
        now, wall = time.monotonic(), time.time()
        for fd, _ in events:
            clients.readable(fd, now, wall)
        clients.due(now)
        if now >= next_status:
            next_status = now + 0.5
            _write_status(status, c)
    clients.close_all(time.monotonic())
    _write_status(status, clients.counts)
    return 0


def _write_status(path: Path, counts: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle_clients", description=__doc__)
    p.add_argument("--server", required=True, help="HOST:PORT of the dtlsvpn server")
    p.add_argument("--bind", required=True,
                   help="local addresses of the client sockets (comma list, used in turn)")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--psk-file", required=True, help="the PSK in hex, shared by every client")
    p.add_argument("--prefix", default="idle-", help="PSK identity prefix")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    p.add_argument("--status", required=True, help="JSON progress file")
    p.add_argument("--limit", type=float, default=600, help="seconds before exiting")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
