"""Minimal IPv4 and IPv6 packets (UDP inside) for the fake TUN devices.

Only what the daemon looks at is right: version, lengths, addresses, the IPv4 header
checksum and the DF bit.  The UDP checksum is left 0 (allowed for IPv4; nothing here
checks it for IPv6).  ``seq_of`` reads back the sequence number ``udp`` wrote.
"""

from __future__ import annotations

import ipaddress
import struct

from dtlsvpn.vpn.ip import checksum

_UDP = struct.Struct("!HHHH")
_SEQ = struct.Struct("!I")


def udp(src: str, dst: str, seq: int = 0, size: int = 100, *, df: bool = True) -> bytes:
    """An IP packet of ``size`` bytes from ``src`` to ``dst`` carrying ``seq``."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    header = 20 if s.version == 4 else 40
    body = _SEQ.pack(seq).ljust(size - header - _UDP.size, b".")
    datagram = _UDP.pack(40000, 5001, _UDP.size + len(body), 0) + body
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, header + len(datagram), seq & 0xFFFF,
                         0x4000 if df else 0, 64, 17, 0, s.packed, d.packed)
        ip = ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:]
        return ip + datagram
    return struct.pack("!IHBB16s16s", 6 << 28, len(datagram), 17, 64, s.packed,
                       d.packed) + datagram


def seq_of(packet: bytes) -> int:
    header = 20 if packet[0] >> 4 == 4 else 40
    return int(_SEQ.unpack_from(packet, header + _UDP.size)[0])
