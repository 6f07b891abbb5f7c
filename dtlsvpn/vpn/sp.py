"""SP framing: the tunnel's messages inside a TLS stream (SP-over-TCP and its TLS mapping).

The seed draft "TLS Mapping for Scalability Protocols" layers the SP-over-TCP
mapping on a TLS 1.2 connection: once the TLS handshake is done, each side
sends an 8-byte protocol header and checks the peer's, then every message is
a 64-bit big-endian length followed by that many bytes::

    +------+------+------+------+------+------+------+------+
    | 0x00 | 'S'  | 'P'  | ver  |  protocol (BE16)  | 0x00 | 0x00 |
    +------+------+------+------+------+------+------+------+
    | length (BE64)                                          | payload ...

* ``ver`` is the SP version, 0 here.  An invalid header (wrong magic, non-zero
  reserved bytes), an unknown version or another protocol number closes the
  connection (SP-over-TCP §2): :class:`SpError` names what the peer sent.
* dtlsvpn's protocol number is :data:`SP_PROTOCOL_DTLSVPN` = 0x4456 (ASCII
  "DV"), outside the ranges the nanomsg/NNG family uses (pair 0x10, pub/sub
  0x20/0x21, req/rep 0x30/0x31, pipeline 0x50/0x51, survey 0x62/0x63,
  bus 0x70).
* One message is one inner IP packet.  A length of 0 or above
  ``max_message`` (the tunnel MTU) is refused before any of it is buffered.

Bounded memory, both ways: :class:`SpReceiver` holds at most one header plus
one partial message (``8 + max_message`` bytes) between calls, whatever the
peer trickles; :class:`SendQueue` holds at most ``limit`` bytes of frames for
a peer that stopped reading and drops (and counts) whole packets beyond that,
as a router queue does; sealed control bytes (flights, alerts, heartbeat answers,
which the stream cannot skip) go past that limit, but at most to
``CONTROL_LIMIT_FACTOR`` x it (:meth:`SendQueue.push_control`: beyond, the peer does
not read what it makes us send and the caller gives the connection up).  Nothing
here touches a socket or a clock.
"""

from __future__ import annotations

import struct
from collections import deque

from dtlsvpn.errors import DecodeError, UsageError

SP_MAGIC = b"\x00SP"
SP_VERSION = 0
SP_PROTOCOL_DTLSVPN = 0x4456  # "DV": our protocol number in the SP header
SP_HEADER_LEN = 8
CONTROL_LIMIT_FACTOR = 2  # control bytes may take a SendQueue to this x its limit, no further
_HEADER = struct.Struct("!3sBHH")  # magic, version, protocol, reserved
_LENGTH = struct.Struct("!Q")
FRAME_OVERHEAD = _LENGTH.size


class SpError(DecodeError):
    """The peer broke the SP framing; the connection must close (the text says why)."""


def encode_header(protocol: int = SP_PROTOCOL_DTLSVPN) -> bytes:
    if not 0 <= protocol <= 0xFFFF:
        raise UsageError(f"SP protocol number {protocol} is not a 16-bit value")
    return _HEADER.pack(SP_MAGIC, SP_VERSION, protocol, 0)


def check_header(data: bytes, protocol: int = SP_PROTOCOL_DTLSVPN) -> None:
    """Raise :class:`SpError` unless ``data`` is the 8-byte header we expect."""
    if len(data) != SP_HEADER_LEN:
        raise SpError(f"SP header of {len(data)} bytes")
    magic, version, proto, reserved = _HEADER.unpack(data)
    if magic != SP_MAGIC or reserved != 0:
        raise SpError(f"invalid SP protocol header {data.hex()} (expected {SP_MAGIC.hex()}…)")
    if version != SP_VERSION:
        raise SpError(f"unknown SP version {version} in header {data.hex()}")
    if proto != protocol:
        raise SpError(f"SP protocol {proto:#06x} in header {data.hex()}, "
                      f"expected {protocol:#06x} (dtlsvpn)")


def encode_frame(payload: bytes, max_message: int) -> bytes:
    if not 0 < len(payload) <= max_message:
        raise UsageError(f"SP message of {len(payload)} bytes (1..{max_message} allowed)")
    return _LENGTH.pack(len(payload)) + payload


