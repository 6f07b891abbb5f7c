"""Bounds-checked byte readers and writers.

Every ``pull_*`` either returns a value read wholly inside the buffer (or the
current length-limited block) or raises :class:`DecodeError`; nothing ever
reads past a declared length.  ``Writer`` builds byte strings, with helpers
that back-patch a length prefix once the body is written.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from dtlsvpn.errors import DecodeError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Reader:
    """Sequential reader over a bytes-like object."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def expect_end(self, what: str = "message") -> None:
        if self._pos != self._end:
            raise DecodeError(f"{self._end - self._pos} trailing bytes after {what}")

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self._end:
            raise DecodeError(f"need {n} bytes, {self._end - self._pos} left")
        start = self._pos
        self._pos = start + n
        return self._data[start:start + n]

    def pull_bytes(self, n: int) -> bytes:
        return self._take(n)

    def pull_rest(self) -> bytes:
        return self._take(self._end - self._pos)

    def pull_uint8(self) -> int:
        if self._pos >= self._end:
            raise DecodeError("need 1 byte, 0 left")
        v = self._data[self._pos]
        self._pos += 1
        return v

    def pull_uint16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def pull_uint24(self) -> int:
        return int.from_bytes(self._take(3), "big")

    def pull_uint32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def pull_uint48(self) -> int:
        return int.from_bytes(self._take(6), "big")

    def pull_uint64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def pull_opaque8(self) -> bytes:
        return self._take(self.pull_uint8())

    def pull_opaque16(self) -> bytes:
        return self._take(self.pull_uint16())

    def pull_opaque24(self) -> bytes:
        return self._take(self.pull_uint24())

    @contextmanager
    def block(self, length_size: int) -> Iterator[Reader]:
        """Limit reading to a length-prefixed block; the block must be consumed exactly."""
        if length_size == 1:
            n = self.pull_uint8()
        elif length_size == 2:
            n = self.pull_uint16()
        elif length_size == 3:
            n = self.pull_uint24()
        else:  # pragma: no cover - programming error
            raise ValueError(length_size)
        if self._pos + n > self._end:
            raise DecodeError(f"block of {n} bytes overruns its container")
        outer_end = self._end
        self._end = self._pos + n
        try:
            yield self
            if self._pos != self._end:
                raise DecodeError(f"{self._end - self._pos} unread bytes in block")
        finally:
            self._end = outer_end


class Writer:
    """Appends big-endian fields to a bytearray."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def data(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def push_bytes(self, b: bytes | bytearray | memoryview) -> None:
        self._buf += b

    def push_uint8(self, v: int) -> None:
        self._buf.append(v)

    def push_uint16(self, v: int) -> None:
        self._buf += v.to_bytes(2, "big")

    def push_uint24(self, v: int) -> None:
        self._buf += v.to_bytes(3, "big")

    def push_uint32(self, v: int) -> None:
        self._buf += v.to_bytes(4, "big")

    def push_uint48(self, v: int) -> None:
        self._buf += v.to_bytes(6, "big")

    def push_uint64(self, v: int) -> None:
        self._buf += v.to_bytes(8, "big")

    def push_opaque8(self, b: bytes) -> None:
        if len(b) > 0xFF:
            raise ValueError("opaque8 too long")
        self.push_uint8(len(b))
        self._buf += b

    def push_opaque16(self, b: bytes) -> None:
        if len(b) > 0xFFFF:
            raise ValueError("opaque16 too long")
        self.push_uint16(len(b))
        self._buf += b

    def push_opaque24(self, b: bytes) -> None:
        if len(b) > 0xFFFFFF:
            raise ValueError("opaque24 too long")
        self.push_uint24(len(b))
        self._buf += b

    @contextmanager
    def block(self, length_size: int) -> Iterator[Writer]:
        """Write a length prefix of ``length_size`` bytes, patched after the body."""
        start = len(self._buf)
        self._buf += bytes(length_size)
        yield self
        n = len(self._buf) - start - length_size
        if n >= 1 << (8 * length_size):
            raise ValueError("block too long for its length prefix")
        self._buf[start:start + length_size] = n.to_bytes(length_size, "big")
