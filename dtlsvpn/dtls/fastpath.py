"""The record-header fast path: data records sealed and opened from precomputed parts.

architecture.md, "The hot loop", rules 1-3: fast or slow is decided at the record
header, before any parse.  :class:`FastOpen` is built once per read epoch (by the
Association, after every slow-path datagram, since only the slow path changes the read
state) and :class:`FastSeal` once per write epoch; per packet they only slice the
header bytes, pack the nonce and the additional data and make one AEAD call.  No
``Record``, no ``parse_datagram``, no per-packet object beyond the bytes.

``FastOpen.open`` takes a datagram only when it is exactly one protected data record of
the current read epoch (RFC 6347 §4.1): its first five bytes are the precomputed type
(application_data, or tls12_cid with our CID, RFC 9146 §4), version (DTLS 1.2) and
epoch; with a CID the CID bytes at their fixed offset (11) are ours; the length field
says the record fills the datagram and is within ``MAX_CIPHERTEXT`` and at least the
AEAD overhead.  The header is read with one unpack (type and version, epoch and sequence
number, CID, length, explicit nonce) and its fields compared.  Anything else (several
records, another type or epoch, a CID record whose inner type is not data) returns None
*before any state or counter changed*, and the Association's slow path takes it exactly
as it would have.  What the fast path accepts it handles in full, with the slow path's
counters: a replay (``replay``, checked before the AEAD) or a record that does not
authenticate (``bad_mac``) is dropped; the replay window moves only after authentication
(RFC 6347 §4.1.2.6, CVE-2016-2181).

Nonces and additional data are those of ``crypto/aead.py`` (RFC 5288 §3, RFC 7905 §2,
RFC 5246 §6.2.3.3, RFC 9146 §5), built from the header bytes: the 8 bytes at offset
3 are epoch || sequence number, which is also the AAD's first field (the GCM explicit
nonce is the 8 bytes after the header).  ``tests/unit/test_fastpath.py`` checks both
against ``RecordProtection`` byte for byte.

Per packet the loops do no Python call beyond the AEAD and a few ``struct`` packs of
precomputed layouts (header, nonce, AAD): ``FastOpen.open_batch`` takes a whole run of
datagrams (the counters, the replay window and ``advanced`` are kept in locals and
stored once), ``FastSeal.seal`` numbers a batch from one reserved range of sequence
numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.exceptions import InvalidTag

from dtlsvpn.dtls.epoch import CT_CID, ReadState, WriteEpoch
from dtlsvpn.dtls.replay import WINDOW_SIZE
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import DTLS_1_2, MAX_CIPHERTEXT, MAX_PLAINTEXT, MAX_SEQ

_WINDOW_MASK = (1 << WINDOW_SIZE) - 1
_SEQ_MASK = (1 << 48) - 1
_APP_TYPE = b"\x17"
_CT_APP = 0x17
_VERSION = DTLS_1_2.to_bytes(2, "big")
_NONCE = struct.Struct("!4sQ")  # GCM: salt || explicit; ChaCha20: IV high || (IV low ^ es)


class FastOpen:
    """Opens single-record data datagrams of one read epoch (see the module docstring)."""

    __slots__ = (
        "aad", "aad_mid", "aad_pre", "advanced", "cid", "decrypt", "explicit", "gcm", "head",
        "held", "hlen", "max_size", "min_size", "nonce_high", "nonce_xor", "opened", "parts",
        "protection", "record", "window",
    )

    def __init__(self, read: ReadState, ctype: int) -> None:
        prot = read.protection
        if prot is None:
            raise UsageError("FastOpen needs the read epoch's keys")
        cid = read.cid if ctype == CT_CID else b""
        self.protection = prot
        self.head = bytes((ctype,)) + _VERSION + read.epoch.to_bytes(2, "big")
        self.cid = cid
        self.hlen = 13 + len(cid)
        self.min_size = self.hlen + prot.overhead
        self.max_size = self.hlen + MAX_CIPHERTEXT
        gcm, salt, iv_high, iv_low = prot.nonce_material()
        self.gcm = gcm
        self.nonce_high = salt if gcm else iv_high
        self.nonce_xor = 0 if gcm else iv_low
        # The whole header in one unpack: (type || version, epoch || seq, CID, length,
        # explicit nonce), the CID and the nonce empty when there is none.
        self.record = struct.Struct(f"!3sQ{len(cid)}sH{8 if gcm else 0}s")
        self.explicit = 8 if gcm else 0  # bytes of explicit nonce before the ciphertext
        if cid:  # RFC 9146 §5: 8 x 0xff, tls12_cid, cid_length, tls12_cid, version, ...
            self.aad_pre = b"\xff" * 8 + bytes((CT_CID, len(cid), CT_CID)) + _VERSION
            self.aad_mid = cid
        else:  # RFC 5246 §6.2.3.3: epoch_seq, type, version, length
            self.aad_pre = b""
            self.aad_mid = _APP_TYPE + _VERSION
        self.aad = _aad(self.aad_pre, self.aad_mid)
        self.decrypt = prot.aead.decrypt
        self.window = read.window
        self.advanced = False  # the last record opened was newer than any before
        self.opened = False  # the last ``open_batch`` delivered data
        # (datagram, epoch || seq, DTLSInnerPlaintext) of the last CID record that
        # authenticated but carried no data: a keepalive, which ``HeartbeatIn.take``
        # then takes without opening it a second time (hbfast.py).  Not state of the
        # association: the window and the counters are as if it had not been opened; it
        # is cleared as soon as that datagram is taken (``HeartbeatIn.take``) or left to
        # the slow path (``Association._take_heartbeat``).
        self.held: tuple[bytes, int, bytes] | None = None
        self.parts = (self.head[:3], read.epoch, self.hlen, cid, self.explicit, self.min_size,
                      self.max_size, self.record.unpack_from, self.aad.pack, self.aad_pre,
                      self.aad_mid, self.nonce_high, self.nonce_xor, self.decrypt, self.window)

    def open(self, data: bytes, stats: Stats) -> list[bytes] | None:
        """The datagram's data ([] when dropped and counted), or None: not a fast one."""
        out: list[bytes] = []
        return out if self.open_batch([data], 0, stats, out) else None

    def open_batch(self, datagrams: list[bytes], start: int, stats: Stats,
                   out: list[bytes]) -> int:
        """Open ``datagrams[start:]`` while each is a fast one, appending their data to
        ``out`` (replays and forgeries dropped and counted); return the index of the first
        that is not (``len(datagrams)`` when none), which nothing here has touched."""
        (type_version, epoch, hlen, cid, explicit, min_size, max_size, unpack, pack_aad, pre,
         mid, nonce_high, nonce_xor, decrypt, win) = self.parts
        pack_nonce = _NONCE.pack
        body_at = hlen + explicit
        top, bits = win.top, win.bits
        advanced, opened = self.advanced, False
        replays = forged = 0
        append = out.append
        i, n = start, len(datagrams)
        while i < n:
            data = datagrams[i]
            size = len(data)
            if not min_size <= size <= max_size:
                break
            tv, es, own, length, nonce_tail = unpack(data)
            if tv != type_version or es >> 48 != epoch or own != cid or length != size - hlen:
                break
            seq = es & _SEQ_MASK
            advanced = False
            if seq <= top and (top - seq >= WINDOW_SIZE or bits >> (top - seq) & 1):
                replays += 1
            else:
                nonce = nonce_high + nonce_tail if explicit else pack_nonce(nonce_high,
                                                                              es ^ nonce_xor)
                try:
                    plain = decrypt(nonce, data[body_at:], pack_aad(pre, es, mid,
                                                                    size - min_size))
                except InvalidTag:
                    plain = None
                if plain is None:
                    forged += 1
                else:
                    if cid:
                        if not plain or plain[-1] != _CT_APP:
                            # Padding or not data (RFC 9146 §4): the slow path, or
                            # HeartbeatIn with what was opened here (``held``).
                            self.held = (data, es, plain)
                            break
                        plain = plain[:-1]
                    append(plain)
                    opened = True
                    if seq > top:
                        # Past the window: only seq is left (never a 2^48-bit shift).
                        bits = (((bits << (seq - top)) | 1) & _WINDOW_MASK
                                if seq - top < WINDOW_SIZE else 1)
                        top = seq
                        advanced = True
                    else:
                        bits |= 1 << (top - seq)
            i += 1
        if i > start:  # every datagram before ``i`` was taken (dropped or opened)
            win.top, win.bits = top, bits
            stats.rx_records += i - start
            stats.rx_bytes += sum(map(len, datagrams[start:i]))
            stats.replay += replays
            stats.bad_mac += forged
            self.advanced = advanced
        self.opened = opened
        return i


