"""The server's TCP listener under load (``transport.py``, ``tcpgate.py``), on fake devices.

Connections that never start their TLS handshake are capped, per source and in all; a
listener whose ``accept`` fails for want of descriptors rests instead of failing on
every loop iteration.  The fake network carries TCP over real loopback connections.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtlsvpn.daemon.tcpgate import TcpLimits
from dtlsvpn.daemon.transport import ServerTcp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair
from tests.shell.conftest import SERVER


@pytest.fixture
def idle() -> Iterator[list[socket.socket]]:
    """Connections opened by a test (closed at the end)."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def _server(world: World, tmp_path: Path) -> tuple[Host, ServerTcp, tuple[str, int]]:
    server_conf, _ = psk_pair(tmp_path, transport="tcp")
    server = world.start(server_conf, SERVER)
    tcp = server.daemon.role.tcp
    assert isinstance(tcp, ServerTcp) and tcp.lsock is not None
    return server, tcp, world.net.tcp[(SERVER, 4433)]


def _drops(host: Host) -> dict[str, int]:
    return dict(host.snapshot()["interface"]["drops"])


def _connect(world: World, real: tuple[str, int], n: int, source: str = "127.0.0.1"
             ) -> list[socket.socket]:
    """``n`` connections from ``source`` that send nothing; the server accepts each
    before the next (the fake listener's backlog is short)."""
    out = []
    for _ in range(n):
        out.append(socket.create_connection(real, timeout=5.0, source_address=(source, 0)))
        world.settle()
    return out


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_idle_connections_from_one_source_are_capped(
        world: World, tmp_path: Path, idle: list[socket.socket],
        caplog: pytest.LogCaptureFixture) -> None:
    """Connections that send nothing held a descriptor each for the handshake timeout:
    one host could take them all.  Now 16 per source; the rest are accepted and closed
    at once, counted, and said in one line."""
    server, tcp, real = _server(world, tmp_path)
    per_source = tcp.pending.limits.max_pending_per_source
    idle += _connect(world, real, per_source + 9)
    world.run_for(0.5)
    assert len(tcp.pending) == len(tcp.owners) == per_source
    assert _drops(server).get("tcp_source_limited") == 9
    assert len(_warnings(caplog, "closed at once: tcp_source_limited")) == 1
    # The ones over the cap were closed by the server: EOF on our side.
    closed = 0
    for s in idle:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except (BlockingIOError, ConnectionResetError):
            closed += 0
    assert closed == 9
    # Another source is not affected.
    idle += _connect(world, real, 2, "127.0.0.2")
    world.run_for(0.5)
    assert len(tcp.pending) == per_source + 2
    assert _drops(server).get("tcp_source_limited") == 9
    # A connection that goes away frees its place.
    for s in idle[:per_source + 9]:
        s.close()
    del idle[:per_source + 9]
    world.run_for(0.5)
    assert len(tcp.pending) == 2 and tcp.pending.from_source("127.0.0.1") == 0


def test_a_full_table_gives_up_its_oldest_connection_for_a_new_one(
        world: World, tmp_path: Path, idle: list[socket.socket]) -> None:
    """Every source under its own cap, the table full: the connection pending the
    longest is closed for the new one, so idle connections cannot hold every place."""
    server, tcp, real = _server(world, tmp_path)
    tcp.pending.limits = TcpLimits(max_pending=4)
    for i in range(6):
        idle += _connect(world, real, 1, f"127.0.0.{10 + i}")
    world.run_for(0.5)
    assert len(tcp.pending) == len(tcp.owners) == 4
    assert _drops(server).get("tcp_pending_evicted") == 2
    assert "tcp_source_limited" not in _drops(server)
    assert [tcp.pending.from_source(f"127.0.0.{10 + i}") for i in range(6)] == [0, 0, 1, 1,
                                                                                1, 1]


def test_a_client_gets_in_while_idle_connections_fill_the_table(
        world: World, tmp_path: Path, idle: list[socket.socket]) -> None:
    """The attack a refusing table allowed: 4 sources, each under its cap, hold every
    place with connections that never speak; a real client still completes (it evicts
    the oldest idle one) and carries."""
    server_conf, client_conf = psk_pair(tmp_path, transport="tcp")
    server = world.start(server_conf, SERVER)
    tcp = server.daemon.role.tcp
    assert isinstance(tcp, ServerTcp)
    tcp.pending.limits = TcpLimits(max_pending=8, max_pending_per_source=2)
    for i in range(4):
        idle += _connect(world, world.net.tcp[(SERVER, 4433)], 2, f"127.0.0.{20 + i}")
    assert len(tcp.pending) == 8
    client = world.start(client_conf, "198.18.0.2")
    assert world.run_until(lambda: server.peer()["state"] == "established", within=10.0)
    assert client.peer()["transport"] == "tcp"
    assert _drops(server).get("tcp_pending_evicted") == 1


def test_a_client_completes_beside_idle_connections(world: World, tmp_path: Path,
                                                    idle: list[socket.socket]) -> None:
    """A handshake that completes leaves the pending count: the client's link is not
    pending once it carries, and idle connections of another source do not stop it."""
    server_conf, client_conf = psk_pair(tmp_path, transport="tcp")
    server = world.start(server_conf, SERVER)
    tcp = server.daemon.role.tcp
    idle += _connect(world, world.net.tcp[(SERVER, 4433)], 5, "127.0.0.3")
    client = world.start(client_conf, "198.18.0.2")
    assert world.run_until(lambda: server.peer()["state"] == "established", within=10.0)
    assert len(tcp.pending) == 5 and len(tcp.owners) == 6
    assert tcp.pending.from_source("127.0.0.3") == 5
    assert client.peer()["transport"] == "tcp"


class _Starved:
    """The listener as the server sees it while the process has no descriptor left:
    ``accept`` fails with EMFILE (the connection stays in the backlog, the listening
    socket readable)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.failing = True
        self.calls = 0

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        self.calls += 1
        if self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def test_accept_out_of_descriptors_rests_the_listener(
        world: World, tmp_path: Path, idle: list[socket.socket],
        caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE from accept left the level-triggered listener readable: it failed on every
    iteration (403 927 warnings in 3 s in the audit; here the fake world's loop would
    never let time pass).  Now it leaves the loop for ``accept_backoff`` between tries,
    with one line for the episode and one when accept works again."""
    caplog.set_level(logging.INFO, "dtlsvpn")
    server, tcp, real = _server(world, tmp_path)
    starved = _Starved(tcp.lsock)  # type: ignore[arg-type]
    tcp.lsock = starved  # type: ignore[assignment]
    idle += _connect(world, real, 1)
    rests = 4
    world.run_for(rests * tcp.pending.limits.accept_backoff + 0.5)
    assert 1 <= starved.calls <= rests + 1, starved.calls
    assert _drops(server).get("tcp_accept_failed") == starved.calls
    assert len(_warnings(caplog, "TCP accept")) == 1
    assert not tcp.owners
    starved.failing = False
    world.run_for(2 * tcp.pending.limits.accept_backoff)
    assert len(tcp.owners) == 1 and len(tcp.pending) == 1
    assert any("TCP accept works again" in r.getMessage() for r in caplog.records)
