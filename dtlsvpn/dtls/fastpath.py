"""The record-header fast path: data records sealed and opened from precomputed parts.

architecture.md, "The hot loop", rules 1-3: fast or slow is decided at the record
header, before any parse.  :class:`FastOpen` is built once per read epoch (by the
Association, after every slow-path datagram, since only the slow path changes the read
state) and :class:`FastSeal` once per write epoch; per packet they only slice the
header bytes, pack the nonce and the additional data and make one AEAD call.  No
``Record``, no ``parse_datagram``, no per-packet object beyond the bytes.

``FastOpen.open`` takes a datagram only when it is exactly one protected data record of
the current read epoch (RFC 6347 §4.1): its first five bytes are the precomputed
type (application_data, or tls12_cid with our CID, RFC 9146 §4), version (DTLS 1.2)
and epoch; with a CID the CID bytes at their fixed offset (11) are ours; the length
field says the record fills the datagram and is within ``MAX_CIPHERTEXT`` and at least
the AEAD overhead.  Anything else (several records, another type or epoch, a CID
record whose inner type is not data) returns None *before any state or counter
changed*, and the Association's slow path takes it exactly as it would have.  What the
fast path accepts it handles in full, with the slow path's counters: a replay
(``replay``, checked before the AEAD) or a record that does not authenticate
(``bad_mac``) is dropped; the replay window moves only after authentication
(RFC 6347 §4.1.2.6, CVE-2016-2181).

Nonces and additional data are those of ``crypto/aead.py`` (RFC 5288 §3, RFC 7905 §2,
RFC 5246 §6.2.3.3, RFC 9146 §5), built from the header bytes: the 8 bytes at offset
3 are epoch || sequence number, which is also the AAD's first field (the GCM explicit
nonce is the 8 bytes after the header).  ``tests/unit/test_fastpath.py`` checks both
against ``RecordProtection`` byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidTag

from dtlsvpn.dtls.epoch import CT_CID, ReadState, WriteEpoch
from dtlsvpn.dtls.replay import WINDOW_SIZE
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import DTLS_1_2, MAX_CIPHERTEXT, MAX_PLAINTEXT, MAX_SEQ

_WINDOW_MASK = (1 << WINDOW_SIZE) - 1
_APP_TYPE = b"\x17"
_VERSION = DTLS_1_2.to_bytes(2, "big")


class FastOpen:
    """Opens single-record data datagrams of one read epoch (see the module docstring)."""

    __slots__ = (
        "aad_post", "aad_pre", "advanced", "cid", "decrypt", "gcm", "head", "hlen",
        "iv_high", "iv_low", "max_size", "min_size", "salt", "window",
    )

    def __init__(self, read: ReadState, ctype: int) -> None:
        prot = read.protection
        if prot is None:
            raise UsageError("FastOpen needs the read epoch's keys")
        cid = read.cid if ctype == CT_CID else b""
        self.head = bytes((ctype,)) + _VERSION + read.epoch.to_bytes(2, "big")
        self.cid = cid
        self.hlen = 13 + len(cid)
        self.min_size = self.hlen + prot.overhead
        self.max_size = self.hlen + MAX_CIPHERTEXT
        if cid:  # RFC 9146 §5: 8 x 0xff, tls12_cid, cid_length, tls12_cid, version, ...
            self.aad_pre = b"\xff" * 8 + bytes((CT_CID, len(cid), CT_CID)) + _VERSION
            self.aad_post = b""
        else:  # RFC 5246 §6.2.3.3: epoch_seq, type, version, length
            self.aad_pre = b""
            self.aad_post = _APP_TYPE + _VERSION
        self.gcm, self.salt, self.iv_high, self.iv_low = prot.nonce_material()
        self.decrypt = prot.aead.decrypt
        self.window = read.window
        self.advanced = False  # the last record opened was newer than any before

    def open(self, data: bytes, stats: Stats) -> list[bytes] | None:
        """The datagram's data ([] when dropped and counted), or None: not a fast one."""
        size = len(data)
        hlen = self.hlen
        if (data[:5] != self.head or not self.min_size <= size <= self.max_size
                or int.from_bytes(data[hlen - 2:hlen], "big") != size - hlen
                or (self.cid and data[11:hlen - 2] != self.cid)):
            return None
        seq = int.from_bytes(data[5:11], "big")
        win = self.window
        top = win.top
        if seq <= top and (top - seq >= WINDOW_SIZE or win.bits >> (top - seq) & 1):
            return self._dropped(stats, size, replay=True)
        aad = self.aad_pre + data[3:hlen - 2] + self.aad_post + (
            size - self.min_size).to_bytes(2, "big")
        if self.gcm:
            nonce = self.salt + data[hlen:hlen + 8]
            body = data[hlen + 8:]
        else:
            nonce = self.iv_high + (self.iv_low ^ int.from_bytes(data[3:11], "big")).to_bytes(
                8, "big")
            body = data[hlen:]
        try:
            plain = self.decrypt(nonce, body, aad)
        except InvalidTag:
            return self._dropped(stats, size, replay=False)
        if self.cid:
            if plain[-1:] != _APP_TYPE:
                return None  # padding or not data (RFC 9146 §4): the slow path, untouched
            plain = plain[:-1]
        stats.rx_records += 1
        stats.rx_bytes += size
        if seq > top:
            win.bits = ((win.bits << (seq - top)) | 1) & _WINDOW_MASK
            win.top = seq
            self.advanced = True
        else:
            win.bits |= 1 << (top - seq)
            self.advanced = False
        return [plain]

    def _dropped(self, stats: Stats, size: int, *, replay: bool) -> list[bytes]:
        stats.rx_records += 1
        stats.rx_bytes += size
        if replay:
            stats.replay += 1
        else:
            stats.bad_mac += 1
        self.advanced = False
        return []


