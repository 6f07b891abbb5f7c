"""Minimal IPv4/IPv6 header peeks and ICMP "packet too big" synthesis.

The tunnel carries whole IP packets; the daemon only needs to know a packet's version,
source and destination (routing and anti-spoofing), and, when an inner packet is larger
than what the path currently carries, to tell its sender so (RFC 1191, RFC 8201):

- IPv4: ICMP Destination Unreachable, code 4 "fragmentation needed and DF set" with the
  next-hop MTU in the low 16 bits of the second word (RFC 792, RFC 1191 §4).  It quotes
  the offending header and as much of its data as fits in 576 bytes (RFC 1812 §4.3.2.3;
  RFC 792 requires at least 64 bits).
- IPv6: ICMPv6 Packet Too Big, type 2 code 0 with a 32-bit MTU (RFC 4443 §3.2), quoting
  as much of the packet as fits without exceeding the minimum IPv6 MTU of 1280 (§2.4(c)).

What never gets an ICMP error (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)):
an ICMP(v6) error message, an IPv4 fragment other than the first, an IPv4 packet without
DF (the sender allowed fragmentation: RFC 1191 §4 only covers DF packets), and a packet
whose source is not a unicast address.  IPv6 extension headers are not walked: an ICMPv6
error behind an extension header is answered like any other packet (a deliberate
approximation; such packets are rare and the reply is rate-limited anyway).

Checksums are the Internet checksum (RFC 1071) computed on one big integer: since
2^16 ≡ 1 (mod 0xFFFF), the one's complement sum of the 16-bit words is the value of the
whole byte string modulo 0xFFFF (with 0xFFFF standing for a non-zero multiple).

The ICMP error's source address: by default (``reply_from_destination``) the *destination*
of the packet that did not fit, i.e. the reply looks as if it came from the far side of the
tunnel.  The tunnel's own address would be the textbook choice, but a packet written into
the TUN device with a source address that is local to this host is a "martian" to the
kernel (``accept_local=0``) and dropped before it is forwarded to a host behind a gateway;
hosts accept a "too big" from any source as long as it quotes their packet.

IPv4 packets without DF may instead be fragmented (``fragment_v4``, RFC 791 §3.2): only
the IP header is rebuilt per fragment, so this costs one 20-byte checksum per fragment.

Replies are rate-limited by a token bucket (RFC 4443 §2.4(f) MUST limit ICMPv6 errors;
RFC 1812 §4.3.2.8 SHOULD for IPv4).  Nothing here reads a clock: ``now`` comes in.
"""

from __future__ import annotations

import struct

ICMP_PROTO = 1
ICMPV6_NEXT_HEADER = 58
IPV4_HEADER = 20
IPV6_HEADER = 40
IPV4_MIN_MTU = 68  # RFC 791
IPV6_MIN_MTU = 1280  # RFC 8200 §5
IPV4_ERROR_QUOTE_LIMIT = 576  # RFC 1812 §4.3.2.3: total size of the ICMP error

_ICMPV4_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})  # RFC 792 error messages
_DF = 0x4000
_MF = 0x2000
_FRAG_OFFSET = 0x1FFF
_TTL = 64

_V4_HDR = struct.Struct("!BBHHHBBH4s4s")
_V6_HDR = struct.Struct("!IHBB16s16s")
_ICMP_HDR = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU
_ICMPV6_HDR = struct.Struct("!BBHI")  # type, code, checksum, MTU


def checksum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071), as a 16-bit int."""
    if len(data) & 1:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    s = value % 0xFFFF
    if s == 0 and value:
        s = 0xFFFF  # the one's complement sum of a non-zero multiple is 0xFFFF, not 0
    return ~s & 0xFFFF


def version(packet: bytes) -> int:
    """4, 6, or 0 when the packet is too short to be either."""
    if len(packet) >= IPV4_HEADER and packet[0] >> 4 == 4:
        return 4
    if len(packet) >= IPV6_HEADER and packet[0] >> 4 == 6:
        return 6
    return 0


def addresses(packet: bytes) -> tuple[bytes, bytes] | None:
    """(source, destination) as packed bytes, or None when not an IP packet."""
    v = version(packet)
    if v == 4:
        return packet[12:16], packet[16:20]
    if v == 6:
        return packet[8:24], packet[24:40]
    return None


def _unicast_v4(addr: bytes) -> bool:
    first = addr[0]
    return not (first == 0 or first == 127 or first >= 224 or addr == b"\xff\xff\xff\xff")


def _unicast_v6(addr: bytes) -> bool:
    return addr[0] != 0xFF and addr != bytes(16)


def too_big_v4(packet: bytes, mtu: int, local: bytes) -> bytes | None:
    """ICMP "fragmentation needed" (type 3 code 4) from ``local`` to the packet's source."""
    if len(packet) < IPV4_HEADER:
        return None
    _, _, _, _, frag, _, proto, _, src, _ = _V4_HDR.unpack_from(packet)
    ihl = (packet[0] & 0x0F) * 4
    if not frag & _DF or frag & _FRAG_OFFSET or not _unicast_v4(src) or ihl < IPV4_HEADER:
        return None
    if proto == ICMP_PROTO and len(packet) > ihl and packet[ihl] in _ICMPV4_ERROR_TYPES:
        return None
    quote = packet[: IPV4_ERROR_QUOTE_LIMIT - IPV4_HEADER - _ICMP_HDR.size]
    mtu = max(IPV4_MIN_MTU, min(mtu, 0xFFFF))
    icmp = _ICMP_HDR.pack(3, 4, 0, 0, mtu) + quote
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    total = IPV4_HEADER + len(icmp)
    header = _V4_HDR.pack(0x45, 0xC0, total, 0, 0, _TTL, ICMP_PROTO, 0, local, src)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + icmp


