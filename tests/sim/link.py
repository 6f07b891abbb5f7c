"""SimLink: one direction of a simulated UDP path.

A link takes a datagram at a send time and returns zero, one or two
``(arrival_time, bytes)`` deliveries.  Every impairment is drawn from the
link's own seeded :class:`random.Random`, in a fixed order per datagram, so a
run is reproducible from its seed.  The link never sleeps; the simulator owns
the clock and the delivery heap.

Knobs (all off by default):

``drop``        probability that a datagram is lost.
``duplicate``   probability that a delivered datagram arrives twice.
``reorder``     probability that a datagram gets an extra delay, uniform in
                ``[0, reorder_delay]``, so that later datagrams overtake it.
``delay``       base one-way delay in seconds.
``jitter``      extra uniform delay in ``[0, jitter]`` on every datagram.
``truncate``    probability that a datagram is cut at a random length.
``corrupt``     probability that one random byte is flipped (XOR 0xFF).
``mtu``         datagrams larger than this are dropped and counted (``oversize``).
``corrupt_where`` optional: the byte ranges ``[start, end)`` of a datagram that
                may be corrupted (e.g. encrypted records only: epoch-0
                handshake bytes have no integrity check in DTLS, UDP's
                checksum is what protects them on a real path).  A datagram
                with no eligible byte is left intact.
``tamper``      optional: an on-path actor, called with every datagram offered
                (before any other knob, and before the ``mtu`` check); it
                returns the bytes to carry on, or None to swallow the datagram
                (counted as ``tampered``, fate "tampered").  Tests use it to
                rewrite a ServerHello or ClientHello, or just to record traffic.

Every knob may be changed mid-run (e.g. ``link.mtu = 1252`` for a black hole,
``link.drop = 1.0`` to silence one direction); the next datagram sees it.

Every datagram offered to the link is recorded (time, size, fate), so tests
can assert the largest datagram ever sent against the path MTU.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SentDatagram:
    """One datagram offered to the link and what became of it."""

    time: float
    size: int
    fate: str  # "delivered", "dropped", "oversize", "tampered"


@dataclass(slots=True)
class LinkCounters:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    oversize: int = 0
    duplicated: int = 0
    reordered: int = 0
    truncated: int = 0
    corrupted: int = 0
    damaged: int = 0  # delivered datagrams that were truncated or corrupted (or both)
    tampered: int = 0  # datagrams swallowed by ``tamper``


@dataclass
class SimLink:
    """One direction of a path; see the module docstring for the knobs."""

    rng: random.Random
    name: str = "link"
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05
    delay: float = 0.01
    jitter: float = 0.0
    truncate: float = 0.0
    corrupt: float = 0.0
    mtu: int | None = None
    corrupt_where: Callable[[bytes], list[tuple[int, int]]] | None = None
    tamper: Callable[[bytes], bytes | None] | None = None
    counters: LinkCounters = field(default_factory=LinkCounters)
    history: list[SentDatagram] = field(default_factory=list)

    @property
    def max_size(self) -> int:
        """The largest datagram ever offered to this link (0 if none)."""
        return max((d.size for d in self.history), default=0)

    def _chance(self, probability: float) -> bool:
        # Always draw, so that turning one knob on does not shift the others' streams.
        return self.rng.random() < probability

    def _damage(self, data: bytes, cut: bool, flip: bool) -> bytes:
        """Truncate and/or corrupt a delivered datagram, as drawn."""
        c = self.counters
        cut = cut and len(data) > 1
        # Eligible bytes are chosen on the datagram as sent, before any cut.
        spots = [(0, len(data))] if self.corrupt_where is None else self.corrupt_where(data)
        if cut:
            c.truncated += 1
            data = data[: self.rng.randrange(1, len(data))]
        spots = [(a, min(b, len(data))) for a, b in spots if a < min(b, len(data))]
        flip = flip and bool(spots)
        if flip:
            c.corrupted += 1
            offset = self.rng.randrange(sum(b - a for a, b in spots))
            for a, b in spots:
                if offset < b - a:
                    pos = a + offset
                    break
                offset -= b - a
            data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]
        if cut or flip:
            c.damaged += 1
        return data

    def transmit(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        """Offer ``data`` at ``now``; return the deliveries it causes."""
        c = self.counters
        c.sent += 1
        if self.tamper is not None:
            changed = self.tamper(data)
            if changed is None:
                c.tampered += 1
                self.history.append(SentDatagram(now, len(data), "tampered"))
                return []
            data = changed
        if self.mtu is not None and len(data) > self.mtu:
            c.oversize += 1
            self.history.append(SentDatagram(now, len(data), "oversize"))
            return []
        lost = self._chance(self.drop)
        dup = self._chance(self.duplicate)
        late = self._chance(self.reorder)
        cut = self._chance(self.truncate)
        flip = self._chance(self.corrupt)
        if lost:
            c.dropped += 1
            self.history.append(SentDatagram(now, len(data), "dropped"))
            return []
        self.history.append(SentDatagram(now, len(data), "delivered"))
        data = self._damage(data, cut, flip)
        copies = 2 if dup else 1
        c.duplicated += copies - 1
        out: list[tuple[float, bytes]] = []
        for i in range(copies):
            when = now + self.delay
            if self.jitter:
                when += self.rng.uniform(0.0, self.jitter)
            if late and i == 0:
                c.reordered += 1
                when += self.rng.uniform(0.0, self.reorder_delay)
            out.append((when, data))
        c.delivered += copies
        return out
