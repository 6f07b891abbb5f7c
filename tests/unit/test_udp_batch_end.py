"""Where a ``SocketPort`` receive batch ends: at EAGAIN, at the budget, or right after a
lone datagram when a zero-timeout poll says nothing else waits (no EAGAIN read, no
exception).

Each case runs over the real kernel (loopback UDP) and over the fake kernel socket of
``tests/fakes`` (an AF_UNIX pair, which polls the same), with GRO on and off, and
counts the read calls the port made: what is returned must be exactly what was sent,
in order, whatever the batch boundaries.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dtlsvpn.daemon.devices import SocketPort
from dtlsvpn.daemon.udp import open_udp
from tests.fakes.devices import FakeNet, FakeUdp

BUDGET = 8
A = ("198.18.0.1", 4433)
B = ("198.18.0.2", 40001)


class Counted:
    """A socket (real or fake) whose read calls and EAGAIN failures are counted."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.family = sock.family
        self.reads = 0
        self.eagain = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def _read(self, method: Callable[..., Any], *args: Any) -> Any:
        self.reads += 1
        try:
            return method(*args)
        except BlockingIOError:
            self.eagain += 1
            raise

    def recv(self, *args: Any) -> Any:
        return self._read(self.sock.recv, *args)

    def recvfrom(self, *args: Any) -> Any:
        return self._read(self.sock.recvfrom, *args)

    def recvmsg(self, *args: Any) -> Any:
        return self._read(self.sock.recvmsg, *args)


class Pair:
    """A connected sender and the receiving port under test (``rx``, ``counted``)."""

    def __init__(self, send: Callable[[bytes], None], rx: SocketPort, counted: Counted,
                 closers: list[Callable[[], None]]) -> None:
        self.send = send
        self.rx = rx
        self.counted = counted
        self._closers = closers

    def close(self) -> None:
        for close in self._closers:
            close()


def real_pair(gro: bool, connected: bool) -> Pair:
    rx_sock = open_udp(socket.AF_INET, bind=("127.0.0.1", 0), pmtu_probe=False,
                       large_buffers=False)
    tx_sock = open_udp(socket.AF_INET, connect=rx_sock.getsockname(), pmtu_probe=False,
                       large_buffers=False)
    if connected:
        rx_sock.connect(tx_sock.getsockname())
    counted = Counted(rx_sock)
    rx = SocketPort(counted, offload=gro)
    return Pair(tx_sock.send, rx, counted, [rx_sock.close, tx_sock.close])


def fake_pair(gro: bool, connected: bool) -> Pair:
    net = FakeNet(gro=gro)
    far = FakeUdp(net, socket.AF_INET, A, B if connected else None, offload=gro)
    tx = FakeUdp(net, socket.AF_INET, B, A)
    counted = Counted(far.fake)
    rx = SocketPort(counted, offload=gro)
    return Pair(lambda data: tx.send_batch([data], None) and None, rx, counted,
                [far.close, tx.close])


KINDS = {"real": real_pair, "fake": fake_pair}


@pytest.fixture(params=[(kind, gro, connected) for kind in KINDS for gro in (False, True)
                        for connected in (False, True)],
                ids=lambda p: f"{p[0]}-{'gro' if p[1] else 'plain'}-"
                              f"{'recv' if p[2] else 'recvfrom'}")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Pair, bool]]:
    kind, gro, connected = request.param
    made = KINDS[kind](gro, connected)
    try:
        yield made, connected
    finally:
        made.close()


def batch(pair: Pair, connected: bool) -> tuple[list[bytes], OSError | None]:
    if connected:
        return pair.rx.recv_batch(BUDGET)
    got, error = pair.rx.recvfrom_batch(BUDGET)
    return [data for data, _ in got], error


def sent(pair: Pair, n: int, size: int = 100) -> list[bytes]:
    out = [bytes([i + 1]) * size for i in range(n)]
    for data in out:
        pair.send(data)
    return out


def reads(pair: Pair) -> tuple[int, int]:
    """(read calls, of which EAGAIN) since the last call."""
    counted = pair.counted
    out = (counted.reads, counted.eagain)
    counted.reads = counted.eagain = 0
    return out


def test_an_empty_socket_is_one_read_that_finds_nothing(pair: tuple[Pair, bool]) -> None:
    p, connected = pair
    assert batch(p, connected) == ([], None)
    assert reads(p) == (1, 1)


def test_a_lone_datagram_ends_the_batch_without_an_eagain_read(
        pair: tuple[Pair, bool]) -> None:
    p, connected = pair
    want = sent(p, 1)
    assert batch(p, connected) == (want, None)
    assert reads(p) == (1, 0)
    assert batch(p, connected) == ([], None)  # and nothing was left behind


def test_two_datagrams_are_read_until_eagain(pair: tuple[Pair, bool]) -> None:
    p, connected = pair
    want = sent(p, 2)
    assert batch(p, connected) == (want, None)
    assert reads(p) == (3, 1)


def test_a_batch_of_exactly_the_budget_stops_at_the_budget(pair: tuple[Pair, bool]) -> None:
    p, connected = pair
    want = sent(p, BUDGET)
    assert batch(p, connected) == (want, None)
    assert reads(p) == (BUDGET, 0)
    assert batch(p, connected) == ([], None)


def test_one_over_the_budget_comes_at_the_next_wake_up(pair: tuple[Pair, bool]) -> None:
    p, connected = pair
    want = sent(p, BUDGET + 1)
    assert batch(p, connected) == (want[:BUDGET], None)
    assert reads(p) == (BUDGET, 0)
    assert batch(p, connected) == (want[BUDGET:], None)
    assert reads(p) == (1, 0)  # now a lone one


def test_an_empty_datagram_behind_another_is_not_lost(pair: tuple[Pair, bool]) -> None:
    p, connected = pair
    first = sent(p, 1)
    p.send(b"")
    got: list[bytes] = []
    for _ in range(3):
        got += batch(p, connected)[0]
    assert got == [*first, b""]


def test_a_port_without_a_pollable_descriptor_is_read_until_eagain() -> None:
    p = fake_pair(False, False)
    try:
        p.rx._ready = None  # as for a double whose fileno() is not a descriptor
        for _ in range(2):
            want = sent(p, 1)
            assert batch(p, False) == (want, None)
            assert reads(p) == (2, 1)
    finally:
        p.close()


def test_a_double_without_a_descriptor_gets_no_poller() -> None:
    class NoFd:
        family = socket.AF_INET

        def fileno(self) -> int:
            return -1

        def send(self, data: bytes) -> int:
            return len(data)

        sendto = recv = recvfrom = send

    assert SocketPort(NoFd())._ready is None


def test_a_refused_datagram_is_the_batch_error_and_ends_nothing_else() -> None:
    """A connected socket whose peer's port is closed: the ICMP error (queued with
    IP_RECVERR, reported by the next read as ECONNREFUSED) is returned as the error."""
    rx_sock = open_udp(socket.AF_INET, bind=("127.0.0.1", 0), pmtu_probe=False,
                       large_buffers=False)
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    dead = gone.getsockname()
    gone.close()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    rx_sock.connect(dead)
    port = SocketPort(rx_sock)
    try:
        rx_sock.send(b"to nobody")  # port unreachable comes back at once on loopback
        got, error = port.recv_batch(BUDGET)
        assert got == [] and error is not None and error.errno == errno.ECONNREFUSED
        assert [h.destination for h in port.read_errors()] in ([], [dead])
        assert port.recv_batch(BUDGET) == ([], None)
    finally:
        port.close()
        tx.close()
