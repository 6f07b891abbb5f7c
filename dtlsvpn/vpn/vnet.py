"""The TUN's virtio-net header, internet checksums, and TCP segmentation (sans-I/O).

With ``IFF_VNET_HDR`` every read from and write to a TUN queue starts with a 10-byte
``struct virtio_net_hdr`` (``include/uapi/linux/virtio_net.h``, the legacy layout in host
byte order): ``flags`` (``NEEDS_CSUM``: the checksum at ``csum_start + csum_offset``
holds only the pseudo-header sum, the rest of the packet is still to be added),
``gso_type`` (none, TCPv4, TCPv6; ``| ECN``), ``hdr_len`` (IP + TCP header bytes),
``gso_size`` (the payload bytes per segment) and the checksum's start and offset.

- Toward the TUN (the kernel receives): ``gro.coalesce`` writes many TCP segments of one
  flow as one such super-packet; the kernel's TCP takes it whole, as from a NIC's GRO.
- From the TUN (the kernel sends), only when TSO was offered with ``TUNSETOFFLOAD``: a
  read may be a super-packet, which :func:`segment` cuts into MTU-sized segments with
  their IP and TCP checksums computed, or a ``NEEDS_CSUM`` packet whose checksum
  :func:`segment` completes.  The daemon offers TSO only with the compiled twin of
  :func:`segment` (``daemon/_vnet.c``, held to this one byte for byte); this one cuts
  the super-packets a kernel refuses on write (``daemon/tun.py``).  Both have C twins
  for the same reason: per segment, this Python costs more than the kernel work saved.

Checksums (RFC 1071): the one's complement sum of a byte string as 16-bit big-endian
words is ``int.from_bytes(data, "big") % 0xFFFF`` (2**16 ≡ 1 modulo 0xFFFF), 0 standing
for both zeros of one's complement; a string of odd length is padded on the right, i.e.
the number is shifted by 8 bits.  The checksum to store is then ``-total % 0xFFFF``
(0 when the sum is a non-zero multiple of 0xFFFF, which is what folding gives).
"""

from __future__ import annotations

import struct

VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, off
VNET_HDR_LEN = 10
PLAIN_HDR = bytes(VNET_HDR_LEN)  # no offload: a packet written or read as it is
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80
TCP_PROTO = 6
TCP_CSUM_OFFSET = 16
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80
MAX_V4_PACKET = 65535  # IPv4 total length; IPv6's payload length has the same limit

_U16 = struct.Struct("!H")
Bytes = bytes | bytearray | memoryview
_U32 = struct.Struct("!I")


def csum_add(data: Bytes) -> int:
    """The one's complement sum of ``data`` (as 16-bit words), modulo 0xFFFF."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def checksum(data: Bytes) -> int:
    """The internet checksum of ``data``: what to store so that the sum verifies."""
    return -csum_add(data) % 0xFFFF


def pseudo_sum(packet: Bytes, length: int) -> int:
    """The TCP/UDP pseudo-header sum for ``packet``'s addresses and an upper-layer
    ``length`` (protocol TCP), modulo 0xFFFF."""
    if packet[0] >> 4 == 4:
        addrs = int.from_bytes(packet[12:20], "big")
    else:
        addrs = int.from_bytes(packet[8:40], "big")
    return (addrs + TCP_PROTO + length) % 0xFFFF


def header(flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int,
           csum_offset: int) -> bytes:
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def segment(frame: bytes) -> list[bytes]:
    """The IP packets of one TUN read (virtio-net header first); [] when malformed.

    A plain packet comes back as it is (after the header); a ``NEEDS_CSUM`` one with its
    checksum completed; a TCPv4/TCPv6 super-packet as segments of ``gso_size`` payload
    bytes (the last may be shorter), each with its own IP length, IPv4 id (the first's
    plus its index) and header checksum, sequence number and TCP checksum; PSH and FIN
    only on the last segment, CWR only on the first.
    """
    if len(frame) <= VNET_HDR_LEN:
        return []
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return [frame[VNET_HDR_LEN:]]
        done = _complete(frame, csum_start, csum_offset)
        return [] if done is None else [done]
    if gso in (GSO_TCPV4, GSO_TCPV6) and gso_size:
        return _segment_tcp(memoryview(frame)[VNET_HDR_LEN:], gso == GSO_TCPV4, gso_size)
    return []


def _complete(frame: bytes, start: int, offset: int) -> bytes | None:
    """The packet after ``frame``'s header with the partial checksum at ``start + offset``
    completed over ``[start:]`` (the field already holds the pseudo-header sum).  A
    result of 0 is stored as 0xFFFF, its other form, as the kernel does (``skb_checksum_
    help``, CSUM_MANGLED_0): in UDP a 0 means "no checksum", which IPv6 refuses."""
    packet = bytearray(memoryview(frame)[VNET_HDR_LEN:])
    at = start + offset
    if at + 2 > len(packet) or start >= len(packet):
        return None
    value = checksum(memoryview(packet)[start:]) or 0xFFFF
    _U16.pack_into(packet, at, value)
    return bytes(packet)


def _segment_tcp(packet: memoryview, v4: bool, mss: int) -> list[bytes]:
    size = len(packet)
    if v4:
        if size < 40 or packet[0] >> 4 != 4:
            return []
        ihl = (packet[0] & 0x0F) * 4
    else:
        if size < 60 or packet[0] >> 4 != 6 or packet[6] != TCP_PROTO:
            return []
        ihl = 40
    if ihl < 20 or ihl + 20 > size:
        return []
    thlen = (packet[ihl + 12] >> 4) * 4
    hl = ihl + thlen
    if thlen < 20 or hl > size:
        return []
    ip = bytearray(packet[:ihl])
    tcp = bytearray(packet[ihl:hl])
    addrs = int.from_bytes(ip[12:20] if v4 else ip[8:40], "big") + TCP_PROTO
    seq0 = _U32.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    ident = _U16.unpack_from(ip, 4)[0] if v4 else 0
    tcp[16:18] = b"\0\0"
    if v4:
        ip[10:12] = b"\0\0"
    out: list[bytes] = []
    offset = hl
    index = 0
    while offset < size:
        end = min(offset + mss, size)
        chunk = packet[offset:end]
        last = end >= size
        tcp[13] = flags & ~(TCP_FIN | TCP_PSH) if not last else flags
        if index:
            tcp[13] &= ~TCP_CWR
        _U32.pack_into(tcp, 4, (seq0 + offset - hl) & 0xFFFFFFFF)
        tcp[16:18] = b"\0\0"
        tcp_len = thlen + end - offset
        total = addrs + tcp_len + csum_add(tcp) + csum_add(chunk)
        _U16.pack_into(tcp, 16, -total % 0xFFFF)
        if v4:
            _U16.pack_into(ip, 2, ihl + tcp_len)
            _U16.pack_into(ip, 4, (ident + index) & 0xFFFF)
            ip[10:12] = b"\0\0"
            _U16.pack_into(ip, 10, checksum(ip))
        else:
            _U16.pack_into(ip, 4, tcp_len)
        out.append(b"".join((ip, tcp, chunk)))
        offset = end
        index += 1
    return out
