"""Fake TUN, UDP, netlink, notifier and resolver with the shapes of ``dtlsvpn.daemon.devices``.

Every fake that the loop watches has a real descriptor: one end of an
``AF_UNIX``/``SOCK_SEQPACKET`` socketpair (packet boundaries kept, non-blocking,
level-triggered readiness in epoll).  The daemon holds the near end; the far end is
the "wire" or the "kernel": a test writes packets into it and reads packets out.

``FakeTun`` is the production ``Tun`` with its descriptor swapped for a socketpair, so
its ``read_batch``/``write_batch`` are the real ones.  ``FakeUdp`` is the production
``SocketPort`` (its batch, GSO and GRO code) over a ``FakeSocket``, whose datagrams carry
their source address and GSO segment size in a small header on the pair; ``FakeNet``
delivers them to the port bound at the destination, drops what no port listens for and
what is larger than ``path_mtu`` (a path that drops big DF packets without ICMP), and
never fails a send (unless told to refuse GSO, or a host's ``link_mtu`` is lower than the
datagram: EMSGSIZE, as the kernel refuses a DF datagram above the interface MTU; that
MTU is also what the host's connected sockets report as their path MTU).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from dtlsvpn.daemon import compiled
from dtlsvpn.daemon.devices import SocketPort
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.resolve import Resolver
from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.tun import Tun, TunCounters, writes_coalesced_by
from dtlsvpn.daemon.udp import (
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    ErrorHint,
    UdpCounters,
    normalise,
    split_gro,
)
from dtlsvpn.vpn.vnet import PLAIN_HDR, VNET_HDR_LEN, segment

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
    """The real ``Tun`` batch code over one end of a socketpair.

    ``offload`` (``TUNOffload``): with auto/on (unless ``vnet_refused``: auto then falls
    back, on raises) the pair carries virtio-net headers as a real queue would: the fake
    kernel prepends a zero header to what it injects and ``drain`` cuts the daemon's
    super-packets back into segments (``vnet.segment``), counting them in ``gso_frames``;
    ``refuse_gso``: every super-packet write fails with EINVAL (an old kernel).
    ``use_compiled`` as ``Tun`` takes it: ``tso`` (granted as the real one grants it: a
    vnet queue and the compiled module) makes ``inject_offloaded`` hand over
    super-packets and ``NEEDS_CSUM`` packets as they are, as a kernel offered TSO does;
    without it the fake kernel segments and checksums them first, as a real one does.
    """

    def __init__(self, name: str, offload: str = "off", *, use_compiled: bool = False,
                 vnet_refused: bool = False, refuse_gso: bool = False
                 ) -> None:  # no super().__init__: no /dev/net/tun
        near, self.far = _pair()
        self.fd = near.detach()
        self.name = name
        self.closed = False
        self.counters = TunCounters()
        self.pending: list[bytes] = []  # (the compiled lane's hand-backs: daemon/lane.py)
        self.refuse_gso = refuse_gso
        self.gso_frames = 0  # super-packets the daemon wrote
        self.gso_segments = 0
        on = offload == "on" or (offload == "auto" and not vnet_refused)
        if offload == "on" and vnet_refused:
            self.close()
            raise OSError(errno.EINVAL, "Invalid argument")
        self.vnet = self.gro = on
        self.tso = self.tso_offered = on and use_compiled and compiled.segment is not None
        self._malformed_seen = 0
        self.offloads: list[int] = []  # TUNSETOFFLOAD flags set after the start
        self._coalesce = writes_coalesced_by(use_compiled)
        self.write = self._write
        self._watch()  # the real batch end: a zero-timeout poll of the queue

    def _write(self, fd: int, frame: bytes) -> int:
        if self.refuse_gso and self.vnet and frame[1]:
            raise OSError(errno.EINVAL, "Invalid argument")
        return os.write(fd, frame)

    def inject(self, packets: Iterable[bytes]) -> None:
        """Packets the host sends into the tunnel."""
        for pkt in packets:
            self.far.send(PLAIN_HDR + pkt if self.vnet else pkt)

    def _set_offload(self, flags: int) -> None:
        self.offloads.append(flags)

    def inject_offloaded(self, frames: Iterable[bytes]) -> None:
        """Frames (virtio-net header first: super-packets, ``NEEDS_CSUM`` packets) the
        host's TCP sends: as they are while TSO is offered, else as the kernel finishes
        them."""
        for frame in frames:
            if self.tso_offered:
                self.far.send(frame)
            else:
                self.inject(segment(frame))

    def drain(self) -> list[bytes]:
        """Packets the daemon wrote to the host (super-packets segmented)."""
        out: list[bytes] = []
        for data in self.drain_frames():
            if not self.vnet:
                out.append(data)
                continue
            if data[1]:
                self.gso_frames += 1
                segments = segment(data)
                assert segments, data[:80].hex()
                self.gso_segments += len(segments)
                out += segments
            else:
                assert not data[0], data[:80].hex()  # nothing else asks for a checksum
                out.append(data[VNET_HDR_LEN:])
        return out

    def drain_frames(self) -> list[bytes]:
        """What the daemon wrote, as written (super-packets whole, headers on): for the
        bulk benchmark, which must not count ``segment``'s checksums as the daemon's."""
        out: list[bytes] = []
        recv = self.far.recv
        while True:
            try:
                out.append(recv(65535 + VNET_HDR_LEN))
            except BlockingIOError:
                return out

    def close(self) -> None:
        super().close()
        self.closed = True
        self.far.close()


class FakeNet:
    """An underlay of UDP ports keyed by (host, port), and the kernel's UDP offloads.

    ``gso``/``gro``: whether the fake kernel knows UDP_SEGMENT and UDP_GRO (the probe of
    ``SocketPort`` sees it); ``refuse_gso``: it knows UDP_SEGMENT but fails every GSO
    send with EIO, as a device without checksum offload makes the real one do.
    """

    def __init__(self, *, path_mtu: int = 1500, gso: bool = True, gro: bool = True,
                 refuse_gso: bool = False) -> None:
        self.path_mtu = path_mtu
        self.link_mtu: dict[str, int] = {}  # host → its interface MTU, when below path_mtu
        # destination host → the path MTU towards it, when below path_mtu (what a server's
        # kernel reports for it, ``path_mtu_to``; larger datagrams to it are lost)
        self.route_mtu: dict[str, int] = {}
        self.gso = gso
        self.gro = gro
        self.refuse_gso = refuse_gso
        self.ports: dict[Addr, FakeUdp] = {}
        self.names: dict[str, str | list[str]] = {}  # name → address(es), for the resolver
        self.delivered = 0  # datagrams (a GSO send counts its segments)
        self.gso_packets = 0  # GSO sends carried whole over the wire
        self.dropped: dict[str, int] = {}
        self.gone: set[str] = set()  # host addresses deleted (a laptop that moved)
        self.udp_blocked = False  # a network that drops all UDP (the TCP fallback's case)
        self.tcp: dict[Addr, Addr] = {}  # a TCP listener's address → its loopback port
        self._ephemeral = 40000

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def ephemeral(self, host: str) -> Addr:
        self._ephemeral += 1
        return host, self._ephemeral

    def deliver(self, data: bytes, src: Addr, dst: Addr, gso: int = 0) -> None:
        """One datagram, or with ``gso`` a GSO packet of segments of ``gso`` bytes."""
        header = 40 if ":" in dst[0] else 20
        if min(gso or len(data), len(data)) + header + 8 > self.route_mtu.get(dst[0],
                                                                               self.path_mtu):
            self._drop("too_big")
            return
        port = self.ports.get(dst)
        if self.udp_blocked:
            self._drop("udp_blocked")
            return
        if dst[0] in self.gone:
            self._drop("address_gone")
            return
        if port is None:
            self._drop("no_listener")
            return
        if port.arrive(data, src, gso):
            self.delivered += len(split_gro(data, gso)) if gso else 1
            self.gso_packets += 1 if gso and gso < len(data) else 0
        else:
            self._drop("queue_full")


class FakeSocket:
    """The kernel side of a fake UDP socket: what ``SocketPort`` calls on a real one.

    On the pair each datagram is ``[len(tag)] tag gso_size(2) payload``.  A GSO send
    (``sendmsg`` with UDP_SEGMENT) travels whole, as over veth; the receiving socket gets
    it as one GRO buffer with a UDP_GRO control message when it turned GRO on, and as
    separate datagrams otherwise (the kernel segments it on enqueue).  The kernel's
    limits are enforced: at most 64 segments and 65507 bytes per GSO send (EINVAL).
    """

    def __init__(self, net: FakeNet, family: socket.AddressFamily, local: Addr,
                 remote: Addr | None) -> None:
        self.net = net
        self.family = family
        self.local = local
        self.remote = remote
        self.gro = False
        self.closed = False
        self._near, self._far = _pair()

    def fileno(self) -> int:
        return self._near.fileno()

    def getsockopt(self, level: int, option: int) -> int:
        if (level, option) == (SOL_UDP, UDP_SEGMENT) and self.net.gso:
            return 0
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if (level, option) == (SOL_UDP, UDP_GRO) and self.net.gro:
            self.gro = bool(value)
            return
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        if self.local[0] in self.net.gone:  # as the kernel: the source is not ours now
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    def _fits(self, size: int) -> None:  # (size: a datagram's or GSO segment's payload)
        mtu = self.net.link_mtu.get(self.local[0])
        if mtu is not None and size + (40 if self.family == socket.AF_INET6 else 20) + 8 > mtu:
            raise OSError(errno.EMSGSIZE, "Message too long")

    def sendto(self, data: bytes, addr: Addr, /) -> int:
        self._check()
        self._fits(len(data))
        self.net.deliver(bytes(data), self.local, normalise(addr))
        return len(data)

    def send(self, data: bytes, /) -> int:
        if self.remote is None:
            raise OSError(errno.EDESTADDRREQ, "not connected")
        return self.sendto(data, self.remote)

    def sendmsg(self, buffers: Iterable[bytes], ancdata: Iterable[tuple[int, int, bytes]] = (),
                flags: int = 0, addr: Addr | None = None, /) -> int:
        self._check()
        dst = addr if addr is not None else self.remote
        if dst is None:
            raise OSError(errno.EDESTADDRREQ, "not connected")
        payload = b"".join(buffers)
        gso = 0
        for level, kind, data in ancdata:
            if (level, kind) == (SOL_UDP, UDP_SEGMENT):
                if not self.net.gso:
                    raise OSError(errno.EINVAL, "Invalid argument")
                gso = int.from_bytes(data, sys.byteorder)
        if gso and len(payload) > gso:
            if self.net.refuse_gso:
                raise OSError(errno.EIO, "Input/output error")
            if -(-len(payload) // gso) > GSO_MAX_SEGMENTS or len(payload) > 65507:
                raise OSError(errno.EINVAL, "Invalid argument")
        else:
            gso = 0
        self._fits(gso or len(payload))
        self.net.deliver(payload, self.local, normalise(dst), gso)
        return len(payload)

    def _next(self, size: int) -> tuple[bytes, Addr, int]:
        while True:
            raw = self._near.recv(size + 66)
            n = raw[0]
            host, port = raw[1:1 + n].decode().rsplit(" ", 1)
            src = (host, int(port))
            if self.remote is None or src == self.remote:  # a connected socket filters
                gso = int.from_bytes(raw[1 + n:3 + n], "big")
                return raw[3 + n:], src, gso

    def recvfrom(self, size: int, /) -> tuple[bytes, Any]:
        data, src, _ = self._next(size)
        return data, src

    def recv(self, size: int, /) -> bytes:
        return self._next(size)[0]

    def recvmsg(self, size: int, ancbufsize: int = 0, flags: int = 0, /
                ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        data, src, gso = self._next(size)
        ancdata = [(SOL_UDP, UDP_GRO, gso.to_bytes(4, sys.byteorder))] if gso else []
        return data, ancdata, 0, src

    def arrive(self, data: bytes, src: Addr, gso: int) -> bool:
        if self.closed:
            return False
        tag = f"{src[0]} {src[1]}".encode()
        parts = [data] if not gso or self.gro else split_gro(data, gso)
        try:
            for part in parts:
                self._far.send(bytes([len(tag)]) + tag
                               + (gso if len(parts) == 1 else 0).to_bytes(2, "big") + part)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._near.close()
            self._far.close()


class FakeUdp(SocketPort):
    """A non-blocking UDP port on a ``FakeNet`` (connected when ``remote`` is set): the
    production ``SocketPort`` batch code over a :class:`FakeSocket`."""

    def __init__(self, net: FakeNet, family: socket.AddressFamily, local: Addr,
                 remote: Addr | None = None, *, offload: bool = False,
                 counters: UdpCounters | None = None) -> None:
        if local in net.ports:
            raise OSError(errno.EADDRINUSE, f"{local} in use")
        self.fake = FakeSocket(net, family, local, remote)
        super().__init__(self.fake, offload=offload, counters=counters)
        self.net = net
        self.local = local
        self.remote = remote
        self.errors: list[ErrorHint] = []
        self.closed = False
        net.ports[local] = self

    def arrive(self, data: bytes, src: Addr, gso: int = 0) -> bool:
        return self.fake.arrive(data, src, gso)

    def read_errors(self) -> list[ErrorHint]:
        out, self.errors = self.errors, []
        return out

    def path_mtu(self) -> int | None:
        mtu = self.net.link_mtu.get(self.local[0], self.net.path_mtu)
        return min(self.net.path_mtu, mtu) if self.remote is not None else None

    def local_host(self) -> str | None:
        return self.local[0]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.net.ports.get(self.local) is self:
            del self.net.ports[self.local]
        self.fake.close()


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

    def set_addresses(self, addresses: Iterable[Any]) -> None:
        self.addresses = list(addresses)

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


class FakeMonitor:
    """The kernel's netlink notifications: ``notify`` queues one change."""

    def __init__(self) -> None:
        self._near, self._far = _pair()
        self.closed = False

    def fileno(self) -> int:
        return self._near.fileno()

    def notify(self, changes: int = 1) -> None:
        if not self.closed:
            self._far.send(bytes([changes]))

    def drain(self) -> int:
        total = 0
        while True:
            try:
                total += self._near.recv(16)[0]
            except BlockingIOError:
                return total

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._near.close()
            self._far.close()


