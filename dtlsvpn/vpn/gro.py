"""Coalescing TCP segments toward the TUN (generic receive offload in the daemon; sans-I/O).

The packets one UDP wake-up opened are written to a TUN opened with ``IFF_VNET_HDR``.
Consecutive segments of one TCP flow become one super-packet with a virtio-net header
(``vnet.py``) asking for TCP segmentation: the kernel's TCP takes it as one receive, as
from a NIC's GRO, so the receiving host pays its per-packet work (a ``write``, the IP and
TCP receive path, the socket wake-up) once per super-packet instead of once per segment.
The bytes the receiving socket reads are the same.  With the compiled module the daemon
writes through its C twin (``daemon/_vnet.c``: these rules, the same frames byte for
byte, tests/shell/test_compiled_coalesce.py); this one is the reference and the pure
Python path.

Rules (those of Linux's ``tcp_gro_receive``, kept strict):

- Only within the list given: nothing is held back for a later batch, so a lone packet is
  written at once (batching must not add latency).
- A segment joins the open run of its flow (same addresses and ports) when it is plain
  IPv4 without options and not a fragment, or IPv6 whose next header is TCP; it carries
  payload; its sequence number follows the run's last byte; its IP header is the run's
  apart from length, id and checksum (same TOS/traffic class and flow label, DF, TTL/hop
  limit); its TCP header is the run's apart from sequence number and checksum (same
  acknowledgement, window, header length and options, flags exactly ACK); its payload has
  the run's segment size, or is smaller and ends the run; the run stays under 64 KiB.
- ACK|PSH may end a run (the super-packet then carries PSH); SYN, FIN, RST, URG, ECE, CWR
  are never merged, and neither is a segment without payload (a pure ACK).  An ACK|PSH
  segment of a flow with no open run (interactive traffic, a request) is written as it is
  at once, with no run set up.
- A TCP packet that cannot join closes its flow's run, so a flow's order is kept; packets
  of different flows may be written in another order than they came (each run sits where
  its first segment was).  An IPv4 fragment or an IPv6 packet with extension headers
  closes every run (its flow cannot be told cheaply).
- The segments' own TCP checksums are not verified: the packets were authenticated by the
  record's AEAD, so they are what the peer's kernel sent.  The super-packet carries
  ``NEEDS_CSUM`` with the pseudo-header sum in the checksum field, which the kernel takes
  as a checksum already verified (``CHECKSUM_PARTIAL``), as from a virtio guest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from dtlsvpn.vpn.vnet import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    MAX_V4_PACKET,
    PLAIN_HDR,
    TCP_CSUM_OFFSET,
    TCP_PROTO,
    VNET_HDR,
    checksum,
    pseudo_sum,
)

_U16 = struct.Struct("!H")
_ACK = 0x10
_PSH = 0x08
# IPv6 next headers that are extension headers: the flow of such a packet is unknown
_V6_EXTENSIONS = frozenset((0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254))


class _Run:
    """A flow's open run: its segments, the next sequence number, the segment size, the
    payload bytes so far, and what every further segment must repeat: the IP header's
    fixed fields (``ip_a``, ``ip_b``: see ``_V4`` and ``_V6``), the TCP header's
    (``sig``, ``options``)."""

    __slots__ = ("hl", "ihl", "ip_a", "ip_b", "limit", "next_seq", "options", "packets",
                 "sig", "sig_psh", "size", "total")

    def __init__(self, packets: list[bytes], next_seq: int, size: int, sig: bytes,
                 ip_a: int, ip_b: int, options: bytes, ihl: int, hl: int,
                 limit: int) -> None:
        self.packets = packets
        self.next_seq = next_seq
        self.size = size
        self.total = size
        self.sig = sig  # acknowledgement, data offset, flags (ACK), window
        self.sig_psh = sig[:5] + bytes((sig[5] | _PSH,)) + sig[6:]  # the same with PSH
        self.ip_a = ip_a
        self.ip_b = ip_b
        self.options = options
        self.ihl = ihl
        self.hl = hl
        self.limit = limit


# Both families unpack to the same shape: (a, length, b, flow, sequence number, TCP's
# ack/offset/flags/window), where a and b hold every IP field a run's segments repeat.
# IPv4 without options + TCP: a = version/IHL and TOS, b = flags/fragment offset, TTL and
# protocol; the addresses and ports are the flow.
_V4 = struct.Struct("!HH2xI2x12sI8s")
# IPv6 + TCP: a = version/class/label, b = next header and hop limit; the flow as above.
_V6 = struct.Struct("!IHH36sI8s")
_CONTINUATIONS: dict[tuple[int, int], struct.Struct] = {}


def _continuation(ihl: int, options: int) -> struct.Struct:
    """``_V4`` or ``_V6`` with the TCP options after them (checksum and urgent pointer
    skipped): a continuing segment's whole check in one unpack."""
    layout = _CONTINUATIONS.get((ihl, options))
    if layout is None:
        head = (_V4 if ihl == 20 else _V6).format
        layout = _CONTINUATIONS[ihl, options] = struct.Struct(f"{head}4x{options}s")
    return layout


