"""Handshake message reassembly (RFC 6347 §4.2.3).

Fragments are keyed by ``message_seq`` (never by type alone: GnuTLS #1839).
For each message the type and total length are fixed by the first fragment
seen; later fragments that disagree are dropped (CVE-2014-0195).  Overlapping
fragments are fine: coverage is tracked as a sorted list of intervals.  Only
``next_receive_seq`` … ``next_receive_seq + MAX_FUTURE_MESSAGES`` are
buffered, every message is capped at ``MAX_HANDSHAKE_MESSAGE`` bytes and the
whole buffer at ``MAX_BUFFERED_HANDSHAKE_BYTES`` (CVE-2014-3506/3507,
CVE-2016-2179).  Zero-length fragments of non-empty messages are dropped
(CVE-2022-29190).  The loops are bounded and nothing recurses.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtlsvpn.wire.constants import (
    MAX_BUFFERED_HANDSHAKE_BYTES,
    MAX_FUTURE_MESSAGES,
    MAX_HANDSHAKE_MESSAGE,
)
from dtlsvpn.wire.handshake import HandshakeFragment


@dataclass(slots=True)
class _Partial:
    msg_type: int
    body: bytearray
    covered: list[tuple[int, int]]  # disjoint, sorted [start, end) intervals

    def add(self, start: int, data: bytes) -> None:
        end = start + len(data)
        self.body[start:end] = data
        merged: list[tuple[int, int]] = []
        for a, b in self.covered:
            if b < start or a > end:
                merged.append((a, b))
            else:
                start, end = min(a, start), max(b, end)
        merged.append((start, end))
        merged.sort()
        self.covered = merged

    @property
    def complete(self) -> bool:
        return self.covered == [(0, len(self.body))]


class Reassembler:
    """Collects fragments and yields whole messages in message_seq order."""

    __slots__ = ("_buffered", "_partials", "next_receive_seq")

    def __init__(self, next_receive_seq: int = 0) -> None:
        self.next_receive_seq = next_receive_seq
        self._partials: dict[int, _Partial] = {}
        self._buffered = 0

    def add(self, frag: HandshakeFragment) -> str | None:
        """Store a fragment of a current or future message.

        Returns None when stored (or harmlessly redundant), or a drop reason
        (``"buffer_full"`` or ``"malformed"``) for the caller to count.  Old
        messages (``message_seq < next_receive_seq``) are the caller's business.
        """
        seq = frag.message_seq
        if seq >= self.next_receive_seq + MAX_FUTURE_MESSAGES:
            return "buffer_full"
        if frag.length > MAX_HANDSHAKE_MESSAGE:
            return "buffer_full"
        if not frag.body and frag.length:
            return "malformed"
        part = self._partials.get(seq)
        if part is None:
            if self._buffered + frag.length > MAX_BUFFERED_HANDSHAKE_BYTES:
                return "buffer_full"
            part = _Partial(frag.msg_type, bytearray(frag.length), [])
            self._partials[seq] = part
            self._buffered += frag.length
        elif part.msg_type != frag.msg_type or len(part.body) != frag.length:
            return "malformed"  # RFC 6347 §4.2.3: same message, same type and length
        part.add(frag.fragment_offset, frag.body)
        return None

    def pop_ready(self) -> tuple[int, int, bytes] | None:
        """The next complete in-order message as (msg_type, message_seq, body)."""
        seq = self.next_receive_seq
        part = self._partials.get(seq)
        if part is None or not part.complete:
            return None
        del self._partials[seq]
        self._buffered -= len(part.body)
        self.next_receive_seq = seq + 1
        return part.msg_type, seq, bytes(part.body)

    def clear(self) -> None:
        """Free every buffer (at handshake completion: CVE-2016-2179)."""
        self._partials.clear()
        self._buffered = 0
