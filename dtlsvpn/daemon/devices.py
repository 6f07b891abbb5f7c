"""The daemon's I/O edges as small interfaces, and the real devices behind them.

The daemon opens nothing itself: it asks its :class:`Platform` for the TUN queue, UDP
ports, the interface's kernel configuration, route MTUs, name resolution and the
service manager's notifier.  ``Devices()`` builds the real ones (``tun.py``, ``udp.py``,
``netlink.py``, ``systemd.py``); ``tests/fakes`` has in-memory doubles with the same
shape (wireguard-go's ``tuntest``/``bindtest`` idea), so the daemon's own code (data
path, dialling, events, reload) runs in plain pytest without root.

Invariants every implementation keeps: an object with a descriptor (``fd`` /
``fileno()``) is non-blocking and may be registered with the :class:`~.loop.Loop`;
``send``/``sendto``/``recv``/``recvfrom`` behave as on a non-blocking datagram socket
(``BlockingIOError`` when empty or full, ``OSError`` for errors); one ``read_batch``
entry is one whole IP packet.  A :class:`SocketPort` exposes the socket's own bound
methods, so the data path pays nothing for the indirection.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any, Protocol

from dtlsvpn.daemon.netlink import Netlink, route_mtu
from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.tun import Tun
from dtlsvpn.daemon.udp import ErrorHint, open_udp, read_errors, socket_mtu

Addr = tuple[str, int]
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TunDevice(Protocol):
    """One TUN queue: whole IP packets in and out, in batches."""

    fd: int
    name: str

    def read_batch(self, budget: int) -> list[bytes]: ...
    def write_batch(self, packets: list[bytes]) -> int: ...
    def close(self) -> None: ...


class UdpPort(Protocol):
    """A non-blocking UDP socket (connected for a client) and its error queue."""

    family: socket.AddressFamily

    def fileno(self) -> int: ...
    def send(self, data: bytes, /) -> int: ...
    def sendto(self, data: bytes, addr: Addr, /) -> int: ...
    def recv(self, size: int, /) -> bytes: ...
    def recvfrom(self, size: int, /) -> tuple[bytes, Any]: ...
    def read_errors(self) -> list[ErrorHint]: ...
    def path_mtu(self) -> int | None: ...
    def close(self) -> None: ...


class LinkConfig(Protocol):
    """Kernel state of the tunnel interface: MTU, link, addresses, routes."""

    def configure(self, mtu: int, addresses: Iterable[Interface],
                  routes: Iterable[Network]) -> None: ...
    def add_routes(self, routes: Iterable[Network]) -> None: ...
    def remove_routes(self, routes: Iterable[Network]) -> None: ...
    def set_mtu(self, mtu: int) -> None: ...
    def teardown(self) -> None: ...
    def wait_gone(self, timeout: float = 5.0) -> bool: ...


class Platform(Protocol):
    """Where the daemon gets its devices from (``Devices``, or ``tests/fakes``)."""

    @property
    def notifier(self) -> Notifier: ...

    def open_tun(self, name: str) -> TunDevice: ...
    def open_udp(self, family: socket.AddressFamily, *, bind: Addr | None = None,
                 connect: Addr | None = None) -> UdpPort: ...
    def link(self, ifname: str) -> LinkConfig: ...
    def route_mtu(self, host: str) -> int | None: ...
    def resolve(self, host: str, port: int) -> tuple[socket.AddressFamily, Addr]: ...


class SocketPort:
    """A real UDP socket as a :class:`UdpPort`."""

    __slots__ = ("family", "fileno", "recv", "recvfrom", "send", "sendto", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.family = sock.family
        self.fileno = sock.fileno
        self.send = sock.send
        self.sendto = sock.sendto
        self.recv = sock.recv
        self.recvfrom = sock.recvfrom

    def read_errors(self) -> list[ErrorHint]:
        return read_errors(self.sock)

    def path_mtu(self) -> int | None:
        return socket_mtu(self.sock)

    def close(self) -> None:
        self.sock.close()


class Devices:
    """The real devices: /dev/net/tun, UDP sockets, pyroute2, DNS, sd_notify."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier if notifier is not None else Notifier()

    def open_tun(self, name: str) -> TunDevice:
        return Tun(name)

    def open_udp(self, family: socket.AddressFamily, *, bind: Addr | None = None,
                 connect: Addr | None = None) -> UdpPort:
        return SocketPort(open_udp(family, bind=bind, connect=connect))

    def link(self, ifname: str) -> LinkConfig:
        return Netlink(ifname)

    def route_mtu(self, host: str) -> int | None:
        return route_mtu(host)

    def resolve(self, host: str, port: int) -> tuple[socket.AddressFamily, Addr]:
        """The first UDP address of ``host``, looked up now; raises OSError."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"no address for {host}")
        family, _, _, _, sockaddr = infos[0]
        return family, (str(sockaddr[0]), int(sockaddr[1]))
