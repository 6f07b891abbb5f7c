"""TUN device: open /dev/net/tun ourselves so the daemon holds the queue's descriptor.

``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI`` (Documentation/networking/tuntap.rst): every
read returns one whole IP packet and every write injects one, without the 4-byte packet
information header.  The device is not persistent: it disappears, with its addresses
and routes, when the descriptor is closed, so even a crash leaves nothing behind.

Offload (``TUNOffload``, ``vpn/vnet.py``): with ``IFF_VNET_HDR`` every read and write
carries a 10-byte virtio-net header.  Writes go through ``vpn/gro.coalesce``: the TCP
segments of one flow in a batch become one super-packet the kernel's TCP receives at
once.  Reads: ``TUNSETOFFLOAD`` is given no flags, so the kernel segments and checksums
what it sends before we read it; the header of every read carries nothing we need and is
dropped.  Offering TSO (TUN_F_CSUM | TSO4 | TSO6, reads of 64 KiB super-packets cut by
``vnet.segment``) or TUN_F_CSUM alone (checksums completed here) was measured and lost:
the internet checksum in Python costs more than the kernel work it saves (README
"Performance").  ``offload="auto"``: a kernel that refuses the header gives a plain TUN
(one log line); a super-packet the kernel refuses on write (EINVAL) is written again
segment by segment, plain, and coalescing stops for this queue.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct

from dtlsvpn.vpn.gro import coalesce
from dtlsvpn.vpn.vnet import PLAIN_HDR, VNET_HDR, VNET_HDR_LEN, segment

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
MAX_PACKET = 65535
MAX_FRAME = VNET_HDR_LEN + MAX_PACKET
OFFLOAD_MODES = ("auto", "on", "off")


class TunCounters:
    """``gso_writes``: super-packets written (runs of ≥ 2 segments), ``gso_segments``:
    the segments they carried; ``gso_fallbacks``: super-packets the kernel refused and
    that were written again segment by segment."""

    __slots__ = ("gso_fallbacks", "gso_segments", "gso_writes")

    def __init__(self) -> None:
        self.gso_writes = 0
        self.gso_segments = 0
        self.gso_fallbacks = 0

    def as_dict(self) -> dict[str, int]:
        return {"tun_gso_writes": self.gso_writes, "tun_gso_segments": self.gso_segments,
                "tun_gso_fallbacks": self.gso_fallbacks}


def _open(name: str, flags: int) -> tuple[int, str]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH14x", name.encode(), flags)
        res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        if flags & IFF_VNET_HDR:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    except OSError:
        os.close(fd)
        raise
    return fd, res[:IFNAMSIZ].rstrip(b"\0").decode()


class Tun:
    """One non-blocking TUN queue.

    ``vnet``: the queue carries virtio-net headers (``offload`` on, or auto and the
    kernel took it); ``gro``: writes are coalesced (vnet, until the kernel refused one).
    """

    def __init__(self, name: str, offload: str = "off") -> None:
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"TUN offload {offload!r} is not one of {OFFLOAD_MODES}")
        self.counters = TunCounters()
        # Packets the compiled lane read and handed back (daemon/lane.py), read first.
        self.pending: list[bytes] = []
        self.vnet = self.gro = False
        self.write = os.write  # (a test's double may refuse)
        if offload != "off":
            try:
                fd, self.name = _open(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
            except OSError as exc:
                if offload == "on" or exc.errno in (errno.EPERM, errno.EBUSY, errno.ENOENT):
                    raise
                log.info("TUN offload: the kernel refused the virtio-net header (%s); "
                         "plain TUN", exc.strerror or exc)
            else:
                self.fd = fd
                self._offload()
        if not self.vnet:
            self.fd, self.name = _open(name, IFF_TUN | IFF_NO_PI)
        os.set_blocking(self.fd, False)
        self._watch()

    def _watch(self) -> None:
        """``_waiting(0)``: whether another packet waits (a zero-timeout poll, about a
        seventh of the failing read it saves)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        self._waiting = poller.poll

    def _offload(self) -> None:
        """No offload on read: the kernel hands over finished packets (module doc)."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError:
            os.close(self.fd)
            raise
        self.vnet = self.gro = True

    # --- read ---------------------------------------------------------------------

    def read_batch(self, budget: int) -> list[bytes]:
        """Up to ``budget`` packets, stopping at EAGAIN.  After the first, a zero-timeout
        poll asks whether more wait, so a lone packet's wake-up ends without the failing
        read (its exception costs several times the poll); a burst reads on to EAGAIN."""
        read = os.read
        fd = self.fd
        size, cut = (MAX_FRAME, VNET_HDR_LEN) if self.vnet else (MAX_PACKET, 0)
        if self.pending:  # read by the compiled lane, handed back (daemon/lane.py)
            out = self.pending[:]
            del self.pending[:]  # (the same list: the lane holds it)
        else:
            try:
                out = [read(fd, size)[cut:]]  # (a [0:] slice of bytes is the object itself)
            except BlockingIOError:
                return []
        if budget > 1 and self._waiting(0):
            for _ in range(budget - len(out)):
                try:
                    out.append(read(fd, size)[cut:])
                except BlockingIOError:
                    break
        return out

    # --- write --------------------------------------------------------------------

    def write_batch(self, packets: list[bytes]) -> int:
        """Write packets; return how many the kernel refused (queue full, bad packet)."""
        dropped = 0
        write = self.write
        fd = self.fd
        if self.gro:
            frames = coalesce(packets)
            if len(frames) < len(packets):
                self._count(frames)
        elif self.vnet:
            frames = [PLAIN_HDR + pkt for pkt in packets]
        else:
            frames = packets
        for frame in frames:
            try:
                write(fd, frame)
            except OSError as exc:
                dropped += self._refused(frame, exc)
        return dropped

    def write_one(self, pkt: bytes) -> int:
        """``write_batch([pkt])`` (a lone packet: nothing to coalesce, one write)."""
        frame = PLAIN_HDR + pkt if self.vnet else pkt
        try:
            self.write(self.fd, frame)
        except OSError as exc:
            return self._refused(frame, exc)
        return 0

    def _count(self, frames: list[bytes]) -> None:
        counters = self.counters
        for frame in frames:
            if frame[1]:
                counters.gso_writes += 1
                counters.gso_segments += _segments(frame)

    def _refused(self, frame: bytes, exc: OSError) -> int:
        """Packets lost to a failed write (a super-packet counts its segments); one the
        kernel found invalid is written again segment by segment, plain."""
        if not self.vnet or not frame[1]:
            return 1
        counters = self.counters
        counters.gso_writes -= 1  # counted before the write
        counters.gso_segments -= _segments(frame)
        if exc.errno != errno.EINVAL:
            return _segments(frame)
        counters.gso_fallbacks += 1
        if self.gro:
            self.gro = False
            log.info("TUN offload: the kernel refused a coalesced write (%s); writing "
                     "segment by segment from now on", exc.strerror or exc)
        dropped = 0
        for pkt in segment(frame):
            try:
                self.write(self.fd, PLAIN_HDR + pkt)
            except OSError:
                dropped += 1
        return dropped

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _segments(frame: bytes) -> int:
    """How many segments a super-packet frame carries."""
    _, _, hdr_len, gso_size, _, _ = VNET_HDR.unpack_from(frame)
    payload = len(frame) - VNET_HDR_LEN - hdr_len
    return max(1, -(-payload // gso_size)) if gso_size else 1
