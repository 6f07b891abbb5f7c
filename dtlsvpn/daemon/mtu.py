"""Debouncing the PMTU search's reports before they reach the TUN MTU and the data path.

DPLPMTUD (``dtls/pmtu.py``) reports every PLPMTU change: a search from BASE to a 1500-byte
path raises it five or six times within a second.  Setting the TUN MTU on each report
would make the kernel send ICMP "fragmentation needed" with each intermediate MTU to the
hosts behind a gateway (which cache it for ten minutes) and reconfigure the link for
nothing.  One ``MtuFollower`` per peer turns the reports into an *applied* inner MTU:

- **Lowering is immediate**: a report below the previous report *of the same
  association* is a measurement (black hole detected, a validated Packet Too Big) and is
  applied at once when it is below the applied value.
- **Raising waits** until the search settles: no new report for ``settle`` seconds, and
  at most ``max_hold`` seconds after the first held report, so a slow search still moves
  the MTU every few seconds.
- A report that **ends the search** (``PathMtuChanged.search_complete``: the search
  reached its ceiling or its resolution) is applied at once, up or down: no further
  report is coming to debounce, and holding it only kept the tunnel (and the MSS of
  every TCP connection opened meanwhile) at the start-up MTU for ``settle`` seconds.
- The **first report of an association** (BASE_PLPMTU, before any probe was answered;
  also after every reconnect or rekey) is a starting point, not a measurement: it is
  held like a raise, so a rekey does not dip the MTU to BASE for a second.

``applied`` is None until the first value settles; callers keep their start-up MTU
until then.  Nothing here reads a clock.
"""

from __future__ import annotations

MTU_SETTLE = 1.0  # seconds without a new report before a raise is applied
MTU_MAX_HOLD = 4.0  # a raise is held at most this long after the first held report


class MtuFollower:
    """Per-peer: PathMtuChanged reports in, an applied inner MTU out."""

    __slots__ = ("_held_since", "_last", "_source", "applied", "due", "max_hold", "settle",
                 "target")

    def __init__(self, *, settle: float = MTU_SETTLE, max_hold: float = MTU_MAX_HOLD) -> None:
        self.settle = settle
        self.max_hold = max_hold
        self.applied: int | None = None  # what the TUN MTU and the data path use
        self.target: int | None = None  # the latest report
        self.due: float | None = None  # when a held value is applied
        self._held_since: float | None = None
        self._source: object = None  # the association whose reports these are
        self._last: int | None = None

    def report(self, source: object, inner: int, now: float, *, final: bool = False) -> bool:
        """A PathMtuChanged from ``source`` (``final``: its ``search_complete``); True
        when ``applied`` changed now."""
        fresh = source is not self._source
        previous = None if fresh else self._last
        self._source = source
        self._last = inner
        self.target = inner
        applied = self.applied
        if inner == applied:
            self.due = self._held_since = None
            return False
        if final or (previous is not None and inner < previous
                     and (applied is None or inner < applied)):
            self.applied = inner
            self.due = self._held_since = None
            return True
        if self._held_since is None:
            self._held_since = now
        self.due = min(now + self.settle, self._held_since + self.max_hold)
        return False

    def poll(self, now: float) -> bool:
        """Apply a held value whose time came; True when ``applied`` changed."""
        if self.due is None or now < self.due:
            return False
        self.due = self._held_since = None
        if self.target == self.applied:
            return False
        self.applied = self.target
        return True

    def forget(self) -> None:
        """The association went away: its held report no longer counts."""
        self._source = None
        self._last = None
        self.due = self._held_since = None
        self.target = self.applied