def coalesce(packets: list[bytes]) -> list[bytes]:
    """The frames to write (virtio-net header + packet) for ``packets``, in order but
    for runs of one flow's segments merged into super-packets (see the module's rules).

    The run the last segment opened or joined is held in locals (``c_*``): a full-size
    segment that continues it is checked with one unpack (``_continuation``) and a
    chain of comparisons, and appended (bulk traffic: nearly every segment).  Anything
    else takes the general path, which first writes the locals back to the run."""
    items: list[list[bytes]] = []
    flows: dict[bytes, _Run] = {}  # flow (addresses, ports) -> its open run
    v4 = _V4.unpack_from
    v6 = _V6.unpack_from
    cur: _Run | None = None  # the run in the locals below
    c_n = -1  # a continuing segment's length (-1: no run held)
    c_unpack = _continuation(20, 0).unpack_from
    c_key = c_sig = c_opts = b""
    c_seq = c_total = c_cap = c_size = c_a = c_b = c_len = 0
    c_append: Callable[[bytes], None] = list[bytes]().append  # the held run's, when held
    for pkt in packets:
        n = len(pkt)
        if n == c_n:
            a, length, b, key, seq, sig, opts = c_unpack(pkt)
            if (seq == c_seq and key == c_key and sig == c_sig and a == c_a and b == c_b
                    and length == c_len and opts == c_opts and c_total <= c_cap):
                c_append(pkt)
                c_seq = (seq + c_size) & 0xFFFFFFFF
                c_total += c_size
                continue
        if cur is not None:  # the general path reads and writes the run's own state
            cur.next_seq = c_seq
            cur.total = c_total
        joined: _Run | None = None  # the run this packet opened or joined, still open
        b0 = pkt[0] if n else 0
        if b0 == 0x45 and n >= 40:
            a, length, b, key, seq, sig = v4(pkt)
            if b & 0xFF != TCP_PROTO or b >> 16 & 0xBFFF or length != n:
                _not_merged(pkt, items, flows)
                key = b""
            else:
                ihl = 20
                limit = MAX_V4_PACKET
        elif b0 >> 4 == 6 and n >= 60:
            a, length, b, key, seq, sig = v6(pkt)
            if b >> 8 != TCP_PROTO or length + 40 != n:
                _not_merged(pkt, items, flows)
                key = b""
            else:
                ihl = 40
                limit = MAX_V4_PACKET + 40
        else:
            _not_merged(pkt, items, flows)
            key = b""
        if key:
            joined = _general(pkt, n, a, b, key, seq, sig, ihl, limit, items, flows)
        if joined is not None:
            cur = joined
            c_key = key
            c_seq = joined.next_seq
            c_total = joined.total
            c_size = size = joined.size
            hl = joined.hl
            c_n = hl + size
            c_cap = joined.limit - hl - size
            c_a = joined.ip_a
            c_b = joined.ip_b
            c_len = c_n if joined.ihl == 20 else c_n - 40
            c_sig = joined.sig
            c_opts = joined.options
            c_unpack = _continuation(joined.ihl, len(c_opts)).unpack_from
            c_append = joined.packets.append
        elif cur is not None and flows.get(c_key) is not cur:  # closed by this packet
            cur = None
            c_n = -1
    return [PLAIN_HDR + run[0] if len(run) == 1 else merge(run) for run in items]


