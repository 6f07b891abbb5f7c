"""Record protection: AEAD seal/open of one DTLS record fragment.

Purpose: the per-record crypto of the fast path. One :class:`RecordProtection`
per epoch and direction; the AEAD object is built once in ``__init__`` and
``seal``/``open`` only pack precomputed pieces around one AEAD call.

Invariants:
- additional_data = seq_num (8: epoch << 48 | sequence) + type (1) +
  version (2) + length (2) of the *plaintext* (RFC 5246 §6.2.3.3, with the
  DTLS 64-bit sequence number of RFC 6347 §4.1.2.1). The version is always
  DTLS 1.2 (0xFEFD): records of other versions never reach protection.
- AES-GCM (RFC 5288 §3): nonce = salt (4, from the key block) + nonce_explicit
  (8, sent at the front of the fragment). We send epoch_seq as nonce_explicit,
  which never repeats under one key because sequence numbers never wrap
  (RFC 6347 §4.1). On receipt the explicit nonce is taken from the record as
  sent, whatever it is.
- ChaCha20-Poly1305 (RFC 7905 §2): nonce = IV XOR (4 zero bytes + 8-byte
  epoch_seq); no explicit nonce in the record.
- ``open`` never raises on remote input: a short fragment or a bad tag gives
  None (RFC 6347 §4.1.2.7: invalid records are discarded silently; the caller
  counts them).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from dtlsvpn.crypto.suites import AeadKind, SuiteInfo
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import DTLS_1_2, ContentType

_AAD = struct.Struct("!QBHH")  # epoch_seq, type, version, plaintext length
_U64 = struct.Struct("!Q")
# RFC 9146 §5: seq_num_placeholder (8 x 0xff) || tls12_cid, then cid_length || tls12_cid.
_CID_AAD_PREFIX = b"\xff" * 8 + bytes([ContentType.tls12_cid])
_CID_AAD_MID = struct.Struct("!BBHQ")  # cid_length, tls12_cid, version, epoch_seq
_MASK64 = (1 << 64) - 1


class RecordProtection:
    """AEAD protection for one epoch in one direction.

    ``seal(epoch_seq, type, plaintext)`` returns the record fragment;
    ``open(epoch_seq, type, fragment)`` returns the plaintext or None.
    ``overhead`` is the number of bytes a fragment is longer than its plaintext.
    """

    __slots__ = (
        "_gcm", "_iv_high", "_iv_low", "_min_len", "_salt", "aead", "key", "overhead", "suite",
    )

    aead: AESGCM | ChaCha20Poly1305
    """The underlying AEAD object (read it for known-answer tests; never rebuild it)."""

    def __init__(self, suite: SuiteInfo, key: bytes, iv: bytes) -> None:
        if len(key) != suite.key_len:
            raise UsageError(f"{suite.name}: key must be {suite.key_len} bytes, got {len(key)}")
        if len(iv) != suite.fixed_iv_len:
            raise UsageError(f"{suite.name}: IV must be {suite.fixed_iv_len} bytes, got {len(iv)}")
        self.suite = suite
        self.overhead = suite.record_iv_len + suite.tag_len
        self.key = bytes(key)  # (the compiled lane builds its own context: daemon/lane.py)
        self._gcm = suite.aead is AeadKind.AES_GCM
        # Shortest fragment that can possibly authenticate: explicit nonce + tag.
        self._min_len = self.overhead
        if self._gcm:
            self.aead = AESGCM(key)
            self._salt = bytes(iv)
            self._iv_high = b""
            self._iv_low = 0
        else:
            self.aead = ChaCha20Poly1305(key)
            self._salt = b""
            # RFC 7905 §2: the 64-bit sequence number is left-padded with four
            # zero bytes before the XOR, so only the IV's last 8 bytes change.
            self._iv_high = bytes(iv[:4])
            self._iv_low = int.from_bytes(iv[4:], "big")

    def seal(self, epoch_seq: int, content_type: int, plaintext: bytes,
             aad: bytes | None = None) -> bytes:
        """Encrypt one record; returns the fragment (GCM: explicit nonce first).

        ``aad`` replaces the RFC 5246 additional data (RFC 9146 CID records).
        """
        if aad is None:
            aad = _AAD.pack(epoch_seq, content_type, DTLS_1_2, len(plaintext))
        if self._gcm:
            explicit = _U64.pack(epoch_seq)
            return explicit + self.aead.encrypt(self._salt + explicit, plaintext, aad)
        nonce = self._iv_high + _U64.pack(self._iv_low ^ epoch_seq)
        return self.aead.encrypt(nonce, plaintext, aad)

    def open(self, epoch_seq: int, content_type: int, fragment: bytes,
             cid: bytes | None = None) -> bytes | None:
        """Decrypt one record fragment; None when it is too short or does not authenticate.

        With ``cid`` (RFC 9146) the result is the DTLSInnerPlaintext and the
        additional data is the CID record's; ``content_type`` is then unused.
        """
        n = len(fragment) - self._min_len
        if not (0 <= n <= 0xFFFF and 0 <= epoch_seq <= _MASK64):
            return None
        if cid is None:
            aad = _AAD.pack(epoch_seq, content_type & 0xFF, DTLS_1_2, n)
        elif len(cid) <= 0xFF:
            aad = self.cid_aad(epoch_seq, cid, n)
        else:
            return None
        try:
            if self._gcm:
                return self.aead.decrypt(self._salt + fragment[:8], fragment[8:], aad)
            nonce = self._iv_high + _U64.pack(self._iv_low ^ epoch_seq)
            return self.aead.decrypt(nonce, fragment, aad)
        except InvalidTag:
            return None

    def nonce_material(self) -> tuple[bool, bytes, bytes, int]:
        """(is AES-GCM, GCM salt, ChaCha IV high 4 bytes, ChaCha IV low 64 bits as int):
        what the fast path precomputes once per epoch to build nonces inline."""
        return self._gcm, self._salt, self._iv_high, self._iv_low

    @staticmethod
    def cid_aad(epoch_seq: int, cid: bytes, inner_len: int) -> bytes:
        """RFC 9146 §5 additional data of a tls12_cid record."""
        return (_CID_AAD_PREFIX
                + _CID_AAD_MID.pack(len(cid), ContentType.tls12_cid, DTLS_1_2, epoch_seq)
                + cid + inner_len.to_bytes(2, "big"))

    def seal_cid(self, epoch_seq: int, cid: bytes, inner: bytes) -> bytes:
        """Encrypt a DTLSInnerPlaintext (content || real_type || zeros) for a CID record."""
        return self.seal(epoch_seq, ContentType.tls12_cid, inner,
                         self.cid_aad(epoch_seq, cid, len(inner)))

    def open_cid(self, epoch_seq: int, cid: bytes, fragment: bytes) -> bytes | None:
        """Decrypt a tls12_cid fragment to its DTLSInnerPlaintext; None when it fails."""
        return self.open(epoch_seq, ContentType.tls12_cid, fragment, cid)
