"""TLS 1.2 stream framing (RFC 5246 §6.2 and §7.4): what differs from DTLS on the wire.

Three codecs for the TLS-over-TCP transport (``dtls/stream.py``):

* The 5-byte record header::

      struct {
          ContentType type;  ProtocolVersion version;  uint16 length;
          opaque fragment[length];
      } TLSPlaintext / TLSCiphertext;

  No epoch and no sequence number on the wire: both ends count records per
  direction, from zero after each ChangeCipherSpec (RFC 5246 §6.1).
  :class:`RecordSplitter` cuts a byte stream, delivered in any split, into
  records; a length above ``MAX_CIPHERTEXT`` is record_overflow (§6.2.3) and
  a first byte with the high bit set is an SSLv2 ClientHello, which RFC 6176
  forbids.  Both are reported, never raised.

* The 4-byte handshake header (type, uint24 length), which is also the form
  the messages take in the transcript (RFC 5246 §7.4.9): no message_seq and
  no fragment fields.  :class:`HandshakeSplitter` joins handshake record
  payloads into whole messages: several messages may share one record and one
  message may span several (§6.2.1); a message longer than
  ``MAX_HANDSHAKE_MESSAGE`` is refused before it is buffered.

* The TLS ClientHello body (§7.4.1.2): the DTLS one without the cookie.  The
  same :class:`~dtlsvpn.wire.handshake.ClientHello` dataclass is used, with an
  empty ``cookie``.
"""

from __future__ import annotations

import struct

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.buffer import Reader, Writer
from dtlsvpn.wire.constants import MAX_CIPHERTEXT
from dtlsvpn.wire.extensions import pull_extensions, push_extensions
from dtlsvpn.wire.handshake import MAX_SESSION_ID_LEN, RANDOM_LEN, ClientHello

TLS_1_2 = 0x0303  # RFC 5246 §6.2.1: {3, 3}
TLS_RECORD_HEADER = struct.Struct("!BHH")  # type, version, length
TLS_RECORD_HEADER_LEN = TLS_RECORD_HEADER.size
TLS_HANDSHAKE_HEADER_LEN = 4
# Our own bound on one handshake message (certificate chains are the largest).
MAX_HANDSHAKE_MESSAGE = 1 << 17

__all__ = [
    "MAX_HANDSHAKE_MESSAGE",
    "TLS_1_2",
    "TLS_HANDSHAKE_HEADER_LEN",
    "TLS_RECORD_HEADER",
    "TLS_RECORD_HEADER_LEN",
    "HandshakeSplitter",
    "RecordSplitter",
    "decode_tls_client_hello",
    "encode_tls_client_hello",
    "encode_tls_handshake",
    "encode_tls_record",
]


def encode_tls_record(content_type: int, version: int, fragment: bytes) -> bytes:
    if len(fragment) > MAX_CIPHERTEXT:
        raise UsageError(f"record fragment of {len(fragment)} bytes exceeds 2^14 + 2048")
    return TLS_RECORD_HEADER.pack(content_type, version, len(fragment)) + fragment


def encode_tls_handshake(msg_type: int, body: bytes) -> bytes:
    """A handshake message as sent and as hashed (RFC 5246 §7.4)."""
    if len(body) >= 1 << 24:
        raise UsageError("handshake message longer than 2^24 - 1")
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