class FakePolicy:
    """A full tunnel's rules: what was asked, and whether they are in place."""

    def __init__(self, ifname: str, families: set[int], mark: int, table: int,
                 kill_switch: bool) -> None:
        self.ifname, self.families, self.mark, self.table = ifname, families, mark, table
        self.kill_switch = kill_switch
        self.active = False

    def setup(self) -> None:
        self.active = True

    def teardown(self) -> None:
        self.active = False


class FakeDns:
    """The tunnel's resolvers: what was asked, and whether they are set."""

    def __init__(self, ifname: str, entries: tuple[str, ...], full_tunnel: bool) -> None:
        self.ifname, self.entries, self.full_tunnel = ifname, entries, full_tunnel
        self.applied = False

    def apply(self) -> str | None:
        self.applied = True
        return "fake"

    def restore(self) -> None:
        self.applied = False


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
        self.tun_options: dict[str, bool] = {}  # FakeTun's vnet_refused, refuse_gso
        self.links: list[FakeLink] = []
        self.ports: list[FakeUdp] = []
        self.tcp_listeners: list[socket.socket] = []
        self.tcp_dials: list[Addr] = []  # addresses tcp_connect was asked for
        self.tcp_refused = 0  # an errno: tcp_listener fails with it (a port in use)
        self.calls: list[str] = []  # "tun NAME", "link NAME", "udp H:P", "tcp H:P", in order
        self.resolved: list[tuple[float, str]] = []  # every name lookup: (when, name)
        self.monitor: FakeMonitor | None = None
        self.policy: FakePolicy | None = None
        self.resolvers: FakeDns | None = None
        self.online = True  # False: no route anywhere (route_source is None)
        self.families = {4, 6}  # IP versions with a route (a network without IPv6: {4})

    def watch_network(self) -> FakeMonitor:
        self.monitor = FakeMonitor()
        return self.monitor

    def full_tunnel(self, ifname: str, families: set[int], *, mark: int, table: int,
                    kill_switch: bool) -> FakePolicy:
        self.policy = FakePolicy(ifname, families, mark, table, kill_switch)
        return self.policy

    def dns(self, ifname: str, entries: tuple[str, ...], *, full_tunnel: bool) -> FakeDns:
        self.resolvers = FakeDns(ifname, entries, full_tunnel)
        return self.resolvers

    def route_source(self, host: str, mark: int = 0) -> str | None:
        if not self.online or self.host in self.net.gone:
            return None
        return self.host if ipaddress.ip_address(host).version in self.families else None

    def move(self, new_host: str | None, *, notify: bool = True) -> None:
        """The host's address is deleted; ``new_host`` (None: none yet) is added."""
        self.net.gone.add(self.host)
        if new_host is not None:
            self.net.gone.discard(new_host)
            self.host = new_host
        if notify and self.monitor is not None:
            self.monitor.notify(3)  # the address, its route, the default route

    @property
    def link_state(self) -> FakeLink:
        return self.links[-1]

    def open_tun(self, name: str, offload: str = "off", *,
                 use_compiled: bool = False) -> FakeTun:
        self.calls.append(f"tun {name}")
        self.tun = FakeTun(name, offload, use_compiled=use_compiled, **self.tun_options)
        return self.tun

    def tcp_listener(self, addr: Addr) -> socket.socket:
        """The fake network carries UDP only: the TLS fallback listens for real, on an
        ephemeral loopback port that ``tcp_connect`` to ``addr`` reaches."""
        self.calls.append(f"tcp {addr[0]}:{addr[1]}")
        if self.tcp_refused:
            raise OSError(self.tcp_refused, os.strerror(self.tcp_refused))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        self.tcp_listeners.append(sock)
        self.net.tcp[addr] = sock.getsockname()
        return sock

    def tcp_connect(self, family: int, addr: Addr, *, mark: int = 0) -> socket.socket:
        """A real loopback connection to the listener registered for ``addr``."""
        self.tcp_dials.append(addr)
        real = self.net.tcp.get((addr[0], addr[1]))
        if not self.online or real is None:
            raise OSError(errno.ECONNREFUSED, "Connection refused")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(real)
        return sock

    def open_udp(self, family: socket.AddressFamily, *, bind: Addr | None = None,
                 connect: Addr | None = None, offload: bool = False,
                 counters: UdpCounters | None = None, mark: int = 0) -> FakeUdp:
        if connect is not None and not self.online:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        if bind is not None:
            self.calls.append(f"udp {bind[0]}:{bind[1]}")
        local = bind if bind is not None else self.net.ephemeral(self.host)
        port = FakeUdp(self.net, family, local, connect, offload=offload, counters=counters)
        port.mark = mark
        self.ports.append(port)
        return port

    def link(self, ifname: str) -> FakeLink:
        self.calls.append(f"link {ifname}")
        self.links.append(FakeLink(ifname))
        return self.links[-1]

    def route_mtu(self, host: str) -> int | None:
        return self._route_mtu

    def path_mtu_to(self, addr: Addr) -> int | None:
        return min(self.net.path_mtu, self.net.route_mtu.get(addr[0], self.net.path_mtu))

    def resolver(self, loop: Loop) -> Resolver:
        """The production ``Resolver`` with this fake lookup, answered without a thread
        (at the end of the loop iteration), so fake time stays deterministic."""
        return Resolver(loop, self.resolve_all, threaded=False)

    def resolve_all(self, host: str, port: int) -> list[tuple[socket.AddressFamily, Addr]]:
        """``net.names[host]``: one address or a list of them (A and AAAA records)."""
        self.resolved.append((self.clock(), host))
        if not self.online and host in self.net.names:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        found = self.net.names.get(host, host)
        out: list[tuple[socket.AddressFamily, Addr]] = []
        for address in [found] if isinstance(found, str) else found:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}") from None
            out.append((socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (str(ip), port)))
        return out

    def crash(self) -> None:
        """The process died: its ports vanish without a word (no close_notify)."""
        for port in self.ports:
            port.close()
