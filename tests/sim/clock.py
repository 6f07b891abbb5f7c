"""FakeClock: the simulator's only notion of time.

Invariants: ``now`` (monotonic seconds) never goes backwards; ``wall`` is always
``epoch + now``, so calendar time (certificate validity, tickets) moves in step
with the monotonic clock and a test can pick the calendar date it needs.
Nothing here sleeps.
"""

from __future__ import annotations

import datetime

# 2025-06-01T00:00:00Z: inside the validity window of the test PKI.
DEFAULT_EPOCH = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC).timestamp()


class FakeClock:
    """Monotonic ``now`` starting at ``start``, and a wall view ``epoch + now``."""

    __slots__ = ("_now", "epoch")

    def __init__(self, start: float = 0.0, epoch: float = DEFAULT_EPOCH) -> None:
        self._now = start
        self.epoch = epoch

    @property
    def now(self) -> float:
        return self._now

    @property
    def wall(self) -> float:
        return self.epoch + self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and return the new ``now``."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards ({seconds})")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        """Jump to ``when`` if it is in the future; never move backwards."""
        if when > self._now:
            self._now = when
        return self._now
