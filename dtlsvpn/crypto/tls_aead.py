"""Record protection for TLS 1.2 over a stream (RFC 5246 §6.2.3.3, RFC 5288, RFC 7905).

The same AEAD construction as :class:`~dtlsvpn.crypto.aead.RecordProtection`,
with the TLS values in it:

- ``seq`` is the implicit 64-bit record sequence number of the direction
  (RFC 5246 §6.1), never on the wire, reset to 0 by each ChangeCipherSpec.
- additional_data = seq_num (8) + type (1) + version 0x0303 (2) + plaintext
  length (2).
- AES-GCM: nonce = salt (4) + nonce_explicit (8); we send ``seq`` as the
  explicit nonce (RFC 5288 §3 allows any never-repeating value), and take it
  from the record as sent on receipt.
- ChaCha20-Poly1305: nonce = IV XOR (4 zero bytes + seq) (RFC 7905 §2).

``open`` returns None on a short fragment or a bad tag; over a stream the
caller turns that into a fatal bad_record_mac (RFC 5246 §6.2.3.3), since a
stream cannot skip a record the way a datagram transport does.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.wire.tls import TLS_1_2

_AAD = struct.Struct("!QBHH")  # seq, type, version, plaintext length
_U64 = struct.Struct("!Q")
_MASK64 = (1 << 64) - 1


class TlsRecordProtection(RecordProtection):
    """AEAD protection of one TLS 1.2 direction (keys of one ChangeCipherSpec)."""

    __slots__ = ()

    def seal(self, epoch_seq: int, content_type: int, plaintext: bytes,
             aad: bytes | None = None) -> bytes:
        if aad is None:
            aad = _AAD.pack(epoch_seq, content_type, TLS_1_2, len(plaintext))
        return super().seal(epoch_seq, content_type, plaintext, aad)

    def open(self, epoch_seq: int, content_type: int, fragment: bytes,
             cid: bytes | None = None) -> bytes | None:
        if cid is not None:
            return None  # no RFC 9146 records in TLS
        n = len(fragment) - self.overhead
        if not (0 <= n <= 0xFFFF and 0 <= epoch_seq <= _MASK64):
            return None
        aad = _AAD.pack(epoch_seq, content_type & 0xFF, TLS_1_2, n)
        try:
            if self._gcm:
                return self.aead.decrypt(self._salt + fragment[:8], fragment[8:], aad)
            nonce = self._iv_high + _U64.pack(self._iv_low ^ epoch_seq)
            return self.aead.decrypt(nonce, fragment, aad)
        except InvalidTag:
            return None
