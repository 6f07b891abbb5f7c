"""A lone heartbeat record taken at the record header (RFC 6520 §4), sans-I/O.

An idle peer's keepalive is a server's most frequent slow-path datagram (one
HeartbeatRequest record per idle interval per peer), and its answer the client's.
:class:`HeartbeatIn` is built with the :class:`~dtlsvpn.dtls.fastpath.FastOpen` of the
read epoch (by the Association, after a slow-path datagram) and takes a datagram only
when it is exactly one protected heartbeat record of the current read epoch (RFC 6347
§4.1): header bytes precomputed (heartbeat type, or tls12_cid with our CID, RFC 9146
§4; DTLS 1.2; the epoch), the length field filling the datagram, fresh in the replay
window (RFC 6347 §4.1.2.6), authenticated, its real type heartbeat and its message a
HeartbeatRequest or HeartbeatResponse whose payload_length fits with 16 bytes of
padding (RFC 6520 §4: the Heartbleed check). Then, and only then, the window moves and
the record is counted exactly as the slow path counts it; the Association hands the
message to the same ``Keepalive.receive`` the slow path calls, so the answer is the
same bytes (tests/unit/test_hbfast.py checks it against the slow path byte for byte).
Anything else returns None before any state or counter changed, and the slow path
takes it exactly as before (a record that does not authenticate is then counted
there). No ``parse_datagram``, no ``Record``, no new FastOpen per keepalive, and the
record is opened once: with a CID the header fast path (``FastOpen``) has opened it
before it finds the inner type is not data, and hands the plaintext over
(``FastOpen.held``); without one it is the slow path's ``RecordProtection.open``.  Our
own heartbeats are sealed by a ``FastSeal`` of the heartbeat type (association.py).
"""

from __future__ import annotations

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.dtls.epoch import CT_CID, ReadState, split_inner
from dtlsvpn.dtls.fastpath import FastOpen
from dtlsvpn.dtls.keepalive import Keepalive
from dtlsvpn.dtls.replay import ReplayWindow
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import DTLS_1_2, MAX_CIPHERTEXT, ContentType

_CT_HEARTBEAT = int(ContentType.heartbeat)
_KNOWN = (b"\x01", b"\x02")  # HeartbeatMessageType: request, response
_MIN_PADDING = 16  # RFC 6520 §4


class HeartbeatIn:
    """Takes single-record heartbeat datagrams of one read epoch (see above)."""

    __slots__ = ("advanced", "cid", "epoch_bits", "fast", "head", "hlen", "keepalive", "prot",
                 "window")

    def __init__(self, read: ReadState, keepalive: Keepalive, fast: FastOpen | None = None
                 ) -> None:
        self.keepalive = keepalive  # who answers (Keepalive.receive, as the slow path)
        prot: RecordProtection | None = read.protection
        if prot is None:
            raise UsageError("HeartbeatIn needs the read epoch's keys")
        cid = read.cid
        self.cid = cid
        self.fast = fast  # with a CID it opened the record already (``FastOpen.held``)
        ctype = CT_CID if cid else _CT_HEARTBEAT
        self.head = bytes((ctype,)) + DTLS_1_2.to_bytes(2, "big") + read.epoch.to_bytes(2, "big")
        self.hlen = 13 + len(cid)
        self.epoch_bits = read.epoch << 48
        self.prot = prot
        self.window: ReplayWindow = read.window
        self.advanced = False

    @classmethod
    def build(cls, read: ReadState, fast: FastOpen | None,
              keepalive: Keepalive | None) -> HeartbeatIn | None:
        """One beside the read epoch's FastOpen (None without it or without heartbeats)."""
        return None if fast is None or keepalive is None else cls(read, keepalive, fast)

    def take(self, data: bytes, stats: Stats) -> bytes | None:
        """The heartbeat message of a fresh, authenticated heartbeat record (window
        moved, record counted), or None with nothing changed."""
        hlen = self.hlen
        size = len(data)
        cid = self.cid
        if (data[:5] != self.head or not hlen < size <= hlen + MAX_CIPHERTEXT
                or int.from_bytes(data[hlen - 2:hlen], "big") != size - hlen
                or (cid and data[11:hlen - 2] != cid)):
            return None
        seq = int.from_bytes(data[5:11], "big")
        window = self.window
        if not window.check(seq):
            return None
        if cid:
            fast = self.fast
            held = None if fast is None else fast.held
            if held is not None and held[0] is data:  # FastOpen opened it just now
                fast.held = None  # type: ignore[union-attr]
                inner: bytes | None = held[2]
            else:
                inner = self.prot.open_cid(self.epoch_bits | seq, cid, data[hlen:])
            split = None if inner is None else split_inner(inner)
            if split is None or split[0] != _CT_HEARTBEAT:
                return None
            msg = split[1]
        else:
            opened = self.prot.open(self.epoch_bits | seq, _CT_HEARTBEAT, data[hlen:])
            if opened is None:
                return None
            msg = opened
        if msg[:1] not in _KNOWN or 3 + int.from_bytes(msg[1:3], "big") + _MIN_PADDING > len(msg):
            return None  # unknown or malformed: the slow path decides and counts
        top = window.top
        window.commit(seq)
        self.advanced = window.top > top
        stats.rx_records += 1
        stats.rx_bytes += size
        return msg