def _aad(pre: bytes, mid: bytes) -> struct.Struct:
    """The additional data's layout: ``pre``, epoch || seq, ``mid``, length."""
    return struct.Struct(f"!{len(pre)}sQ{len(mid)}sH")


class FastSeal:
    """Seals records of one content type (application_data for ``Association.protect``,
    heartbeat for its keepalives) in one write epoch."""

    __slots__ = ("aad", "aad_mid", "aad_pre", "cid", "compiled", "ctype", "encrypt", "epoch",
                 "epoch_bits", "gcm", "head", "header", "inner_type", "nonce_high", "nonce_xor",
                 "parts", "state")

    def __init__(self, state: WriteEpoch, epoch: int, cid: bytes, ctype: int = _CT_APP, *,
                 compiled: Callable[..., Any] | None = None) -> None:
        prot = state.protection
        if prot is None:
            raise UsageError("FastSeal needs the write epoch's keys")
        self.state = state
        self.epoch = epoch
        self.ctype = ctype
        self.epoch_bits = epoch << 48
        own_type = bytes((ctype,))
        self.inner_type = own_type  # DTLSInnerPlaintext: content || real type, no padding
        gcm, salt, iv_high, iv_low = prot.nonce_material()
        self.gcm = gcm
        self.nonce_high = salt if gcm else iv_high
        self.nonce_xor = 0 if gcm else iv_low
        self.encrypt = prot.aead.encrypt
        self.cid = cid
        # RFC 9146 §4/§5 with a CID: tls12_cid header, the AAD's fixed start; else
        # RFC 5246 §6.2.3.3.  The record header: type, version, epoch || seq, CID, length
        # (and GCM's explicit nonce, which is epoch || seq again).
        if cid:
            self.head = bytes((CT_CID,)) + _VERSION
            self.aad_pre = b"\xff" * 8 + bytes((CT_CID, len(cid), CT_CID)) + _VERSION
            self.aad_mid = cid
        else:
            self.head = own_type + _VERSION
            self.aad_pre = b""
            self.aad_mid = own_type + _VERSION
        self.aad = _aad(self.aad_pre, self.aad_mid)
        self.header = struct.Struct(f"!3sQ{len(cid)}sHQ" if gcm else f"!3sQ{len(cid)}sH")
        self.parts = (self.encrypt, gcm, cid, self.head, self.aad.pack, self.header.pack,
                      self.aad_pre, self.aad_mid, self.nonce_high, self.nonce_xor, own_type)
        # ``DtlsConfig.record_sealer``: the batch loop below in C, data records only
        self.compiled: Any = None
        if compiled is not None and ctype == _CT_APP:
            self.compiled = compiled(key=prot.key, gcm=gcm, nonce_high=self.nonce_high,
                                     nonce_xor=self.nonce_xor, cid=cid)

    def seal(self, payloads: Iterable[bytes]) -> list[bytes]:
        """One record (datagram) per payload, numbered from the epoch's counter."""
        batch = payloads if isinstance(payloads, list) else list(payloads)
        state = self.state
        first = state.next_seq
        count = len(batch)
        if count == 1:  # a lone packet (the idle round trip): no loop, no max()
            payload = batch[0]
            if first > MAX_SEQ or len(payload) > MAX_PLAINTEXT:
                return self._seal_checked(batch)
            return [self.seal_one(payload)]
        if not count:
            return []
        if first + count - 1 > MAX_SEQ or max(map(len, batch)) > MAX_PLAINTEXT:
            return self._seal_checked(batch)
        if self.compiled is not None:  # the same records, from C
            state.next_seq = first + count
            records: list[bytes] = self.compiled.seal(batch, self.epoch_bits | first)
            return records
        (encrypt, gcm, cid, head, pack_aad, pack_header, pre, mid, nonce_high, nonce_xor,
         inner_type) = self.parts
        pack_nonce = _NONCE.pack
        state.next_seq = first + count
        es = self.epoch_bits | first
        out: list[bytes] = []
        append = out.append
        for payload in batch:
            if cid:
                payload += inner_type  # DTLSInnerPlaintext: content || real type, no padding
            sealed = encrypt(pack_nonce(nonce_high, es ^ nonce_xor), payload,
                             pack_aad(pre, es, mid, len(payload)))
            if gcm:
                append(pack_header(head, es, cid, len(sealed) + 8, es) + sealed)
            else:
                append(pack_header(head, es, cid, len(sealed)) + sealed)
            es += 1
        return out

    def seal_one(self, payload: bytes) -> bytes:
        """One record, numbered from the epoch's counter (a keepalive: no list around
        it).  A payload above 2^14 or no sequence number left: ``WriteEpoch.seal``, as
        the slow path seals every other record type."""
        state = self.state
        seq = state.next_seq
        if seq > MAX_SEQ or len(payload) > MAX_PLAINTEXT:
            return state.seal(self.ctype, self.epoch, payload, self.cid)
        state.next_seq = seq + 1
        es = self.epoch_bits | seq
        (encrypt, gcm, cid, head, pack_aad, pack_header, pre, mid, nonce_high, nonce_xor,
         inner_type) = self.parts
        if cid:
            payload += inner_type
        sealed = encrypt(_NONCE.pack(nonce_high, es ^ nonce_xor), payload,
                         pack_aad(pre, es, mid, len(payload)))
        if gcm:
            return pack_header(head, es, cid, len(sealed) + 8, es) + sealed
        return pack_header(head, es, cid, len(sealed)) + sealed

    def _seal_checked(self, batch: list[bytes]) -> list[bytes]:
        """One at a time, failing at the payload that is too big or has no number left."""
        out: list[bytes] = []
        for payload in batch:
            if len(payload) > MAX_PLAINTEXT:
                raise UsageError(f"payload of {len(payload)} bytes exceeds 2^14")
            if self.state.next_seq > MAX_SEQ:
                raise UsageError("sequence numbers exhausted: rekey required")
            out += self.seal([payload])
        return out