def _general(pkt: bytes, n: int, a: int, b: int, key: bytes, seq: int, sig: bytes,
             ihl: int, limit: int, items: list[list[bytes]],
             flows: dict[bytes, _Run]) -> _Run | None:
    """A TCP packet that does not simply continue the held run: joined to its flow's run,
    opening one, or written as it is.  Returns its run if that is still open."""
    doff = sig[4]
    flags = sig[5]
    hl = ihl + (doff >> 4) * 4
    payload = n - hl
    if (flags | _PSH) != (_ACK | _PSH) or payload <= 0 or doff < 0x50 or doff & 0x0F:
        flows.pop(key, None)
        items.append([pkt])
        return None
    run = flows.get(key)
    if run is None and flags & _PSH:  # no run to end, none to open: written as it is
        items.append([pkt])
        return None
    options = pkt[ihl + 20:hl]
    if (run is not None and run.next_seq == seq and run.ip_a == a and run.ip_b == b
            and run.options == options and (sig == run.sig or sig == run.sig_psh)):
        size = run.size
        total = run.total + payload
        if payload <= size and hl + total <= limit:
            run.packets.append(pkt)
            if payload < size or flags & _PSH:
                del flows[key]
                return None
            run.next_seq = (seq + payload) & 0xFFFFFFFF
            run.total = total
            return run
    packets_of_run = [pkt]
    items.append(packets_of_run)
    if flags & _PSH:
        flows.pop(key, None)
        return None
    run = flows[key] = _Run(packets_of_run, (seq + payload) & 0xFFFFFFFF, payload, sig, a, b,
                            options, ihl, hl, limit)
    return run


def _not_merged(pkt: bytes, items: list[list[bytes]], flows: dict[bytes, _Run]) -> None:
    """A packet written as it is; if it may belong to a TCP flow with an open run, that
    run is closed (all of them when its flow cannot be told)."""
    items.append([pkt])
    if not flows:
        return
    n = len(pkt)
    version = pkt[0] >> 4 if n else 0
    if version == 4 and n >= 20 and pkt[9] == TCP_PROTO:
        ihl = (pkt[0] & 0x0F) * 4
        if (pkt[6] & 0x1F or pkt[7]) or n < ihl + 4:  # a later fragment: no ports
            flows.clear()
        else:
            flows.pop(pkt[12:20] + pkt[ihl:ihl + 4], None)
    elif version == 6 and n >= 44:
        if pkt[6] == TCP_PROTO:
            flows.pop(pkt[8:44], None)
        elif pkt[6] in _V6_EXTENSIONS:
            flows.clear()


def merge(run: list[bytes]) -> bytes:
    """One frame for a run of ≥ 2 segments that ``coalesce`` found mergeable: the first
    segment's headers with the total length (IPv4: and header checksum), the last's PSH,
    the pseudo-header sum as TCP checksum, every payload after them."""
    head = run[0]
    v4 = head[0] >> 4 == 4
    ihl = 20 if v4 else 40
    hl = ihl + (head[ihl + 12] >> 4) * 4
    size = len(head) - hl
    payload = size * (len(run) - 1) + len(run[-1]) - hl  # (only the last may be shorter)
    tcp_len = hl - ihl + payload
    tcp = bytearray(head[ihl:hl])
    tcp[13] = run[-1][ihl + 13]  # ACK, or ACK|PSH from the last
    _U16.pack_into(tcp, TCP_CSUM_OFFSET, pseudo_sum(head, tcp_len))
    if v4:
        ip = bytearray(head[:20])
        _U16.pack_into(ip, 2, 20 + tcp_len)
        ip[10:12] = b"\0\0"
        _U16.pack_into(ip, 10, checksum(ip))
        gso = GSO_TCPV4
    else:
        ip = bytearray(head[:40])
        _U16.pack_into(ip, 4, tcp_len)
        gso = GSO_TCPV6
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso, hl, size, ihl, TCP_CSUM_OFFSET)
    parts: list[bytes | bytearray] = [vnet, ip, tcp]
    parts += [pkt[hl:] for pkt in run]  # (cheaper than memoryview slices here)
    return b"".join(parts)
