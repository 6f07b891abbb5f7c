"""Handshake message reassembly (RFC 6347 §4.2.3).

Fragments are keyed by ``message_seq`` (never by type alone: GnuTLS #1839).
For each message the type and total length are fixed by the first fragment
seen; later fragments that disagree are dropped (CVE-2014-0195).  Overlapping
fragments are fine: coverage is tracked as a sorted list of intervals.  Only
``next_receive_seq`` … ``next_receive_seq + MAX_FUTURE_MESSAGES`` are
buffered, every message is capped at ``MAX_HANDSHAKE_MESSAGE`` bytes and the
whole buffer at ``MAX_BUFFERED_HANDSHAKE_BYTES`` (CVE-2014-3506/3507,
CVE-2016-2179); when it is full, a message nearer in message_seq evicts partial
messages further ahead, so junk future fragments cannot starve the next message.
Zero-length fragments of non-empty messages are dropped
(CVE-2022-29190).  The loops are bounded and nothing recurses.

Every message handed out is remembered (``received``) so that an old
fragment can be told apart: one that repeats a received message byte for
byte means the peer re-sent its last flight (RFC 6347 §4.2.4), anything else
is stale (security.md S10).
"""

from __future__ import annotations

from dataclasses import dataclass

from dtlsvpn.wire.constants import (
    MAX_BUFFERED_HANDSHAKE_BYTES,
    MAX_FUTURE_MESSAGES,
    MAX_HANDSHAKE_MESSAGE,
    HandshakeType,
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

    __slots__ = ("_buffered", "_partials", "next_receive_seq", "received")

    def __init__(self, next_receive_seq: int = 0) -> None:
        self.next_receive_seq = next_receive_seq
        self._partials: dict[int, _Partial] = {}
        self._buffered = 0
        self.received: dict[int, tuple[int, bytes]] = {}  # message_seq -> (type, body)

    def sort(
        self, frags: list[HandshakeFragment], *, client: bool
    ) -> tuple[bool, list[HandshakeFragment], int]:
        """Set apart the fragments of messages already handed out.

        Returns (one of them repeats a received message byte for byte, the
        fragments of current or future messages, how many old ones are stale).
        ``client``: a repeated HelloVerifyRequest counts as a repeat too.
        """
        repeat = False
        fresh: list[HandshakeFragment] = []
        stale = 0
        for frag in frags:
            if frag.message_seq >= self.next_receive_seq:
                fresh.append(frag)
            elif self.is_exact_repeat(frag, client=client):
                repeat = True
            else:
                stale += 1
        return repeat, fresh, stale

    def is_exact_repeat(self, frag: HandshakeFragment, *, client: bool) -> bool:
        """The fragment repeats, byte for byte, a message already handed out."""
        got = self.received.get(frag.message_seq)
        if got is None:
            # The client's first ClientHello's answer (HVR) is never stored: a
            # repeated HVR simply means the ClientHello got lost again.
            return client and frag.msg_type == HandshakeType.hello_verify_request
        got_type, got_body = got
        start = frag.fragment_offset
        return (got_type == frag.msg_type and len(got_body) == frag.length
                and got_body[start:start + len(frag.body)] == frag.body)

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
            if (self._buffered + frag.length > MAX_BUFFERED_HANDSHAKE_BYTES
                    and not self._evict_after(seq, frag.length)):
                return "buffer_full"
            part = _Partial(frag.msg_type, bytearray(frag.length), [])
            self._partials[seq] = part
            self._buffered += frag.length
        elif part.msg_type != frag.msg_type or len(part.body) != frag.length:
            return "malformed"  # RFC 6347 §4.2.3: same message, same type and length
        part.add(frag.fragment_offset, frag.body)
        return None

    def _evict_after(self, seq: int, need: int) -> bool:
        """Make room for ``need`` bytes of message ``seq`` by dropping partial messages
        further in the future, furthest first: junk future fragments must not starve the
        message the handshake waits for.  False if there is still no room."""
        for later in sorted((s for s in self._partials if s > seq), reverse=True):
            if self._buffered + need <= MAX_BUFFERED_HANDSHAKE_BYTES:
                break
            self._buffered -= len(self._partials.pop(later).body)
        return self._buffered + need <= MAX_BUFFERED_HANDSHAKE_BYTES

    def pop_ready(self) -> tuple[int, int, bytes] | None:
        """The next complete in-order message as (msg_type, message_seq, body)."""
        seq = self.next_receive_seq
        part = self._partials.get(seq)
        if part is None or not part.complete:
            return None
        del self._partials[seq]
        self._buffered -= len(part.body)
        self.next_receive_seq = seq + 1
        body = bytes(part.body)
        self.received[seq] = (part.msg_type, body)
        return part.msg_type, seq, body

    def clear(self) -> None:
        """Free every buffer (at handshake completion: CVE-2016-2179)."""
        self._partials.clear()
        self._buffered = 0
