"""Fake TUN, UDP, netlink, notifier and resolver with the shapes of ``dtlsvpn.daemon.devices``.

Every fake that the loop watches has a real descriptor: one end of an
``AF_UNIX``/``SOCK_SEQPACKET`` socketpair (packet boundaries kept, non-blocking,
level-triggered readiness in epoll).  The daemon holds the near end; the far end is
the "wire" or the "kernel": a test writes packets into it and reads packets out.

``FakeTun`` is the production ``Tun`` with its descriptor swapped for a socketpair, so
its ``read_batch``/``write_batch`` are the real ones.  ``FakeUdp`` datagrams carry their
source address in a small header on the pair; ``FakeNet`` delivers ``sendto`` to the
port bound at the destination, drops what no port listens for and what is larger than
``path_mtu`` (a path that drops big DF packets without ICMP), and never fails a send.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.tun import Tun
from dtlsvpn.daemon.udp import ErrorHint, normalise

Addr = tuple[str, int]
BUFFER = 4 << 20  # bytes queued on a pair before a write fails (net.core.wmem_max)


def _pair() -> tuple[socket.socket, socket.socket]:
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (near, far):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    return near, far


class FakeTun(Tun):
    """The real ``Tun`` batch code over one end of a socketpair."""

    def __init__(self, name: str) -> None:  # no super().__init__: no /dev/net/tun
        near, self.far = _pair()
        self.fd = near.detach()
        self.name = name
        self.closed = False

    def inject(self, packets: Iterable[bytes]) -> None:
        """Packets the host sends into the tunnel."""
        for pkt in packets:
            self.far.send(pkt)

    def drain(self) -> list[bytes]:
        """Packets the daemon wrote to the host."""
        out: list[bytes] = []
        while True:
            try:
                out.append(self.far.recv(65535))
            except BlockingIOError:
                return out

    def close(self) -> None:
        super().close()
        self.closed = True
        self.far.close()


class FakeNet:
    """An underlay of UDP ports keyed by (host, port)."""

    def __init__(self, *, path_mtu: int = 1500) -> None:
        self.path_mtu = path_mtu
        self.ports: dict[Addr, FakeUdp] = {}
        self.names: dict[str, str] = {}  # host name → address, for the resolver
        self.delivered = 0
        self.dropped: dict[str, int] = {}
        self._ephemeral = 40000

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def ephemeral(self, host: str) -> Addr:
        self._ephemeral += 1
        return host, self._ephemeral

    def deliver(self, data: bytes, src: Addr, dst: Addr) -> None:
        header = 40 if ":" in dst[0] else 20
        if len(data) + header + 8 > self.path_mtu:
            self._drop("too_big")
            return
        port = self.ports.get(dst)
        if port is None:
            self._drop("no_listener")
            return
        if port.arrive(data, src):
            self.delivered += 1
        else:
            self._drop("queue_full")


class FakeUdp:
    """A non-blocking UDP port on a ``FakeNet`` (connected when ``remote`` is set)."""

    def __init__(self, net: FakeNet, family: socket.AddressFamily, local: Addr,
                 remote: Addr | None = None) -> None:
        if local in net.ports:
            raise OSError(errno.EADDRINUSE, f"{local} in use")
        self.net = net
        self.family = family
        self.local = local
        self.remote = remote
        self.errors: list[ErrorHint] = []
        self._near, self._far = _pair()
        self.closed = False
        net.ports[local] = self

    def fileno(self) -> int:
        return self._near.fileno()

    def sendto(self, data: bytes, addr: Addr, /) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        self.net.deliver(bytes(data), self.local, normalise(addr))
        return len(data)

    def send(self, data: bytes, /) -> int:
        if self.remote is None:
            raise OSError(errno.EDESTADDRREQ, "not connected")
        return self.sendto(data, self.remote)

    def recvfrom(self, size: int, /) -> tuple[bytes, Any]:
        raw = self._near.recv(size + 64)
        n = raw[0]
        host, port = raw[1:1 + n].decode().rsplit(" ", 1)
        return raw[1 + n:], (host, int(port))

    def recv(self, size: int, /) -> bytes:
        while True:
            data, src = self.recvfrom(size)
            if self.remote is None or src == self.remote:
                return data

    def arrive(self, data: bytes, src: Addr) -> bool:
        if self.closed:
            return False
        tag = f"{src[0]} {src[1]}".encode()
        try:
            self._far.send(bytes([len(tag)]) + tag + data)
        except BlockingIOError:
            return False
        return True

    def read_errors(self) -> list[ErrorHint]:
        out, self.errors = self.errors, []
        return out

    def path_mtu(self) -> int | None:
        return self.net.path_mtu if self.remote is not None else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.net.ports.get(self.local) is self:
            del self.net.ports[self.local]
        self._near.close()
        self._far.close()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FakeLink:
    """What netlink would have done to the interface: MTU, link state, addresses, routes."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.mtu: int | None = None
        self.up = False
        self.addresses: list[Any] = []
        self.routes: list[Network] = []
        self.mtu_history: list[int] = []

    def configure(self, mtu: int, addresses: Iterable[Any], routes: Iterable[Network]) -> None:
        self.set_mtu(mtu)
        self.up = True
        self.addresses = list(addresses)
        self.add_routes(routes)

    def add_routes(self, routes: Iterable[Network]) -> None:
        connected = {a.network for a in self.addresses}
        for net in routes:
            if net not in connected and net not in self.routes:
                self.routes.append(net)

    def remove_routes(self, routes: Iterable[Network]) -> None:
        for net in list(routes):
            if net in self.routes:
                self.routes.remove(net)

    def set_mtu(self, mtu: int) -> None:
        self.mtu = mtu
        self.mtu_history.append(mtu)

    def teardown(self) -> None:
        self.routes.clear()
        self.addresses.clear()
        self.up = False

    def wait_gone(self, timeout: float = 5.0) -> bool:
        return True


