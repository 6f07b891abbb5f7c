"""Handshake message reassembly (RFC 6347 §4.2.3).

Fragments are keyed by ``message_seq`` (never by type alone: GnuTLS #1839).
For each message the type and total length are fixed by the first fragment
seen; later fragments that disagree are dropped (CVE-2014-0195).  Overlapping
fragments are fine: coverage is a sorted list of disjoint intervals, found by
bisect and merged with the neighbours a fragment touches, at most
``MAX_FRAGMENT_GAPS`` per message: a fragment that would open one more is
dropped (``buffer_full``), so 1-byte fragments at every other offset cost
O(log n) each, not a rebuild of the list.  A fragment touching what is covered
always merges, so a peer's retransmitted flight still completes the message.
Only ``next_receive_seq`` … ``next_receive_seq + MAX_FUTURE_MESSAGES`` are
buffered, every message is capped at ``MAX_HANDSHAKE_MESSAGE`` bytes and the
whole buffer at ``MAX_BUFFERED_HANDSHAKE_BYTES`` (CVE-2014-3506/3507,
CVE-2016-2179), charged by what is held: the bytes received (plus
``INTERVAL_COST`` per interval) until a quarter of the message arrived, the
declared length after (never the declared length of a message announced by one
byte).  When it is full, a message nearer in message_seq evicts partial
messages further ahead, so junk future fragments cannot starve the next message.
Zero-length fragments of non-empty messages are dropped
(CVE-2022-29190).  The loops are bounded and nothing recurses.

Every message handed out is remembered (``received``) so that an old
fragment can be told apart: one that repeats a received message byte for
byte means the peer re-sent its last flight (RFC 6347 §4.2.4), anything else
is stale (security.md S10).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from dtlsvpn.wire.constants import (
    MAX_BUFFERED_HANDSHAKE_BYTES,
    MAX_FUTURE_MESSAGES,
    MAX_HANDSHAKE_MESSAGE,
    HandshakeType,
)
from dtlsvpn.wire.handshake import HandshakeFragment

MAX_FRAGMENT_GAPS = 64  # disjoint covered intervals per message; one more is dropped
INTERVAL_COST = 128  # bytes charged per interval of a sparse message (objects, list slots)
DENSE_SHARE = 4  # a message gets its full-length buffer once 1/4 of it arrived


class _Partial:
    """One message being reassembled.

    Coverage is two sorted lists, ``starts`` and ``ends``, of disjoint [start, end)
    intervals with a gap of at least one byte between neighbours: a fragment that
    touches or overlaps intervals merges with them (bisect, then one slice
    assignment).  Bytes already covered keep what arrived first.

    Sparse until ``DENSE_SHARE`` of the message arrived: one bytearray per interval
    (``chunks``), so what is held is what was received, not the declared length.
    Dense after: one bytearray of the message's length (``body``) written in place.
    """

    __slots__ = ("body", "chunks", "ends", "length", "msg_type", "received", "starts")

    def __init__(self, msg_type: int, length: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.chunks: list[bytearray] | None = []  # sparse: one per interval
        self.body: bytearray | None = None  # dense: the whole message
        self.received = 0  # distinct bytes covered

    @property
    def held(self) -> int:
        """Bytes charged to the association's reassembly budget."""
        if self.chunks is None:
            return self.length
        return self.received + INTERVAL_COST * len(self.starts)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Indexes [i, j) of the intervals that [start, end) touches or overlaps."""
        i = bisect_left(self.ends, start)
        return i, bisect_right(self.starts, end, i)

    def cost(self, start: int, end: int, i: int, j: int) -> int | None:
        """What adding [start, end) costs the budget, or None over ``MAX_FRAGMENT_GAPS``."""
        if i == j and len(self.starts) >= MAX_FRAGMENT_GAPS:
            return None
        if self.chunks is None:
            return 0  # dense: the whole length is charged already
        new = end - start
        for k in range(i, j):
            new -= max(0, min(end, self.ends[k]) - max(start, self.starts[k]))
        return new + INTERVAL_COST * (1 - (j - i))

    def add(self, start: int, data: bytes, i: int, j: int) -> None:
        """Store ``data`` at ``start``; [i, j) is ``span(start, start + len(data))``."""
        end = start + len(data)
        starts, ends, chunks = self.starts, self.ends, self.chunks
        lo = min(start, starts[i]) if i < j else start
        hi = max(end, ends[j - 1]) if i < j else end
        if chunks is None:
            body = self.body
            assert body is not None
            pos = start
            for k in range(i, j):  # write only the gaps: first arrival wins
                if starts[k] > pos:
                    body[pos:starts[k]] = data[pos - start:starts[k] - start]
                    self.received += starts[k] - pos
                pos = max(pos, ends[k])
            if end > pos:
                body[pos:end] = data[pos - start:]
                self.received += end - pos
        else:
            if i < j and starts[i] <= start:
                buf, pos, first = chunks[i], ends[i], i + 1  # grow the left one in place
            else:
                buf, pos, first = bytearray(), start, i
            old = sum(ends[k] - starts[k] for k in range(i, j))
            for k in range(first, j):
                buf += data[pos - start:starts[k] - start]
                buf += chunks[k]
                pos = ends[k]
            if end > pos:
                buf += data[pos - start:]
            chunks[i:j] = [buf]
            self.received += (hi - lo) - old
        starts[i:j] = [lo]
        ends[i:j] = [hi]

    def densify(self) -> None:
        """Move the chunks into one buffer of the message's length."""
        assert self.chunks is not None
        if self.complete:
            self.body = self.chunks[0]  # no copy
        else:
            body = bytearray(self.length)
            for start, chunk in zip(self.starts, self.chunks, strict=True):
                body[start:start + len(chunk)] = chunk
            self.body = body
        self.chunks = None

    @property
    def complete(self) -> bool:
        return self.starts == [0] and self.ends == [self.length]

    def whole(self) -> bytes:
        """The complete message (a complete message is always dense: see ``add``)."""
        assert self.body is not None
        return bytes(self.body)


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
        start = frag.fragment_offset
        end = start + len(frag.body)
        if (not frag.body and frag.length) or end > frag.length:
            return "malformed"  # the parser refuses an overrun too (CVE-2014-0195)
        part = self._partials.get(seq)
        if part is None:
            part = _Partial(frag.msg_type, frag.length)
        elif part.msg_type != frag.msg_type or part.length != frag.length:
            return "malformed"  # RFC 6347 §4.2.3: same message, same type and length
        i, j = part.span(start, end)
        need = part.cost(start, end, i, j)
        if need is None:
            return "buffer_full"  # MAX_FRAGMENT_GAPS disjoint pieces already
        if (need > 0 and self._buffered + need > MAX_BUFFERED_HANDSHAKE_BYTES
                and not self._evict_after(seq, need)):
            return "buffer_full"
        self._partials[seq] = part
        part.add(start, frag.body, i, j)
        self._buffered += need
        # Dense once a quarter arrived, if the budget allows; a complete message holds
        # less dense (no INTERVAL_COST), so it always gets there.
        if part.chunks is not None and part.received * DENSE_SHARE >= part.length:
            extra = part.length - part.held
            if self._buffered + extra <= MAX_BUFFERED_HANDSHAKE_BYTES:
                part.densify()
                self._buffered += extra
        return None

    @property
    def buffered(self) -> int:
        """Bytes charged to the budget now (at most ``MAX_BUFFERED_HANDSHAKE_BYTES``)."""
        return self._buffered

    def _evict_after(self, seq: int, need: int) -> bool:
        """Make room for ``need`` bytes of message ``seq`` by dropping partial messages
        further in the future, furthest first: junk future fragments must not starve the
        message the handshake waits for.  False if there is still no room."""
        for later in sorted((s for s in self._partials if s > seq), reverse=True):
            if self._buffered + need <= MAX_BUFFERED_HANDSHAKE_BYTES:
                break
            self._buffered -= self._partials.pop(later).held
        return self._buffered + need <= MAX_BUFFERED_HANDSHAKE_BYTES

    def pop_ready(self) -> tuple[int, int, bytes] | None:
        """The next complete in-order message as (msg_type, message_seq, body)."""
        seq = self.next_receive_seq
        part = self._partials.get(seq)
        if part is None or not part.complete:
            return None
        del self._partials[seq]
        self._buffered -= part.held
        self.next_receive_seq = seq + 1
        body = part.whole()
        self.received[seq] = (part.msg_type, body)
        return part.msg_type, seq, body

    def clear(self) -> None:
        """Free every buffer (at handshake completion: CVE-2016-2179)."""
        self._partials.clear()
        self._buffered = 0