class FastSeal:
    """Seals application_data records of one write epoch (``Association.protect``)."""

    __slots__ = ("cid_head", "cid_mid", "encrypt", "epoch_bits", "gcm", "iv_high", "iv_low",
                 "salt", "state")

    def __init__(self, state: WriteEpoch, epoch: int, cid: bytes) -> None:
        prot = state.protection
        if prot is None:
            raise UsageError("FastSeal needs the write epoch's keys")
        self.state = state
        self.epoch_bits = epoch << 48
        self.gcm, self.salt, self.iv_high, self.iv_low = prot.nonce_material()
        self.encrypt = prot.aead.encrypt
        # RFC 9146 §4/§5: the record's header up to the CID, and the AAD's fixed start.
        self.cid_head = bytes((CT_CID,)) + _VERSION if cid else b""
        self.cid_mid = (b"\xff" * 8 + bytes((CT_CID, len(cid), CT_CID)) + _VERSION, cid)

    def seal(self, payloads: Iterable[bytes]) -> list[bytes]:
        """One record (datagram) per payload, numbered from the epoch's counter."""
        state = self.state
        epoch_bits = self.epoch_bits
        encrypt = self.encrypt
        gcm = self.gcm
        salt = self.salt
        cid_head = self.cid_head
        out: list[bytes] = []
        for payload in payloads:
            n = len(payload)
            if n > MAX_PLAINTEXT:
                raise UsageError(f"payload of {n} bytes exceeds 2^14")
            seq = state.next_seq
            if seq > MAX_SEQ:
                raise UsageError("sequence numbers exhausted: rekey required")
            state.next_seq = seq + 1
            es = (epoch_bits | seq).to_bytes(8, "big")
            if cid_head:
                out.append(self._seal_cid(es, payload))
                continue
            aad = es + b"\x17\xfe\xfd" + n.to_bytes(2, "big")
            if gcm:
                frag = es + encrypt(salt + es, payload, aad)
            else:
                frag = encrypt(self._chacha_nonce(es), payload, aad)
            out.append(b"\x17\xfe\xfd" + es + len(frag).to_bytes(2, "big") + frag)
        return out

    def _chacha_nonce(self, es: bytes) -> bytes:
        return self.iv_high + (self.iv_low ^ int.from_bytes(es, "big")).to_bytes(8, "big")

    def _seal_cid(self, es: bytes, payload: bytes) -> bytes:
        prefix, cid = self.cid_mid
        inner = payload + _APP_TYPE  # DTLSInnerPlaintext: content || real type, no padding
        aad = prefix + es + cid + len(inner).to_bytes(2, "big")
        if self.gcm:
            frag = es + self.encrypt(self.salt + es, inner, aad)
        else:
            frag = self.encrypt(self._chacha_nonce(es), inner, aad)
        return self.cid_head + es + cid + len(frag).to_bytes(2, "big") + frag
