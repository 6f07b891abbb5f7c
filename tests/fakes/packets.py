"""Minimal IPv4 and IPv6 packets (UDP inside) for the fake TUN devices.

Only what the daemon looks at is right: version, lengths, addresses, the IPv4 header
checksum and the DF bit.  The UDP checksum is left 0 (allowed for IPv4; nothing here
checks it for IPv6).  ``seq_of`` reads back the sequence number ``udp`` wrote.
"""

from __future__ import annotations

import ipaddress
import struct

from dtlsvpn.vpn.ip import checksum
from dtlsvpn.vpn.vnet import F_NEEDS_CSUM, GSO_NONE, header, pseudo_sum

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


# --- TCP (the coalescing tests: vpn/gro.py, vpn/vnet.py) ------------------------------

ACK, PSH, FIN, SYN, RST, URG, ECE, CWR = 0x10, 0x08, 0x01, 0x02, 0x04, 0x20, 0x40, 0x80
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP TS(val 0, ecr 0)


def ref_sum(data: bytes) -> int:
    """RFC 1071 word by word with end-around carry (a reference independent of the
    ``int.from_bytes`` trick of the code under test)."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def tcp_pseudo(packet: bytes, tcp_len: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + struct.pack("!BBH", 0, 6, tcp_len)
    return packet[8:40] + struct.pack("!IxxxB", tcp_len, 6)


def tcp(src: str, dst: str, seq: int, payload: bytes, *, flags: int = ACK,
        ack: int = 7, sport: int = 40000, dport: int = 5201, options: bytes = TIMESTAMPS,
        ident: int = 1, tos: int = 0, ttl: int = 64, window: int = 512, df: bool = True,
        ip_options: bytes = b"", flow: int = 0, csum: bool = True) -> bytes:
    """An IPv4 or IPv6 TCP segment with valid checksums (``csum=False``: TCP's left 0)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    thl = 20 + len(options)
    segment = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack,
                                    (thl // 4) << 4, flags, window, 0, 0) + options + payload)
    if s.version == 4:
        ihl = 20 + len(ip_options)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, tos, ihl + len(segment),
                                   ident & 0xFFFF, 0x4000 if df else 0, ttl, 6, 0, s.packed,
                                   d.packed) + ip_options)
        struct.pack_into("!H", ip, 10, ref_checksum(bytes(ip)))
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28 | tos << 20 | flow, len(segment), 6,
                                   ttl, s.packed, d.packed))
    if csum:
        value = ref_checksum(tcp_pseudo(bytes(ip), len(segment)) + bytes(segment))
        struct.pack_into("!H", segment, 16, value)
    return bytes(ip + segment)


def needs_csum(packet: bytes) -> bytes:
    """``packet`` (TCP) as a TUN offered TSO hands it over: a virtio-net header with
    NEEDS_CSUM and the pseudo-header sum where its TCP checksum goes."""
    ihl = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    partial = bytearray(packet)
    partial[ihl + 16:ihl + 18] = pseudo_sum(packet, len(packet) - ihl).to_bytes(2, "big")
    return header(F_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, 16) + bytes(partial)


def tcp_valid(packet: bytes) -> bool:
    """Both checksums (IPv4 header, TCP with its pseudo-header) verify."""
    ihl = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    if packet[0] >> 4 == 4 and ref_sum(packet[:ihl]) != 0xFFFF:
        return False
    return ref_sum(tcp_pseudo(packet, len(packet) - ihl) + packet[ihl:]) == 0xFFFF


def tcp_fields(packet: bytes) -> tuple[bytes, int, int, bytes]:
    """(flow: addresses and ports, sequence number, flags, payload)."""
    v4 = packet[0] >> 4 == 4
    ihl = (packet[0] & 0x0F) * 4 if v4 else 40
    hl = ihl + (packet[ihl + 12] >> 4) * 4
    flow = (packet[12:20] if v4 else packet[8:40]) + packet[ihl:ihl + 4]
    return flow, int.from_bytes(packet[ihl + 4:ihl + 8], "big"), packet[ihl + 13], packet[hl:]