class SpReceiver:
    """The receiving half: the peer's header, then its messages, from a stream cut anywhere."""

    __slots__ = ("_buf", "_need", "header_ok", "max_message", "protocol")

    def __init__(self, max_message: int, protocol: int = SP_PROTOCOL_DTLSVPN) -> None:
        if max_message <= 0:
            raise UsageError("max_message must be positive")
        self.max_message = max_message
        self.protocol = protocol
        self.header_ok = False
        self._buf = bytearray()
        self._need = 0  # payload length of the frame being read; 0 while reading a length

    @property
    def buffered(self) -> int:
        """Bytes held between calls (at most ``8 + max_message``)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Append stream bytes; return the messages they completed, or raise SpError."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        if not self.header_ok:
            if len(buf) < SP_HEADER_LEN:
                self._check_prefix()
                return out
            check_header(bytes(buf[:SP_HEADER_LEN]), self.protocol)
            del buf[:SP_HEADER_LEN]
            self.header_ok = True
        pos = 0
        n = len(buf)
        while True:
            if self._need == 0:
                if n - pos < FRAME_OVERHEAD:
                    break
                (length,) = _LENGTH.unpack_from(buf, pos)
                if not 0 < length <= self.max_message:
                    buf.clear()
                    raise SpError(f"SP message of {length} bytes "
                                  f"(the tunnel MTU allows 1..{self.max_message})")
                pos += FRAME_OVERHEAD
                self._need = length
            if n - pos < self._need:
                break
            out.append(bytes(buf[pos:pos + self._need]))
            pos += self._need
            self._need = 0
        del buf[:pos]
        return out

    def _check_prefix(self) -> None:
        """Fail early on a header that cannot become valid (no waiting for 8 bytes)."""
        head = bytes(self._buf[:3])
        if head != SP_MAGIC[:len(head)]:
            raise SpError(f"invalid SP protocol header starting {bytes(self._buf).hex()}")


class SendQueue:
    """Frames waiting for the socket, at most ``limit`` bytes; more is dropped and counted."""

    __slots__ = ("_chunks", "_offset", "dropped", "limit", "size")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise UsageError("send queue limit must be positive")
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already written
        self.size = 0
        self.dropped = 0

    def push(self, chunk: bytes, *, force: bool = False) -> bool:
        """Queue a chunk; False (and counted) when it does not fit.

        ``force`` is for the few bytes that must go out whatever the queue holds
        (the TLS handshake, alerts, the SP header): they are control, not data.
        """
        if not force and self.size + len(chunk) > self.limit:
            self.dropped += 1
            return False
        if chunk:
            self._chunks.append(chunk)
            self.size += len(chunk)
        return True

    @property
    def control_limit(self) -> int:
        """The most :meth:`push_control` lets the queue hold."""
        return CONTROL_LIMIT_FACTOR * self.limit

    def push_control(self, chunk: bytes) -> bool:
        """Queue sealed bytes past ``limit`` if need be (the stream cannot skip them), up
        to :attr:`control_limit`; False, and nothing queued, beyond: the peer does not
        read what it makes us send, and the caller gives the connection up (the daemon's
        ``control_overflow``, the debug tool's error)."""
        if self.size + len(chunk) > self.control_limit:
            return False
        return self.push(chunk, force=True)

    def peek(self, most: int = 1 << 16) -> bytes:
        """Up to ``most`` bytes from the front, without removing them."""
        parts: list[bytes] = []
        got = 0
        offset = self._offset
        for c in self._chunks:
            piece = c[offset:offset + most - got]
            offset = 0
            parts.append(piece)
            got += len(piece)
            if got >= most:
                break
        return b"".join(parts)

    def consume(self, n: int) -> None:
        """``n`` bytes were written to the socket."""
        if n > self.size:
            raise UsageError("consume() beyond the queue")
        self.size -= n
        while n:
            first = self._chunks[0]
            left = len(first) - self._offset
            if n < left:
                self._offset += n
                return
            n -= left
            self._chunks.popleft()
            self._offset = 0

    def __len__(self) -> int:
        return self.size
