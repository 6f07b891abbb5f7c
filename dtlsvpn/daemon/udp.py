"""The UDP socket under the tunnel: PMTU probing mode, ICMP error queue, buffer sizes.

- ``IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`` (and ``IPV6_MTU_DISCOVER``): datagrams leave
  with DF set, and the kernel neither fragments them nor caps them at its cached path MTU;
  the DTLS core's DPLPMTUD (RFC 8899) finds the size that works.  Only a datagram larger
  than the outgoing interface's MTU fails locally with EMSGSIZE.
- ``IP_RECVERR`` / ``IPV6_RECVERR``: ICMP errors about our datagrams (fragmentation
  needed, Packet Too Big, unreachable) are queued on the socket's error queue with the
  original destination; ``read_errors`` drains it into ``ErrorHint`` values (ip(7),
  ``struct sock_extended_err``).  ``ee_info`` carries the MTU for EMSGSIZE.
- Large send and receive buffers (``SO_*BUFFORCE`` when we may, root) absorb bursts.

The daemon takes all three; ``dtlsvpn dtls client|server`` open their socket through
the same ``open_udp`` with the error queue and the large buffers off (they report ICMP
errors the way the kernel gives them to a plain socket), and PMTU probing only when
discovery is on.  A socket opened with ``recverr`` must have its error queue drained
(``read_errors``) whenever it polls with EPOLLERR, or the poll never stops reporting it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3
IP_MTU = 14
IP_RECVERR = 11
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_PROBE = 3
IPV6_MTU = 24
IPV6_RECVERR = 25
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

BUFFER_SIZE = 4 << 20
MAX_DATAGRAM = 65535  # the largest UDP payload a recv may return
RECV_BUDGET = 64  # datagrams drained from one socket per wake-up
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, origin, type, code, pad, info, data

Addr = tuple[str, int]
SockAddr = Addr | tuple[str, int, int, int]  # IPv6 with flow info and scope id


@dataclass(frozen=True, slots=True)
class ErrorHint:
    """One entry of the socket error queue."""

    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int  # the MTU when errno is EMSGSIZE
    destination: Addr | None  # where the failed datagram was going

    @property
    def mtu(self) -> int | None:
        return self.info if self.errno == errno.EMSGSIZE and self.info else None


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, SockAddr]:
    """The first UDP address of ``host`` (a name is resolved now); raises OSError.

    An IPv6 address keeps its flow info and scope id (a link-local peer needs it).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"no address for {host}")
    family, _, _, _, sockaddr = infos[0]
    if len(sockaddr) == 4:
        return family, (str(sockaddr[0]), int(sockaddr[1]), int(sockaddr[2]),
                        int(sockaddr[3]))
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def open_udp(family: socket.AddressFamily, bind: Addr | None = None,
             connect: SockAddr | None = None, *, pmtu_probe: bool = True, recverr: bool = True,
             large_buffers: bool = True) -> socket.socket:
    """A non-blocking UDP socket, bound and/or connected; raises OSError (socket closed).

    By default with PMTU probing, RECVERR and large buffers (the daemon's socket); each
    can be turned off.  An IPv6 wildcard bind also takes IPv4 (``IPV6_V6ONLY`` 0).
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and bind is not None and bind[0] in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _error_options(sock, pmtu_probe=pmtu_probe, recverr=recverr)
        if large_buffers:
            _large_buffers(sock)
        if bind is not None:
            sock.bind(bind)
        if connect is not None:
            sock.connect(connect)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _error_options(sock: socket.socket, *, pmtu_probe: bool, recverr: bool) -> None:
    if sock.family == socket.AF_INET6:
        if pmtu_probe:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
        if recverr:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    # Also for AF_INET6 sockets: IPv4-mapped peers use the IPv4 options.
    with contextlib.suppress(OSError):
        if pmtu_probe:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        if recverr:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def _large_buffers(sock: socket.socket) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_SIZE)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_SIZE)


def socket_mtu(sock: socket.socket) -> int | None:
    """The kernel's path MTU for a connected socket (IP_MTU / IPV6_MTU), or None."""
    try:
        if sock.family == socket.AF_INET6:
            value = int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
        else:
            value = int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
    except OSError:
        return None
    return value if value > 0 else None


def read_errors(sock: socket.socket, budget: int = RECV_BUDGET) -> list[ErrorHint]:
    """Drain the socket error queue (MSG_ERRQUEUE) into hints."""
    hints: list[ErrorHint] = []
    for _ in range(budget):
        try:
            _, ancdata, _, addr = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        dest: Addr | None = (addr[0], addr[1]) if addr else None
        for level, kind, data in ancdata:
            if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR),
                                 (socket.IPPROTO_IPV6, IPV6_RECVERR)) \
                    and len(data) >= _EXTENDED_ERR.size:
                ee_errno, origin, typ, code, _, info, _ = _EXTENDED_ERR.unpack_from(data)
                hints.append(ErrorHint(ee_errno, origin, typ, code, info, dest))
    return hints


def normalise(addr: tuple[object, ...]) -> Addr:
    """(host, port) with an IPv4-mapped IPv6 host turned back into dotted IPv4."""
    host = str(addr[0])
    port = int(str(addr[1]))
    if host.startswith("::ffff:"):
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped), port
    return host, port


def packed(host: str) -> bytes | None:
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None
