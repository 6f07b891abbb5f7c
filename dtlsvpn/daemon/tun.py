"""TUN device: open /dev/net/tun ourselves so the daemon holds the queue's descriptor.

``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI`` (Documentation/networking/tuntap.rst): every
read returns one whole IP packet and every write injects one, without the 4-byte packet
information header.  The device is not persistent: it disappears, with its addresses
and routes, when the descriptor is closed, so even a crash leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
MAX_PACKET = 65535


class Tun:
    """One non-blocking TUN queue."""

    def __init__(self, name: str) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH14x", name.encode(), IFF_TUN | IFF_NO_PI)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            os.set_blocking(fd, False)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.name = res[:IFNAMSIZ].rstrip(b"\0").decode()

    def read_batch(self, budget: int) -> list[bytes]:
        """Up to ``budget`` packets, stopping at EAGAIN."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        for _ in range(budget):
            try:
                out.append(read(fd, MAX_PACKET))
            except BlockingIOError:
                break
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        """Write packets; return how many the kernel refused (queue full, bad packet)."""
        dropped = 0
        write = os.write
        fd = self.fd
        for pkt in packets:
            try:
                write(fd, pkt)
            except OSError:
                dropped += 1
        return dropped

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
