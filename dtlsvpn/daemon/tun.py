"""TUN device: open /dev/net/tun ourselves so the daemon holds the queue's descriptor.

``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI`` (Documentation/networking/tuntap.rst): every
read returns one whole IP packet and every write injects one, without the 4-byte packet
information header.  The device is not persistent: it disappears, with its addresses
and routes, when the descriptor is closed, so even a crash leaves nothing behind.

Offload (``TUNOffload``, ``vpn/vnet.py``): with ``IFF_VNET_HDR`` every read and write
carries a 10-byte virtio-net header.  Writes go through ``vpn/gro.coalesce`` (its C
twin with ``use_compiled``, the same frames): the TCP segments of one flow in a batch
become one super-packet the kernel's TCP receives at once.  Reads (``tso``): with
``use_compiled`` and the compiled ``segment`` there (``daemon/compiled.py``)
TSO is offered (TUN_F_CSUM | TSO4 | TSO6), so one read hands over up to 64 KiB of one
TCP flow that the kernel neither segmented nor checksummed, and ``segment`` cuts it into
MTU-sized segments with their checksums (a ``NEEDS_CSUM`` packet gets its checksum
completed).  Without it ``TUNSETOFFLOAD`` is given no flags and the kernel segments and
checksums what it sends before we read it: in Python the internet checksum costs more
than the kernel work it saves (README "Performance"), so ``vnet.segment`` is not used
for reads.  ``offload="auto"``: a kernel that refuses the header gives a plain TUN (one
log line), one that refuses TSO gives reads without it (one log line); a super-packet
the kernel refuses on write (EINVAL) is written again segment by segment, plain, and
coalescing stops for this queue.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
from collections.abc import Callable

from dtlsvpn.daemon import compiled
from dtlsvpn.vpn.gro import coalesce
from dtlsvpn.vpn.vnet import PLAIN_HDR, VNET_HDR, VNET_HDR_LEN, segment

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TSO_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
IFNAMSIZ = 16
MAX_PACKET = 65535
MAX_FRAME = VNET_HDR_LEN + MAX_PACKET
OFFLOAD_MODES = ("auto", "on", "off")


class TunCounters:
    """``gso_writes``: super-packets written (runs of ≥ 2 segments), ``gso_segments``:
    the segments they carried; ``gso_fallbacks``: super-packets the kernel refused and
    that were written again segment by segment; ``tso_reads``: super-packets read and
    cut into segments (TSO on read), ``tso_malformed``: reads that could not be cut
    (dropped; TSO then stops, ``Tun._give_up_tso``)."""

    __slots__ = ("gso_fallbacks", "gso_segments", "gso_writes", "tso_malformed", "tso_reads")

    def __init__(self) -> None:
        self.gso_writes = 0
        self.gso_segments = 0
        self.gso_fallbacks = 0
        self.tso_reads = 0
        self.tso_malformed = 0

    def as_dict(self) -> dict[str, int]:
        return {"tun_gso_writes": self.gso_writes, "tun_gso_segments": self.gso_segments,
                "tun_gso_fallbacks": self.gso_fallbacks, "tun_tso_reads": self.tso_reads,
                "tun_tso_malformed": self.tso_malformed}


def writes_coalesced_by(use_compiled: bool) -> Callable[[list[bytes]], list[bytes]]:
    """``gro.coalesce``, or its C twin with ``use_compiled`` where the module is built."""
    if use_compiled and compiled.coalesce is not None:
        return compiled.coalesce
    return coalesce


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
    kernel took it); ``gro``: writes are coalesced (vnet, until the kernel refused one);
    ``tso``: reads may be super-packets (``tso_offered``: the kernel still makes them; a
    read ``segment`` cannot cut stops that, see ``_give_up_tso``).  ``use_compiled``
    (``CompiledLane``): where the
    compiled module is there (``daemon/compiled.py``), offer TSO on read (``tso`` when
    the kernel takes it) and coalesce writes in C; else ``vpn/gro.coalesce`` and no TSO.
    """

    def __init__(self, name: str, offload: str = "off", *,
                 use_compiled: bool = False) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"TUN offload {offload!r} is not one of {OFFLOAD_MODES}")
        self.counters = TunCounters()
        # Packets the compiled lane read and handed back (daemon/lane.py), read first.
        self.pending: list[bytes] = []
        self.vnet = self.gro = self.tso = self.tso_offered = False
        self._malformed_seen = 0  # counters.tso_malformed when last looked at
        self._coalesce = writes_coalesced_by(use_compiled)
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
                self._offload(use_compiled)
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

    def _offload(self, use_compiled: bool) -> None:
        """TSO on read when asked and ``segment`` is compiled; else no offload on read:
        the kernel hands over finished packets (module doc)."""
        flags = TSO_OFFLOADS if use_compiled and compiled.segment is not None else 0
        try:
            self._set_offload(flags)
        except OSError as exc:
            if not flags:
                os.close(self.fd)
                raise
            log.info("TUN offload: the kernel refused TSO on read (%s); it segments what "
                     "we read", exc.strerror or exc)
            try:
                self._set_offload(0)
            except OSError:
                os.close(self.fd)
                raise
            flags = 0
        self.vnet = self.gro = True
        self.tso = self.tso_offered = bool(flags)

    def _set_offload(self, flags: int) -> None:
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def _give_up_tso(self) -> None:
        """A read that ``segment`` could not cut (an IPv6 super-packet with extension
        headers: it knows TCP right after the fixed header only; or offsets that do not
        fit) was dropped; from now on the kernel segments and checksums what we read, so
        the TCP's retransmission of it gets through.  Reads keep cutting what is queued
        already (``tso`` stays), and the drop is counted (``tso_malformed``)."""
        self._malformed_seen = self.counters.tso_malformed
        if not self.tso_offered:
            return
        self.tso_offered = False
        try:
            self._set_offload(0)
        except OSError as exc:
            log.warning("TUN offload: a TSO read could not be cut into segments and the "
                        "kernel refused to stop TSO (%s)", exc.strerror or exc)
            return
        log.warning("TUN offload: a TSO read could not be cut into segments (dropped); the "
                    "kernel segments what we read from now on")

    # --- read ---------------------------------------------------------------------

    def read_batch(self, budget: int) -> list[bytes]:
        """Up to ``budget`` packets, stopping at EAGAIN.  After the first, a zero-timeout
        poll asks whether more wait, so a lone packet's wake-up ends without the failing
        read (its exception costs several times the poll); a burst reads on to EAGAIN."""
        if self.tso:
            return self._read_tso(budget)
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

    def _read_tso(self, budget: int) -> list[bytes]:
        """``read_batch`` when a read may be a super-packet (all its segments count
        toward ``budget``, so a batch may end up to one super-packet above it) or a
        ``NEEDS_CSUM`` packet; the lone-packet poll as there."""
        if self.counters.tso_malformed != self._malformed_seen:  # (here or in C)
            self._give_up_tso()
        read = os.read
        fd = self.fd
        take = self._take
        if self.pending:  # (the compiled lane cut what it read: packets only)
            out = self.pending[:]
            del self.pending[:]
        else:
            out = []
            try:
                take(read(fd, MAX_FRAME), out)
            except BlockingIOError:
                return []
        if len(out) < budget and self._waiting(0):
            while len(out) < budget:
                try:
                    frame = read(fd, MAX_FRAME)
                except BlockingIOError:
                    break
                take(frame, out)
        return out

    def _take(self, frame: bytes, out: list[bytes]) -> None:
        if len(frame) <= VNET_HDR_LEN or not frame[0] | frame[1]:  # a finished packet
            out.append(frame[VNET_HDR_LEN:])
            return
        assert compiled.segment is not None  # (self.tso)
        packets = compiled.segment(frame)
        if not packets:
            self.counters.tso_malformed += 1
            self._give_up_tso()
            return
        if frame[1]:
            self.counters.tso_reads += 1
        out += packets

    # --- write --------------------------------------------------------------------

    def write_batch(self, packets: list[bytes]) -> int:
        """Write packets; return how many the kernel refused (queue full, bad packet)."""
        dropped = 0
        write = self.write
        fd = self.fd
        if self.gro:
            frames = self._coalesce(packets)
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