def too_big_v6(packet: bytes, mtu: int, local: bytes) -> bytes | None:
    """ICMPv6 Packet Too Big (type 2) from ``local`` to the packet's source."""
    if len(packet) < IPV6_HEADER:
        return None
    src = packet[8:24]
    if not _unicast_v6(src):
        return None
    # RFC 4443 §2.4(e.1): never in response to an ICMPv6 error (types 0-127).
    if packet[6] == ICMPV6_NEXT_HEADER and len(packet) > IPV6_HEADER and packet[40] < 128:
        return None
    quote = packet[: IPV6_MIN_MTU - IPV6_HEADER - _ICMPV6_HDR.size]
    mtu = max(IPV6_MIN_MTU, min(mtu, 0xFFFFFFFF))
    icmp = _ICMPV6_HDR.pack(2, 0, 0, mtu) + quote
    # RFC 4443 §2.3: the checksum covers the RFC 8200 §8.1 pseudo-header.
    pseudo = local + src + struct.pack("!IxxxB", len(icmp), ICMPV6_NEXT_HEADER)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    header = _V6_HDR.pack(0x60000000, len(icmp), ICMPV6_NEXT_HEADER, 255, local, src)
    return header + icmp


def fragment_v4(packet: bytes, mtu: int) -> list[bytes] | None:
    """IPv4 fragments of ``packet`` that are each at most ``mtu`` bytes (RFC 791 §3.2).

    None when the packet may not or cannot be fragmented here: DF set, not IPv4, a
    malformed header, or an MTU too small for 8 bytes of data.  Options whose "copied"
    flag is clear stay in the first fragment only.  The data of each fragment but the
    last is a multiple of 8 bytes; MF is set on all but the last (which keeps the
    original MF: a fragment may be fragmented again).
    """
    if len(packet) < IPV4_HEADER or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    frag = (packet[6] << 8) | packet[7]
    if frag & _DF or ihl < IPV4_HEADER or total < ihl or total > len(packet):
        return None
    if total <= mtu:
        return [packet]
    header, data = packet[:ihl], packet[ihl:total]
    later = header[:IPV4_HEADER] + _copied_options(header[IPV4_HEADER:])
    first_room = (mtu - ihl) & ~7
    later_room = (mtu - len(later)) & ~7
    if first_room <= 0 or later_room <= 0:
        return None
    offset = frag & _FRAG_OFFSET
    more = frag & _MF
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        hdr = header if pos == 0 else later
        chunk = data[pos:pos + (first_room if pos == 0 else later_room)]
        last = pos + len(chunk) >= len(data)
        flags = (offset + (pos >> 3)) | (more if last else _MF)
        h = bytearray(hdr)
        h[0] = 0x40 | (len(hdr) >> 2)
        h[2:4] = (len(hdr) + len(chunk)).to_bytes(2, "big")
        h[6:8] = flags.to_bytes(2, "big")
        h[10:12] = b"\x00\x00"
        h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
        pos += len(chunk)
    return out


def _copied_options(options: bytes) -> bytes:
    """The options of a non-first fragment: those with the copied flag (RFC 791 §3.1)."""
    out = bytearray()
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind == 0:  # end of option list
            break
        if kind == 1:  # no-operation
            pos += 1
            continue
        if pos + 1 >= len(options) or options[pos + 1] < 2:
            break
        length = options[pos + 1]
        if kind & 0x80:
            out += options[pos:pos + length]
        pos += length
    out += b"\x00" * (-len(out) % 4)
    return bytes(out)


class RateLimiter:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class TooBigResponder:
    """Builds rate-limited "too big" replies for inner packets that exceed the path.

    ``local_v4`` / ``local_v6`` are the tunnel's own addresses (packed), used as the
    ICMP source; a family without one gets no replies.  With
    ``reply_from_destination`` the source is the offending packet's destination instead
    (see the module docstring: what the daemon uses) and every family is answered.
    ``reply`` returns the ICMP packet to write back into the TUN device, or None (not
    allowed, or rate-limited).
    """

    __slots__ = ("from_destination", "limiter", "local_v4", "local_v6", "rate_limited",
                 "sent")

    def __init__(self, local_v4: bytes | None, local_v6: bytes | None, *,
                 rate: float = 20.0, burst: float = 10.0,
                 reply_from_destination: bool = False) -> None:
        self.local_v4 = local_v4
        self.local_v6 = local_v6
        self.from_destination = reply_from_destination
        self.limiter = RateLimiter(rate, burst)
        self.sent = 0
        self.rate_limited = 0

    def reply(self, packet: bytes, mtu: int, now: float) -> bytes | None:
        v = version(packet)
        out: bytes | None = None
        if v == 4:
            src4 = packet[16:20] if self.from_destination else self.local_v4
            if src4 is not None:
                out = too_big_v4(packet, mtu, src4)
        elif v == 6:
            src6 = packet[24:40] if self.from_destination else self.local_v6
            if src6 is not None:
                out = too_big_v6(packet, mtu, src6)
        if out is None:
            return None
        if not self.limiter.allow(now):
            self.rate_limited += 1
            return None
        self.sent += 1
        return out
