"""TCP MSS clamping for SYNs that cross the tunnel (RFC 879, RFC 6691; RFC 1624 checksum).

A host behind a site gateway announces an MSS from *its own* link MTU (1460 on Ethernet)
and then relies on ICMP "fragmentation needed" to learn that the tunnel is narrower.
Where ICMP is filtered that connection stalls (a PMTU black hole).  Lowering the MSS
option of every SYN and SYN-ACK that crosses the tunnel, in both directions, makes both
ends send segments that fit from the first byte on, ICMP or not.

- The clamp is ``inner MTU − 40`` for IPv4 (20 IP + 20 TCP) and ``inner MTU − 60`` for
  IPv6 (40 + 20) (RFC 6691 §2: the MSS counts neither IP nor TCP options).
- Only the MSS option is lowered, never raised; a SYN without the option is left alone:
  its sender then assumes 536 (IPv4) or 1220 (IPv6) (RFC 9293 §3.7.1), both at or below
  any clamp this tunnel produces (its IPv4 MTU is ≥ 576, its IPv6 MTU ≥ 1280).
- The TCP checksum is fixed incrementally, ``HC' = ~(~HC + ~m + m')`` (RFC 1624 eqn. 3),
  with the two MSS bytes byte-swapped when they sit at an odd offset of the header (the
  one's complement sum is byte-order independent, RFC 1071 §2(B)).  No other byte of
  the packet is read beyond the headers, so the cost is independent of its size.
- What is left alone: IPv4 fragments other than the first, IPv6 packets whose first
  next header is not TCP (extension headers are not walked), truncated headers, and
  option lists that are malformed before the MSS option.

Cost on the data path: ``clamp_lone`` (a lone packet, or each of a batch) looks at two
or three bytes of a packet (three for IPv4 TCP: the protocol, so that UDP and ICMP never
reach ``clamp_one``); ``clamp_batch`` passes a batch of IPv4 segments without a SYN at
once, at C speed, and sends any other packet by packet; only SYNs (a handful per
connection) get rebuilt.
"""

from __future__ import annotations

from operator import itemgetter

TCP_PROTO = 6
TCP_SYN = 0x02
TCP_OPT_END = 0
TCP_OPT_NOP = 1
TCP_OPT_MSS = 2
IPV4_TCP_OVERHEAD = 40  # IPv4 header 20 + TCP header 20
IPV6_TCP_OVERHEAD = 60  # IPv6 header 40 + TCP header 20
_MIN_V4_SYN = 40
_MIN_V6_SYN = 60
_BYTE0 = itemgetter(0)  # version and IHL: 0x45, IPv4 without options
_BYTE33 = itemgetter(33)  # its TCP flags when it is TCP
_NO_SYN = bytes(v for v in range(256) if not v & TCP_SYN)  # flag bytes without SYN


def mss_for_mtu(mtu: int) -> tuple[int, int]:
    """(IPv4 clamp, IPv6 clamp) for an inner MTU."""
    return max(mtu - IPV4_TCP_OVERHEAD, 0), max(mtu - IPV6_TCP_OVERHEAD, 0)


def _adjust(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: the checksum after a 16-bit word changed from ``old`` to ``new``."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def clamp_syn(packet: bytes, tcp: int, mss: int) -> bytes | None:
    """``packet`` with its MSS option lowered to ``mss``, or None when nothing changes.

    ``tcp`` is the offset of the TCP header (the caller checked that 20 bytes of it are
    there and that SYN is set).
    """
    end = min(tcp + ((packet[tcp + 12] >> 4) << 2), len(packet))
    pos = tcp + 20
    while pos < end:
        kind = packet[pos]
        if kind == TCP_OPT_END:
            return None
        if kind == TCP_OPT_NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            return None
        length = packet[pos + 1]
        if length < 2 or pos + length > end:
            return None  # malformed: leave it to the receiver
        if kind == TCP_OPT_MSS and length == 4:
            old = packet[pos + 2] << 8 | packet[pos + 3]
            if old <= mss:
                return None
            out = bytearray(packet)
            out[pos + 2] = mss >> 8
            out[pos + 3] = mss & 0xFF
            at = tcp + 16
            csum = packet[at] << 8 | packet[at + 1]
            if (pos + 2 - tcp) & 1:
                # The value straddles two 16-bit words: it enters the sum byte-swapped.
                old = (old >> 8) | (old & 0xFF) << 8
                mss = (mss >> 8) | (mss & 0xFF) << 8
            csum = _adjust(csum, old, mss)
            out[at] = csum >> 8
            out[at + 1] = csum & 0xFF
            return bytes(out)
        pos += length
    return None


def clamp_batch(packets: list[bytes], mss4: int, mss6: int) -> int:
    """Clamp the MSS of every TCP SYN in ``packets`` (replaced in the list); return how
    many were rewritten.  Anything that is not a TCP SYN is not touched (``clamp_lone``
    of each packet).

    A bulk batch (IPv4 without options, no SYN bit where an IPv4 TCP header has it:
    the kind a transfer is made of) is passed at once, its bytes 0 and 33 read in C
    (``itemgetter``, ``translate``): ``clamp_lone`` would pass each of its packets at
    the first test.  Any other batch goes packet by packet."""
    if (packets and min(map(len, packets)) >= _MIN_V4_SYN
            and not bytes(map(_BYTE0, packets)).strip(b"\x45")
            and not bytes(map(_BYTE33, packets)).translate(None, _NO_SYN)):
        return 0
    clamped = 0
    for i, pkt in enumerate(packets):
        new = clamp_lone(pkt, mss4, mss6)
        if new is not None:
            packets[i] = new
            clamped += 1
    return clamped


def clamp_lone(pkt: bytes, mss4: int, mss6: int) -> bytes | None:
    """``clamp_one`` behind a pre-filter: ``pkt`` with the MSS of its TCP SYN clamped, or
    None when nothing changes.

    The common case reads two or three bytes: an IPv4 header without options (``0x45``)
    that is not TCP or whose SYN bit is clear, or an IPv6 header whose next header is
    not TCP (``clamp_one`` walks no extension headers either) or whose SYN bit is
    clear, is passed at once; the rest gets the full checks of ``clamp_one``."""
    size = len(pkt)
    if size < _MIN_V4_SYN:
        return None
    b0 = pkt[0]
    if b0 == 0x45:
        if pkt[9] != TCP_PROTO or not pkt[33] & TCP_SYN:
            return None
    elif b0 >> 4 == 6 and (size < _MIN_V6_SYN or pkt[6] != TCP_PROTO
                           or not pkt[53] & TCP_SYN):
        return None
    return clamp_one(pkt, mss4, mss6)


def clamp_one(pkt: bytes, mss4: int, mss6: int) -> bytes | None:
    """``pkt`` with the MSS of its TCP SYN clamped, or None when nothing changes."""
    if len(pkt) < _MIN_V4_SYN:
        return None
    b0 = pkt[0]
    if b0 >> 4 == 4:
        # Not TCP, or a non-first fragment (offset bits set): skip.
        if pkt[9] != TCP_PROTO or pkt[6] & 0x1F or pkt[7]:
            return None
        tcp = (b0 & 0x0F) << 2
        mss = mss4
    elif b0 >> 4 == 6:
        if pkt[6] != TCP_PROTO or len(pkt) < _MIN_V6_SYN:
            return None
        tcp = 40
        mss = mss6
    else:
        return None
    if tcp < 20 or len(pkt) < tcp + 20 or not pkt[tcp + 13] & TCP_SYN:
        return None
    return clamp_syn(pkt, tcp, mss)