class FakeNotifier(Notifier):
    """sd_notify messages, one line each, kept in ``messages``."""

    def __init__(self, *, watchdog_usec: int | None = 2_000_000) -> None:
        env = {"NOTIFY_SOCKET": "@fake"}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        super().__init__(environ=env)
        self.messages: list[str] = []

    def notify(self, message: str) -> bool:
        self.messages.extend(message.splitlines())
        return True


class FakeDevices:
    """``Devices`` for one host of a ``FakeNet``: its underlay address is ``host``."""

    def __init__(self, net: FakeNet, host: str, *, notifier: FakeNotifier | None = None,
                 route_mtu: int | None = None, clock: Callable[[], float] = lambda: 0.0
                 ) -> None:
        self.net = net
        self.host = host
        self.clock = clock
        self.notifier = notifier if notifier is not None else FakeNotifier()
        self._route_mtu = route_mtu
        self.tun: FakeTun | None = None
        self.links: list[FakeLink] = []
        self.ports: list[FakeUdp] = []
        self.resolved: list[tuple[float, str]] = []  # every name lookup: (when, name)

    @property
    def link_state(self) -> FakeLink:
        return self.links[-1]

    def open_tun(self, name: str) -> FakeTun:
        self.tun = FakeTun(name)
        return self.tun

    def open_udp(self, family: socket.AddressFamily, *, bind: Addr | None = None,
                 connect: Addr | None = None) -> FakeUdp:
        local = bind if bind is not None else self.net.ephemeral(self.host)
        port = FakeUdp(self.net, family, local, connect)
        self.ports.append(port)
        return port

    def link(self, ifname: str) -> FakeLink:
        self.links.append(FakeLink(ifname))
        return self.links[-1]

    def route_mtu(self, host: str) -> int | None:
        return self._route_mtu

    def resolve(self, host: str, port: int) -> tuple[socket.AddressFamily, Addr]:
        self.resolved.append((self.clock(), host))
        address = self.net.names.get(host, host)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}") from None
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return family, (str(ip), port)

    def crash(self) -> None:
        """The process died: its ports vanish without a word (no close_notify)."""
        for port in self.ports:
            port.close()