class RecordSplitter:
    """Cuts a TLS byte stream into (type, version, fragment) records.

    ``feed`` appends bytes; ``pop`` returns the next whole record or None.
    After a framing error ``error`` names it and nothing more is returned:
    a stream cannot resynchronise (RFC 5246 §6.2.3: record_overflow is fatal).
    Memory is bounded by one record plus what the caller feeds before popping.
    """

    __slots__ = ("_buf", "error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is None:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def pop(self) -> tuple[int, int, bytes] | None:
        buf = self._buf
        if self.error is not None or len(buf) < TLS_RECORD_HEADER_LEN:
            if buf and buf[0] & 0x80 and self.error is None:
                self._fail("an SSLv2 ClientHello (RFC 6176 forbids SSL 2.0)")
            return None
        ctype, version, length = TLS_RECORD_HEADER.unpack_from(buf)
        if ctype & 0x80:
            self._fail("an SSLv2 ClientHello (RFC 6176 forbids SSL 2.0)")
            return None
        if version >> 8 != 3:
            self._fail(f"a record of version {version:#06x}, not TLS")
            return None
        if length > MAX_CIPHERTEXT:
            self._fail(f"a record of {length} bytes (above 2^14 + 2048)")
            return None
        end = TLS_RECORD_HEADER_LEN + length
        if len(buf) < end:
            return None
        fragment = bytes(buf[TLS_RECORD_HEADER_LEN:end])
        del buf[:end]
        return ctype, version, fragment

    def _fail(self, what: str) -> None:
        self.error = what
        self._buf.clear()


class HandshakeSplitter:
    """Joins handshake record payloads into whole (msg_type, body) messages."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def partial(self) -> bool:
        """A message has started and not yet ended (no other record type may cut in)."""
        return bool(self._buf)

    @property
    def pending_type(self) -> int | None:
        """The type of the message that has started and not ended, if any."""
        return self._buf[0] if self._buf else None

    def feed(self, payload: bytes) -> list[tuple[int, bytes]]:
        """Append one record's payload; returns the messages it completed.

        Raises DecodeError for an empty record (RFC 5246 §6.2.1) or a message
        whose declared length is above ``MAX_HANDSHAKE_MESSAGE``.
        """
        if not payload:
            raise DecodeError("empty handshake record")
        buf = self._buf
        buf += payload
        out: list[tuple[int, bytes]] = []
        while len(buf) >= TLS_HANDSHAKE_HEADER_LEN:
            length = int.from_bytes(buf[1:4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                buf.clear()
                raise DecodeError(f"handshake message of {length} bytes")
            end = TLS_HANDSHAKE_HEADER_LEN + length
            if len(buf) < end:
                break
            out.append((buf[0], bytes(buf[TLS_HANDSHAKE_HEADER_LEN:end])))
            del buf[:end]
        return out

    def clear(self) -> None:
        self._buf.clear()


def _pull_uint16_list(r: Reader, what: str) -> tuple[int, ...]:
    raw = r.pull_opaque16()
    if len(raw) % 2 or not raw:
        raise DecodeError(f"{what}: bad list length {len(raw)}")
    return tuple(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2))


def decode_tls_client_hello(body: bytes) -> ClientHello:
    """RFC 5246 §7.4.1.2 ClientHello (no cookie); ``cookie`` comes back empty."""
    r = Reader(body)
    version = r.pull_uint16()
    random = r.pull_bytes(RANDOM_LEN)
    session_id = r.pull_opaque8()
    if len(session_id) > MAX_SESSION_ID_LEN:
        raise DecodeError(f"session_id of {len(session_id)} bytes (max 32)")
    cipher_suites = _pull_uint16_list(r, "cipher_suites")
    compression_methods = r.pull_opaque8()
    if not compression_methods:
        raise DecodeError("no compression methods")
    extensions = pull_extensions(r)
    r.expect_end("ClientHello")
    return ClientHello(version, random, session_id, b"", cipher_suites, compression_methods,
                       extensions)


def encode_tls_client_hello(msg: ClientHello) -> bytes:
    if msg.cookie:
        raise UsageError("a TLS ClientHello has no cookie")
    if len(msg.random) != RANDOM_LEN or len(msg.session_id) > MAX_SESSION_ID_LEN:
        raise UsageError("bad random or session_id length")
    if not msg.cipher_suites or not msg.compression_methods:
        raise UsageError("no cipher suites or no compression methods")
    w = Writer()
    w.push_uint16(msg.version)
    w.push_bytes(msg.random)
    w.push_opaque8(msg.session_id)
    with w.block(2):
        for s in msg.cipher_suites:
            w.push_uint16(s)
    w.push_opaque8(msg.compression_methods)
    if msg.extensions:
        push_extensions(w, msg.extensions)
    return w.data()
