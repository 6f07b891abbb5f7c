"""Epoch state: the keys that seal our records and open the peer's (RFC 6347 §4.1).

Write side (:class:`WriteState`): one :class:`WriteEpoch` per epoch we hold
keys for, each numbering its records from its own counter (epoch 0 of a
server starts at the ClientHello's record number, RFC 6347 §4.2.1).  The
current write epoch moves past ``e`` when the CCS of epoch ``e`` is sealed
(RFC 5246 §7.1); a flight retransmitted later still seals each message in the
epoch it belongs to.

Read side (:class:`ReadState`): exactly one current read epoch with its keys
and replay window.  The next epoch's keys wait in ``pending`` until the peer's
CCS, and :meth:`ReadState.advance` (called only for that CCS) is the one place
the read epoch moves (CVE-2014-0224).  Records of the next epoch that arrive
before it are held, at most ``MAX_FUTURE_RECORDS`` (security.md S9), and
handed back by ``advance``.  The replay window moves only after a record
authenticated (RFC 6347 §4.1.2.6, CVE-2016-2181); every failure is counted in
:class:`~dtlsvpn.dtls.stats.Stats` and nothing here raises on peer input.

RFC 9146 connection IDs: once negotiated, protected records are tls12_cid
with the CID in the header and the real content type as the last non-zero
byte of the DTLSInnerPlaintext (§4); without one, a tls12_cid record cannot
be ours.

The Association's fast path reads ``ReadState`` attributes directly; these
classes hold state and the slow-path operations, never a per-packet call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.suites import AeadKind
from dtlsvpn.dtls.replay import ReplayWindow
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.wire.constants import DTLS_1_2, RECORD_HEADER_LEN, ContentType
from dtlsvpn.wire.record import RECORD_HEADER, Record

MAX_FUTURE_RECORDS = 16  # next-epoch records kept until the CCS arrives
# Records per key before a rekey is due.  AES-GCM: far below the 2^24.5 full-size
# records TLS 1.3 (RFC 8446 §5.5) allows per key; ChaCha20-Poly1305 has more room;
# both stay far from the 2^48 sequence numbers of RFC 6347 §4.1.
REKEY_RECORDS = {AeadKind.AES_GCM: 2**23, AeadKind.CHACHA20_POLY1305: 2**36}
_LEAST_BUDGET = min(REKEY_RECORDS.values())

CT_CID = int(ContentType.tls12_cid)
CID_PREFIX = struct.Struct("!BHQ")  # RFC 9146 §4: type, version, epoch||seq, then the CID


def split_inner(inner: bytes) -> tuple[int, bytes] | None:
    """RFC 9146 §4 DTLSInnerPlaintext -> (real type, content); None if all padding."""
    stripped = inner.rstrip(b"\x00")
    if not stripped:
        return None
    return stripped[-1], stripped[:-1]


@dataclass(slots=True)
class WriteEpoch:
    """Keys (None in epoch 0) and the next record sequence number of one epoch."""

    protection: RecordProtection | None
    next_seq: int = 0

    def seal(self, ctype: int, epoch: int, payload: bytes, cid: bytes) -> bytes:
        """One record of ``ctype`` carrying ``payload``, with the next sequence number."""
        seq = self.next_seq
        self.next_seq = seq + 1
        prot = self.protection
        if prot is None:
            return RECORD_HEADER.pack(ctype, DTLS_1_2, epoch << 48 | seq, len(payload)) + payload
        if cid:
            frag = prot.seal_cid(epoch << 48 | seq, cid, payload + bytes((ctype,)))
            return (CID_PREFIX.pack(CT_CID, DTLS_1_2, epoch << 48 | seq) + cid
                    + len(frag).to_bytes(2, "big") + frag)
        frag = prot.seal(epoch << 48 | seq, ctype, payload)
        return RECORD_HEADER.pack(ctype, DTLS_1_2, epoch << 48 | seq, len(frag)) + frag


@dataclass(slots=True)
class WriteState:
    """Our write epochs; ``epoch`` is the one new records go out in."""

    epochs: dict[int, WriteEpoch]
    epoch: int = 0
    cid: bytes = b""  # RFC 9146: the CID we put on protected records (the peer's choice)

    @classmethod
    def initial(cls, first_record_seq: int) -> WriteState:
        return cls({0: WriteEpoch(None, first_record_seq)})

    @property
    def current(self) -> WriteEpoch:
        return self.epochs[self.epoch]

    def install(self, protection: RecordProtection) -> None:
        """Keys for the epoch after the current one (used once our CCS is sealed)."""
        self.epochs[self.epoch + 1] = WriteEpoch(protection, 0)

    def seal(self, ctype: int, epoch: int, payload: bytes) -> bytes:
        if ctype == ContentType.change_cipher_spec:
            self.epoch = max(self.epoch, epoch + 1)  # RFC 5246 §7.1
        return self.epochs[epoch].seal(ctype, epoch, payload, self.cid)

    def overhead(self, epoch: int) -> int:
        """Bytes a record of ``epoch`` adds to its payload, beyond the record header."""
        prot = self.epochs[epoch].protection
        if prot is None:
            return 0
        # RFC 9146 §4: the CID in the header and the real type inside.
        return prot.overhead + (len(self.cid) + 1 if self.cid else 0)

    def record_overhead(self) -> int:
        """Bytes a record adds to its payload in the current epoch, header included."""
        return RECORD_HEADER_LEN + self.overhead(self.epoch)


@dataclass(slots=True)
class ReadState:
    """The current read epoch, its keys and replay window, and the next epoch's keys."""

    epoch: int = 0
    protection: RecordProtection | None = None
    pending: RecordProtection | None = None
    window: ReplayWindow = field(default_factory=ReplayWindow)
    future: list[Record] = field(default_factory=list)
    cid: bytes = b""  # RFC 9146: the CID the peer puts on protected records (our choice)
    auth_failures: int = 0  # records that failed authentication, for the timeout reason

    def open(self, rec: Record, stats: Stats) -> tuple[int, bytes] | None:
        """Authenticate a protected record of the current epoch.

        Returns (content type, plaintext) and moves the replay window, or
        None with the reason counted in ``stats``.
        """
        cid = self.cid
        if (rec.content_type == CT_CID) != bool(cid):
            stats.unexpected += 1  # RFC 9146 §4: tls12_cid exactly when a CID was negotiated
            return None
        if rec.cid != cid:
            stats.bad_cid += 1
            return None
        if not self.window.check(rec.seq):
            stats.replay += 1
            return None
        prot = self.protection
        assert prot is not None
        epoch_seq = rec.epoch << 48 | rec.seq
        result: tuple[int, bytes] | None
        if cid:
            inner = prot.open_cid(epoch_seq, cid, rec.fragment)
            result = None if inner is None else split_inner(inner)
            if inner is not None and result is None:
                stats.malformed += 1
                return None
        else:
            plain = prot.open(epoch_seq, rec.content_type, rec.fragment)
            result = None if plain is None else (rec.content_type, plain)
        if result is None:
            stats.bad_mac += 1
            self.auth_failures += 1
            return None
        self.window.commit(rec.seq)
        return result

    def hold(self, rec: Record, stats: Stats) -> None:
        """A record of the next epoch before its CCS: keep it if its keys are coming."""
        if self.pending is None and self.epoch > 0:
            stats.unknown_epoch += 1
        elif len(self.future) < MAX_FUTURE_RECORDS:
            self.future.append(rec)
        else:
            stats.buffer_full += 1

    def advance(self) -> list[Record]:
        """The peer's CCS: the pending keys become current; returns the held records."""
        self.epoch += 1
        self.protection = self.pending
        self.pending = None
        self.window = ReplayWindow()
        future, self.future = self.future, []
        return future


def records_exhausted(writer: WriteState, read: ReadState, limit: int | None) -> bool:
    """A direction used up its record budget for the current keys (``limit``, or
    ``REKEY_RECORDS`` of the suite's AEAD when None)."""
    prot = read.protection
    assert prot is not None
    sent, received = writer.epochs[writer.epoch].next_seq, read.window.top
    if limit:
        return sent >= limit or received >= limit
    if sent < _LEAST_BUDGET and received < _LEAST_BUDGET:  # (no Enum hash per wake-up)
        return False
    budget = REKEY_RECORDS[prot.suite.aead]
    return sent >= budget or received >= budget
