"""DTLS 1.2 record framing (RFC 6347 §4.1, RFC 9146 §4).

::

    struct {
        ContentType type;            /* 1 byte */
        ProtocolVersion version;     /* 2 bytes */
        uint16 epoch;
        uint48 sequence_number;      /* epoch and seq read as one uint64 */
        opaque cid[cid_length];      /* RFC 9146, tls12_cid records only */
        uint16 length;
        opaque fragment[length];
    } DTLSCiphertext;

``parse_datagram`` is on the receive path of every record that misses the fast
path, so it uses one precompiled struct and never raises: RFC 6347 §4.1.2.7 says
invalid records are discarded silently, and the caller counts the garbage flag.

Invariants:

* Several records may share a datagram and a record never spans datagrams
  (RFC 6347 §4.1.1); parsing stops at the first record that is truncated, runs
  past the end of the datagram or is longer than ``MAX_CIPHERTEXT`` (RFC 5246
  §6.2.3: record_overflow; in DTLS the rest of the datagram is dropped), and
  the records before it are returned.
* The version and content type are returned unchecked: which versions and
  types are acceptable in which epoch is the record layer's decision.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import (
    DTLS_1_2,
    MAX_CIPHERTEXT,
    MAX_SEQ,
    RECORD_HEADER_LEN,
    ContentType,
)

__all__ = ["MAX_RECORDS_PER_DATAGRAM", "RECORD_HEADER", "Record", "encode_record",
           "parse_datagram"]

RECORD_HEADER = struct.Struct("!BHQH")  # type, version, epoch << 48 | seq, length
assert RECORD_HEADER.size == RECORD_HEADER_LEN

_PREFIX = struct.Struct("!BHQ")  # the part before the CID in an RFC 9146 record
_LENGTH = struct.Struct("!H")
_SEQ_MASK = MAX_SEQ
_TLS12_CID = int(ContentType.tls12_cid)


@dataclass(frozen=True, slots=True)
class Record:
    """One DTLS record.  ``cid`` is non-empty only for tls12_cid records (RFC 9146)."""

    content_type: int
    version: int
    epoch: int
    seq: int
    fragment: bytes
    cid: bytes = b""


MAX_RECORDS_PER_DATAGRAM = 32  # a flight's datagram packs a handful; data is one each


def parse_datagram(
    data: bytes | bytearray | memoryview, cid_len: int = 0,
    limit: int = MAX_RECORDS_PER_DATAGRAM,
) -> tuple[list[Record], bool]:
    """Split a datagram into records.

    Returns the well-formed records in order and ``True`` when the datagram
    ended in garbage (a truncated header, a length past the end of the
    datagram, or a length above ``MAX_CIPHERTEXT``) or held more than ``limit``
    records (the rest is dropped unparsed: thousands of empty records in one
    datagram would cost the receiver a record's work each).  ``cid_len`` is the
    length of the connection ID we asked the peer to send (RFC 9146 §4); with
    the default 0 a tls12_cid record is framed like any other.
    """
    records: list[Record] = []
    end = len(data)
    pos = 0
    unpack_from = RECORD_HEADER.unpack_from
    while pos < end:
        if pos + RECORD_HEADER_LEN > end or len(records) == limit:
            return records, True
        ctype, version, epoch_seq, length = unpack_from(data, pos)
        if ctype == _TLS12_CID and cid_len:
            # RFC 9146 §4: the CID sits between the sequence number and the length.
            start = pos + RECORD_HEADER_LEN + cid_len
            if start > end:
                return records, True
            cid = bytes(data[pos + 11:pos + 11 + cid_len])
            (length,) = _LENGTH.unpack_from(data, start - 2)
        else:
            start = pos + RECORD_HEADER_LEN
            cid = b""
        stop = start + length
        if length > MAX_CIPHERTEXT or stop > end:
            # RFC 6347 §4.1.2.7: drop silently; RFC 5246 §6.2.3 caps the length.
            return records, True
        records.append(
            Record(ctype, version, epoch_seq >> 48, epoch_seq & _SEQ_MASK,
                   bytes(data[start:stop]), cid)
        )
        pos = stop
    return records, False


def encode_record(
    content_type: int,
    epoch: int,
    seq: int,
    fragment: bytes,
    version: int = DTLS_1_2,
    cid: bytes = b"",
) -> bytes:
    """One record: header (with the RFC 9146 CID when ``cid`` is given) and fragment."""
    if not 0 <= seq <= MAX_SEQ or not 0 <= epoch <= 0xFFFF:
        # RFC 6347 §4.1: sequence numbers MUST NOT wrap.
        raise UsageError(f"epoch {epoch} / seq {seq} out of range")
    if cid:
        return (_PREFIX.pack(content_type, version, epoch << 48 | seq) + cid
                + _LENGTH.pack(len(fragment)) + fragment)
    return RECORD_HEADER.pack(content_type, version, epoch << 48 | seq, len(fragment)) + fragment
