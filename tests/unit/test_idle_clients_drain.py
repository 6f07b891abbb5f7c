"""bench/idle_clients.py drains a socket without a recv that fails with EAGAIN.

Loopback UDP only (testing.md address plan): the datagrams that wait are all read, in
order, and the drain ends on a zero-timeout poll, not on an exception.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from bench.idle_clients import Clients


class _CountingSocket(socket.socket):
    recvs = 0
    failed = 0

    def recv(self, size: int, flags: int = 0) -> bytes:  # type: ignore[override]
        type(self).recvs += 1
        try:
            return super().recv(size, flags)
        except OSError:
            type(self).failed += 1
            raise


class _Assoc:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def receive_datagram(self, data: bytes, now: float, wall: float) -> list[bytes]:
        self.got.append(data)
        return []

    def datagrams_to_send(self, now: float) -> list[bytes]:
        return []

    def pop_events(self) -> list[Any]:
        return []

    def get_timer(self) -> float | None:
        return None


def test_readable_drains_every_datagram_without_eagain() -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    sock = _CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(peer.getsockname())
    sock.setblocking(False)
    clients = Clients(peer.getsockname(), "127.0.0.1", b"k" * 32, "idle-", 1)
    assoc = _Assoc()
    clients.socks.append(sock)
    clients.assocs.append(assoc)  # type: ignore[arg-type]
    clients.armed.append(None)
    clients.by_fd[sock.fileno()] = 0
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    clients.polls.append(poll)
    try:
        for batch in ([b"one"], [b"a", b"b", b"c"]):
            for d in batch:
                peer.sendto(d, sock.getsockname())
            select.select([sock], [], [], 2.0)
            assoc.got.clear()
            clients.readable(sock.fileno(), 1.0, 1.0)
            assert assoc.got == batch
        assert _CountingSocket.failed == 0 and _CountingSocket.recvs == 4
    finally:
        sock.close()
        peer.close()
        clients.epoll.close()
