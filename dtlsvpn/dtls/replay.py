"""RFC 6347 §4.1.2.6 anti-replay sliding window.

The window is a Python int used as a bitmask: bit ``i`` set means that
sequence number ``top - i`` has been seen.  ``check`` only looks; ``commit``
moves the window and must be called only after the record authenticated
(CVE-2016-2181: a forged record must not move the window).  A sequence number far
ahead of ``top`` (the peer chooses it, up to 2^48 - 1) empties the window in constant
time and memory.
"""

from __future__ import annotations

WINDOW_SIZE = 128  # RFC 6347 §4.1.2.6: at least 32, 64 preferred; we keep more for reordering
_MASK = (1 << WINDOW_SIZE) - 1


class ReplayWindow:
    __slots__ = ("bits", "top")

    def __init__(self) -> None:
        self.top = -1  # highest authenticated sequence number
        self.bits = 0

    def check(self, seq: int) -> bool:
        """True when ``seq`` is new and inside (or right of) the window."""
        if seq > self.top:
            return True
        offset = self.top - seq
        if offset >= WINDOW_SIZE:
            return False
        return not (self.bits >> offset) & 1

    def commit(self, seq: int) -> None:
        """Mark ``seq`` as received; call only after authentication."""
        if seq > self.top:
            shift = seq - self.top
            # A jump past the window leaves only ``seq`` in it.  Shifting by the jump
            # itself would build an int of up to 2^48 bits from one authenticated record.
            self.bits = (((self.bits << shift) | 1) & _MASK) if shift < WINDOW_SIZE else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)
