"""Two real daemons in one process on the real clock, over real loopback UDP sockets.

Why this and not ``World``: the compiled lane (``dtlsvpn/daemon/_lane.c``) reads and
writes kernel descriptors itself and runs only on the real monotonic clock, so the fake
UDP ports (framed datagrams) and the fake clock turn it off.  Here each daemon gets a
``FakeTun`` (a real ``Tun`` over a socketpair, which C reads and writes as it would a
TUN queue) and a ``SocketPort`` over a real UDP socket on 127.0.0.1; everything else
(links, routes, DNS, the notifier) stays fake.

Between the client and the server sits a ``Tap``: a UDP socket that forwards every
datagram and records it, so a test can read the exact bytes on the wire, replay one,
or forward a tampered copy.  ``LoopbackWorld.run_until(done, within)`` steps both
loops and the tap with ``run_once(max_wait=0)`` until ``done()`` or ``within`` real
seconds passed.  Nothing here needs a namespace or root.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtlsvpn.daemon.daemon import Daemon
from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.devices import SocketPort
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.settings import load_config
from dtlsvpn.daemon.udp import UdpCounters, open_udp
from dtlsvpn.dtls.rekey import RekeyingClient
from tests.fakes.devices import FakeDevices, FakeNet, FakeTun

Addr = tuple[str, int]
LOCAL = "127.0.0.1"


def free_port() -> int:
    """A UDP port on 127.0.0.1 that nothing holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOCAL, 0))
        port: int = probe.getsockname()[1]
        return port


class LoopbackDevices(FakeDevices):
    """``FakeDevices`` whose UDP ports are real sockets on the loopback interface."""

    def __init__(self) -> None:
        super().__init__(FakeNet(), LOCAL)
        self.real_ports: list[SocketPort] = []

    def open_udp(self, family: socket.AddressFamily, *, bind: Addr | None = None,
                 connect: Addr | None = None, offload: bool = False,
                 counters: UdpCounters | None = None, mark: int = 0) -> Any:
        port = SocketPort(open_udp(family, bind=bind, connect=connect), offload=offload,
                          counters=counters)
        self.real_ports.append(port)
        return port


class Tap:
    """A forwarding UDP middlebox between the client and the server that records both ways.

    The client talks to ``sock`` (``addr``); the tap talks to the server from ``up``, so
    the server sees the tap's ``up`` address as the client's, and ``rebind`` gives it a
    new one (a NAT rebinding: the client's packets arrive from a new source port).
    ``wire`` holds ``(direction, datagram)`` in order, direction ``"up"`` (client to
    server) or ``"down"``; ``tamper``, when set, maps each datagram to what is forwarded
    instead (a list: nothing, a copy, several).  ``close`` ends forwarding with the
    client's side gone (its next datagrams meet a closed port).
    """

    def __init__(self, server: Addr) -> None:
        self.server = server
        self.sock = self._socket()
        self.up = self._socket()
        self.addr: Addr = self.sock.getsockname()
        self.client: Addr | None = None
        self.wire: list[tuple[str, bytes]] = []
        self.tamper: Callable[[str, bytes], list[bytes]] | None = None
        self.closed = False

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCAL, 0))
        sock.setblocking(False)
        return sock

    def rebind(self) -> None:
        """From now on the server hears the client from a new address."""
        self.up.close()
        self.up = self._socket()

    def pump(self) -> int:
        """Forward what waits; how many datagrams that was."""
        if self.closed:
            return 0
        return self._pump(self.sock, "up") + self._pump(self.up, "down")

    def _pump(self, sock: socket.socket, direction: str) -> int:
        n = 0
        while True:
            try:
                data, src = sock.recvfrom(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return n
            n += 1
            if direction == "up":
                self.client = src
            self.wire.append((direction, data))
            out = [data] if self.tamper is None else self.tamper(direction, data)
            for item in out:
                self.send(direction, item)

    def send(self, direction: str, data: bytes) -> None:
        """``data`` on toward the server (``"up"``) or the client, as if forwarded."""
        if direction == "up":
            self.up.sendto(data, self.server)
            return
        assert self.client is not None, "no client seen yet"
        self.sock.sendto(data, self.client)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.up.close()


class Node:
    """One daemon on the real clock with its loopback devices."""

    def __init__(self, conf: Path, seed: int) -> None:
        self.devices = LoopbackDevices()
        self.loop = Loop()
        self.daemon = Daemon(load_config(conf), devices=self.devices, loop=self.loop,
                             rng=random.Random(seed))
        assert self.daemon.start(), f"{conf.name} did not start"
        self.stopped = False

    @property
    def tun(self) -> FakeTun:
        assert self.devices.tun is not None
        return self.devices.tun

    @property
    def conn(self) -> RekeyingClient:
        """The client's connection (its current association and any renewal)."""
        peer = self.datapath.client_peer
        assert peer is not None and peer.conn is not None, "not a dialling client"
        return peer.conn

    @property
    def datapath(self) -> Datapath:
        dp = self.daemon.datapath
        assert dp is not None, "not started"
        return dp

    def snapshot(self) -> dict[str, Any]:
        return self.daemon.snapshot()

    def peer(self) -> dict[str, Any]:
        (only,) = self.snapshot()["peers"]
        return dict(only)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.daemon.stop()


class LoopbackWorld:
    """A server, a client and the tap between them (see the module docstring)."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.tap: Tap | None = None

    def start(self, conf: Path) -> Node:
        node = Node(conf, len(self.nodes) + 1)
        self.nodes.append(node)
        return node

    def step(self) -> int:
        ran = sum(n.loop.run_once(max_wait=0) for n in self.nodes if not n.stopped)
        return ran + (self.tap.pump() if self.tap is not None else 0)

    def run_until(self, done: Callable[[], bool], within: float = 5.0) -> bool:
        """Step until ``done()`` or ``within`` real seconds passed; ``done()`` at the end."""
        limit = time.monotonic() + within
        while time.monotonic() < limit:
            if done():
                return True
            if not self.step():
                time.sleep(0.0002)
        return done()

    def settle(self, seconds: float = 0.05) -> None:
        """Run for ``seconds`` of real time (what is in flight arrives)."""
        self.run_until(lambda: False, within=seconds)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.tap is not None and not self.tap.closed:
            self.tap.close()
