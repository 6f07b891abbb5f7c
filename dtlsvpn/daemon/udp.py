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

UDP segmentation offload (linux/udp.h; udp(7) since Linux 4.18 / 5.0), used by the daemon's
data path through ``devices.SocketPort`` when ``UDPOffload = yes``:

- GSO, send: one ``sendmsg`` carries a run of datagrams to one destination with a
  ``(SOL_UDP, UDP_SEGMENT, gso_size)`` control message; the kernel (or the NIC) cuts the
  payload every ``gso_size`` bytes, so the datagrams on the wire are exactly the ones we
  had.  A run is consecutive datagrams of one size, the last of it may be shorter, at
  most ``GSO_MAX_SEGMENTS`` of them and ``GSO_MAX_BYTES`` in all (``gso_runs``).  The
  kernel refuses a segment larger than the device MTU with EINVAL (not EMSGSIZE) and a
  device without checksum offload with EIO; the caller then sends the run one by one.
- GRO, receive: ``setsockopt(SOL_UDP, UDP_GRO, 1)``; a ``recvmsg`` may then return
  several datagrams of one source back to back, with a ``(SOL_UDP, UDP_GRO, gso_size)``
  control message; ``split_gro`` cuts them apart again (the last may be shorter).  A
  GSO packet sent over veth reaches a GRO socket whole, without any segmentation.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import sys
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

SOL_UDP = 17  # IPPROTO_UDP
UDP_SEGMENT = 103  # linux/udp.h: the GSO segment size of a send (u16 control message)
UDP_GRO = 104  # linux/udp.h: coalesce on receive; recvmsg reports the segment size (int)
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel
GSO_MAX_BYTES = 65000  # payload of one GSO send: below IPv4's 65507 and IPv6's 65487
GRO_BUFFER = 65536  # the largest coalesced payload a recvmsg may return

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


class UdpCounters:
    """Offload counters of one interface's sockets (the status snapshot shows them).

    ``gso_sends``: successful sends that carried a UDP_SEGMENT run of ≥ 2 datagrams
    (``gso_datagrams`` in all); ``gro_receives``: receives that returned ≥ 2 coalesced
    datagrams (``gro_datagrams`` in all); ``gso_fallbacks``: GSO sends the kernel refused,
    whose datagrams then went out one by one.
    """

    __slots__ = ("gro_datagrams", "gro_receives", "gso_datagrams", "gso_fallbacks",
                 "gso_sends")

    def __init__(self) -> None:
        self.gso_sends = 0
        self.gso_datagrams = 0
        self.gso_fallbacks = 0
        self.gro_receives = 0
        self.gro_datagrams = 0

    def as_dict(self) -> dict[str, int]:
        return {"udp_gso_sends": self.gso_sends, "udp_gso_datagrams": self.gso_datagrams,
                "udp_gso_fallbacks": self.gso_fallbacks,
                "udp_gro_receives": self.gro_receives,
                "udp_gro_datagrams": self.gro_datagrams}


def gso_runs(sizes: list[int], max_segments: int = GSO_MAX_SEGMENTS,
             max_bytes: int = GSO_MAX_BYTES) -> list[tuple[int, int]]:
    """Cut datagram sizes into GSO runs: ``(start, end)`` index ranges covering them all,
    in order.  A run is datagrams of the size of its first, the last may be shorter
    (and then ends it), at most ``max_segments`` of them and ``max_bytes`` in all; a
    datagram alone may be bigger, and an empty one is alone.  A run of one is a plain
    send."""
    runs: list[tuple[int, int]] = []
    n = len(sizes)
    i = 0
    while i < n:
        size = sizes[i]
        j = i + 1
        if size:
            limit = min(n, i + max_segments)
            whole = min(limit, i + max(1, max_bytes // size))
            while j < whole and sizes[j] == size:
                j += 1
            if j < limit and 0 < sizes[j] < size and (j - i) * size + sizes[j] <= max_bytes:
                j += 1
        runs.append((i, j))
        i = j
    return runs


def split_gro(data: bytes, segment: int) -> list[bytes]:
    """The datagrams of one GRO receive: ``data`` cut every ``segment`` bytes."""
    if segment <= 0 or segment >= len(data):
        return [data]
    return [data[i:i + segment] for i in range(0, len(data), segment)]


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT on this socket (Linux ≥ 4.18)."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Turn UDP_GRO on (Linux ≥ 5.0); False when the kernel refuses."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gro_segment(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a GRO receive's control messages; 0 when it has none."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO:
            return int.from_bytes(data[:4], sys.byteorder)
    return 0


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
