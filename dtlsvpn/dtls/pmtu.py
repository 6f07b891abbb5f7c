"""Datagram PLPMTU discovery with heartbeat probes (RFC 8899, RFC 6520 §5.1), sans-I/O.

Theory of operation
-------------------
One :class:`Dplpmtud` per association and sending direction.  It decides which
probe sizes to send and when; the caller turns each :class:`Probe` into a
HeartbeatRequest whose *IP packet* is exactly ``probe.size`` bytes (payload
``probe.payload``, ``probe.padding`` random padding bytes), and feeds back the
HeartbeatResponses (``on_response``), kernel or ICMP hints (``path_hint``) and the
local MTU towards the peer when it changes (``local_mtu``).
``now`` is monotonic seconds passed in; nothing here reads a clock.

Units: PLPMTU is the IP packet size (outer IP header + UDP 8 + DTLS record).
``inner_mtu = plpmtu - ip_header - 8 - record_overhead`` is the largest inner
packet one record carries, i.e. the TUN device's MTU; ``record_overhead`` is
13 (record header) + the suite's AEAD overhead + the CID length.

States (RFC 8899 §5.2)::

    DISABLED ──enable──► BASE ──base acked──► SEARCHING ──done──► SEARCH_COMPLETE
                          │  ▲                  ▲   │                 │  │
     MAX_PROBES lost ─────┘  └── black hole ────┼───┼─────────────────┘  │
                          ▼                     │   └── PMTU_RAISE_TIMER ┘ (back to SEARCHING)
                        ERROR ──a probe acked───┘

- BASE: probe BASE_PLPMTU; acked → SEARCHING; MAX_PROBES lost → ERROR.
- SEARCHING: probe larger sizes (below); done → SEARCH_COMPLETE when the
  smallest size that failed MAX_PROBES times is within ``granularity`` of the
  PLPMTU, or MAX_PLPMTU (or the hinted cap) is acked (RFC 8899 §5.2, §5.3.1),
  checked at the ack itself: the change that ends the search finds it complete.
- SEARCH_COMPLETE: every ``confirm_interval`` (the CONFIRMATION_TIMER of RFC
  8899 §5.1.1) the PLPMTU itself is re-probed; MAX_PROBES consecutive losses
  are a black hole → BASE with PLPMTU = BASE_PLPMTU (RFC 8899 §5.2), then a
  new search that first stops at the size that stopped working (counted as
  one loss, so a false alarm under random loss only costs a dip).  After
  ``raise_timer`` (PMTU_RAISE_TIMER, 600 s) the search resumes upward.
- ERROR: BASE_PLPMTU is not supported: the PLPMTU reported is MIN_PLPMTU and
  a probe (MIN_PLPMTU, or a hinted size) is retried every ``confirm_interval``;
  once one is acked, SEARCHING resumes from it.
- DISABLED: no probing (the caller says the peer is unreachable); ``enable``
  goes to BASE.

Probing rules
- RFC 6520 §3: there MUST NOT be more than one HeartbeatRequest in flight:
  one probe at a time, and ``blocked=True`` while the liveness request
  (:mod:`dtlsvpn.dtls.heartbeat`) is in flight; see that module for the
  caller's arbitration.  A probe is in flight until answered or until the
  PROBE_TIMER expires, when it counts as lost (PROBE_COUNT += 1).  A late or
  duplicated response no longer matches and is dropped (RFC 6520 §4).
- RFC 8899 §5.1.1: the PROBE_TIMER MUST NOT be smaller than 1 second
  (enforced) and must outlast an acknowledgment: it is
  ``max(probe_timer, 3 * srtt)``.  The RFC's SHOULD of 15 s is not followed:
  a VPN wants its MTU within seconds, and one probe in flight keeps the load
  negligible.
- RFC 8899 §3 (7): probes not paced by a congestion controller MUST be at
  least one RTT apart: the next probe waits for ``sent + srtt``.
- A lost probe proves nothing about liveness and is never reported as such
  (RFC 8899 §3 (4): the PL is robust to probe loss from other causes, and
  (7): probe loss SHOULD NOT count as congestion): probes have their own
  payloads, and only the caller's ``note_rx`` on the liveness machine counts.
- Search order (RFC 8899 §5.3.2): see :mod:`dtlsvpn.dtls.pmtu_settings`.
  PROBE_COUNT is kept per probed size: a size counts as too large after
  MAX_PROBES losses (RFC 8899 §5.1.2: MAX_PROBES > 1 gives robustness to
  isolated loss), not after MAX_PROBES losses of different sizes, which would
  end a search that steps down after each loss far too early.  Until then it
  is re-probed whenever the acked size comes within ``granularity`` of it,
  and an ack at or above it clears it.  Once the path has lost probes of
  sizes that later got through (random loss), the limit grows by up to 2, for
  sizes and for black-hole detection alike, until no such loss was seen for
  ``LOSS_MEMORY`` (120 s): three random losses in a row (1e-3 at 10 % loss,
  per size probed) would otherwise end a search early.
  The result is never above a size that was acked last, and within
  ``granularity`` below the largest size that works.
- Hints (RFC 8899 §4.6): a validated PTB / IP_MTU / EMSGSIZE size MUST NOT be
  used directly to set the PLPMTU (RFC 8899 §4.6.2), nor to increase it (RFC
  8899 §3 (6)).  Validating a PTB against the packet it quotes is the
  caller's job (RFC 8899 §3 (6) MUST).  A hint below MIN_PLPMTU is ignored.
  A hint at or above the PLPMTU only caps the search until the next raise
  timer (the kernel's IP_MTU really bounds what it sends) and is probed
  next; it never raises anything.  A hint below the
  PLPMTU is a possible black hole: the PLPMTU drops to BASE_PLPMTU (RFC 8899
  §4.6.2 SHOULD; MIN_PLPMTU and ERROR when the hint is below BASE), the hint
  is probed first, and the old PLPMTU is re-probed, so a forged hint costs a
  short dip, not a lasting loss.

Outputs: ``poll(now, blocked=)`` → :class:`Probe` or None, ``get_timer(blocked=)``,
``pop_changes()`` → ``[(plpmtu, inner_mtu), ...]`` on every PLPMTU change
(not for the initial value: read ``plpmtu``/``inner_mtu`` after construction),
``state``, ``plpmtu``, ``inner_mtu``, ``in_flight``, ``srtt``.  Settings, probes and
the search step live in :mod:`dtlsvpn.dtls.pmtu_settings`.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable

from dtlsvpn.dtls.pmtu_settings import (
    COMMON_PLPMTUS,
    IPV4_MIN_MTU,
    IPV6_MIN_MTU,
    LOSS_MEMORY,
    MAX_COST_RATIO,
    PROBE_PAYLOAD_LEN,
    UDP_HEADER,
    PmtuSettings,
    Probe,
    search_step,
)
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.heartbeat import HEADER_LEN, MAX_HEARTBEAT_LEN, MIN_PADDING

__all__ = [
    "COMMON_PLPMTUS", "PROBE_PAYLOAD_LEN", "Dplpmtud", "PmtuSettings", "PmtuState",
    "Probe", "search_step",
]


class PmtuState(enum.Enum):
    """RFC 8899 §5.2 states."""

    DISABLED = "DISABLED"
    BASE = "BASE"
    SEARCHING = "SEARCHING"
    SEARCH_COMPLETE = "SEARCH_COMPLETE"
    ERROR = "ERROR"


class Dplpmtud:
    """RFC 8899 DPLPMTUD for one path; see the module docstring."""

    __slots__ = (
        "_base", "_changes", "_counter", "_edges", "_epoch", "_error_size", "_fails", "_hi",
        "_hint_cap", "_hint_next", "_limit", "_lo", "_max", "_min", "_next_at", "_overhead",
        "_plateaus", "_plpmtu", "_probe", "_probe_count", "_probe_deadline", "_probe_epoch",
        "_probe_sent", "_raise_at", "_random_bytes", "_refuted", "_refuted_until", "_srtt",
        "_state", "_unconfirmed", "settings",
    )

    def __init__(
        self,
        settings: PmtuSettings,
        *,
        ip_header: int,
        record_overhead: int,
        now: float,
        random_bytes: Callable[[int], bytes],
        interface_mtu: int | None = None,
        rtt: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.settings = settings
        self._random_bytes = random_bytes
        self._overhead = ip_header + UDP_HEADER + record_overhead
        floor = IPV6_MIN_MTU if ip_header >= 40 else IPV4_MIN_MTU
        self._min = max(settings.min_plpmtu, floor)
        self._base = max(settings.base_plpmtu, self._min)
        largest = self._overhead + MAX_HEARTBEAT_LEN  # RFC 6520 §4: at most 2^14 plaintext
        self._limit = min(settings.max_plpmtu, largest)  # MAX_PLPMTU whatever the local MTU
        top = self._limit
        for local in (interface_mtu, settings.local_mtu):
            if local is not None:
                top = min(top, local)
        if top < self._base:
            raise UsageError(f"max PLPMTU {top} is below BASE_PLPMTU {self._base}")
        if self._plaintext(self._min) < HEADER_LEN + PROBE_PAYLOAD_LEN + MIN_PADDING:
            raise UsageError("MIN_PLPMTU leaves no room for a heartbeat probe")
        self._set_max(top)
        self._plpmtu = self._base
        self._changes: list[tuple[int, int]] = []
        self._counter = 0
        self._epoch = 0
        self._srtt: float | None = rtt if rtt is not None and rtt > 0 else None
        self._probe: Probe | None = None
        self._probe_sent = 0.0
        self._probe_deadline = 0.0
        self._probe_epoch = 0
        self._probe_count = 0
        self._next_at = now
        self._raise_at = 0.0
        self._hint_cap: int | None = None
        self._hint_next: int | None = None
        self._error_size = self._min
        self._lo = self._base
        self._hi = self._max + 1
        self._fails: dict[int, int] = {}
        self._refuted = 0
        self._refuted_until = 0.0
        self._state = PmtuState.DISABLED
        self._unconfirmed = False
        if enabled:
            self._enter_base(now)

    # -- properties ----------------------------------------------------------

    @property
    def state(self) -> PmtuState:
        return self._state

    @property
    def plpmtu(self) -> int:
        """The PLPMTU in use (IP packet size)."""
        return self._plpmtu

    @property
    def inner_mtu(self) -> int:
        """Largest inner packet one record carries at the current PLPMTU."""
        return self._plaintext(self._plpmtu)

    @property
    def max_plpmtu(self) -> int:
        return self._max

    @property
    def unconfirmed(self) -> bool:
        """The PLPMTU awaits its confirmation on a new path (sent even while idle)."""
        return self._unconfirmed

    @property
    def in_flight(self) -> bool:
        """True while a probe awaits its response or its PROBE_TIMER."""
        return self._probe is not None

    @property
    def in_flight_probe(self) -> Probe | None:
        """The probe awaiting its response, if any."""
        return self._probe

    @property
    def srtt(self) -> float | None:
        """Smoothed probe round-trip time, once a probe was answered."""
        return self._srtt

    @property
    def probe_timer(self) -> float:
        """PROBE_TIMER in use: the configured one (>= 1 s), at least 3 smoothed RTTs
        (RFC 8899 §5.1.1: longer than the time an acknowledgment can take)."""
        if self._srtt is None:
            return self.settings.probe_timer
        return max(self.settings.probe_timer, 3.0 * self._srtt)

    def plaintext_size(self, size: int) -> int:
        """Record plaintext bytes that make an IP packet of ``size`` bytes."""
        return self._plaintext(size)

    def pop_changes(self) -> list[tuple[int, int]]:
        """``(plpmtu, inner_mtu)`` for each PLPMTU change since the last call."""
        changes, self._changes = self._changes, []
        return changes

    # -- inputs --------------------------------------------------------------

    def enable(self, now: float) -> None:
        """Connectivity to the peer (again): leave DISABLED for BASE (RFC 8899 §5.2)."""
        if self._state is PmtuState.DISABLED:
            self._hi = self._max + 1
            self._fails = {}
            self._hint_cap = None
            self._hint_next = None
            self._refuted = 0
            self._refuted_until = 0.0
            self._enter_base(now)

    def disable(self) -> None:
        """The peer is unreachable: stop probing (RFC 8899 §5.2 DISABLED)."""
        self._state = PmtuState.DISABLED
        self._epoch += 1
        self._probe = None

    def abandon_probe(self) -> None:
        """The probe in flight left on a path we have just left (our address changed):
        forget it, counted neither acked nor lost, so that another request may go
        (RFC 6520 §3); its late response no longer matches and is dropped."""
        self._probe = None

    def on_response(self, payload: bytes, now: float) -> bool:
        """A HeartbeatResponse payload: True when it answers the probe in flight."""
        probe = self._probe
        if probe is None or not hmac.compare_digest(payload, probe.payload):
            return False  # RFC 6520 §4: not the expected payload, discard silently
        self._probe = None  # RFC 6520 §4: the expected payload stops the timer
        sample = max(now - self._probe_sent, 0.0)
        self._srtt = sample if self._srtt is None else 0.875 * self._srtt + 0.125 * sample
        if self._probe_epoch == self._epoch:
            self._on_probe_acked(probe.size, now)
        return True

    def path_hint(self, mtu: int, now: float) -> None:
        """A validated PTB size, the kernel's IP_MTU, or the size that got EMSGSIZE."""
        if self._state is PmtuState.DISABLED or mtu < self._min:
            return  # RFC 8899 §4.6.2: PL_PTB_SIZE < MIN_PLPMTU is invalid, discard
        if mtu >= self._plpmtu:
            # Never trusted to raise the PLPMTU: it only caps the search
            # (RFC 8899 §4.6.2: MUST NOT be used directly to set the PLPMTU).
            self._hint_cap = mtu if self._hint_cap is None else min(self._hint_cap, mtu)
            for size in [s for s in self._fails if s > mtu]:
                del self._fails[size]
            if mtu > self._plpmtu:
                self._hint_next = mtu  # RFC 8899 §4.6.2: the next search point
                if self._state is PmtuState.ERROR and mtu < self._base:
                    self._error_size = mtu
            elif self._state is PmtuState.SEARCHING:
                # RFC 8899 §5.2: PTB with PL_PTB_SIZE = PLPMTU completes the search.
                self._enter_complete(now)
            return
        # BASE_PLPMTU <= PL_PTB_SIZE < PLPMTU: maybe a black hole (RFC 8899 §4.6.2).
        if self._probe is not None and self._probe.size > mtu:
            self._probe = None  # too big for the hint: lost, so the hinted size goes now
        old = self._plpmtu
        self._epoch += 1
        self._hi = self._max + 1
        self._fails = {old: 1}  # re-probed later: a forged hint only costs a dip
        self._hint_next = mtu
        self._probe_count = 0
        if mtu >= self._base:
            # RFC 8899 §4.6.2: the PLPMTU SHOULD be set to BASE_PLPMTU, then search.
            self._state = PmtuState.SEARCHING
            self._lo = self._base
            self._set_plpmtu(self._base)
        else:
            # RFC 8899 §4.6.2: MIN_PLPMTU < PL_PTB_SIZE < BASE_PLPMTU MAY enter ERROR.
            self._state = PmtuState.ERROR
            self._error_size = mtu
            self._set_plpmtu(self._min)
        self._next_at = now

    def local_mtu(self, mtu: int, now: float, *, new_path: bool = False) -> None:
        """The local MTU towards the peer changed (a connected socket's ``IP_MTU``: an
        interface's or a route's MTU).  MAX_PLPMTU follows it both ways (RFC 8899
        §5.3.1, never above ``max_plpmtu`` nor below BASE_PLPMTU).  Below the PLPMTU it
        is also a hint (``path_hint``: the search drops and finds the new size).  Above
        a search that ended at the old ceiling, the search resumes upward at once
        instead of at the raise timer; what it finds is confirmed by probes, so a wrong
        reading costs probes, never a PLPMTU the path does not carry.  ``new_path``: the
        peer or we moved (an RFC 9146 move, a rebind): what hints and lost probes said
        of the old path is forgotten, the search resumes upward from the PLPMTU, or
        the PLPMTU, unconfirmed on this path, is probed at once, even while idle."""
        old = self._max
        new = max(self._base, min(self._limit, mtu))
        self._set_max(new)
        if new_path:
            self._hint_cap = self._hint_next = None
            self._fails = {}
        if new_path or self._hi > new + 1 or self._hi == old + 1:
            self._hi = new + 1  # (``max + 1``: no size above the PLPMTU known to fail)
        done = self._state is PmtuState.SEARCH_COMPLETE
        if self._state is not PmtuState.DISABLED and mtu < self._plpmtu:
            self.path_hint(max(mtu, self._min), now)  # (below MIN: ERROR, probing MIN)
        elif new > old or new_path:
            self._hint_cap = None  # (the new reading is the fresher bound)
            if done and self._plpmtu < new and (self._plpmtu >= old or new_path):
                self._start_search(now, self._plpmtu, reset_bounds=True)
            elif done and new_path:
                self._unconfirmed, self._next_at = True, now
        self._fails = {s: n for s, n in self._fails.items() if s <= new}

    def handle_timer(self, now: float) -> None:
        """Process expiries: a lost probe, the PMTU_RAISE_TIMER."""
        probe = self._probe
        if probe is not None and now >= self._probe_deadline:
            self._probe = None  # RFC 6520 §3: no longer in flight once its timer expired
            if self._probe_epoch == self._epoch:
                self._on_probe_lost(probe.size, now)
        if (
            self._probe is None
            and self._state is PmtuState.SEARCH_COMPLETE
            and now >= self._raise_at
        ):
            # RFC 8899 §5.2: PMTU_RAISE_TIMER expiry re-enters SEARCHING.
            self._start_search(now, self._plpmtu, reset_bounds=True)

    # -- outputs -------------------------------------------------------------

    def poll(self, now: float, *, blocked: bool = False) -> Probe | None:
        """The probe to send now, or None.  ``blocked``: another request is in flight."""
        self.handle_timer(now)
        if blocked or self._probe is not None or now < self._ready_at():
            return None
        size = self._choose(now)
        if size is None:
            return None
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        payload = self._counter.to_bytes(4, "big") + self._random_bytes(PROBE_PAYLOAD_LEN - 4)
        probe = Probe(size, payload, self._plaintext(size) - HEADER_LEN - PROBE_PAYLOAD_LEN)
        self._probe = probe
        self._probe_sent = now
        self._probe_deadline = now + self.probe_timer
        self._probe_epoch = self._epoch
        return probe

    def get_timer(self, *, blocked: bool = False) -> float | None:
        """The next time ``poll``/``handle_timer`` has something to do."""
        if self._probe is not None:
            return self._probe_deadline
        if self._state is PmtuState.DISABLED:
            return None
        if self._state is PmtuState.SEARCH_COMPLETE:
            return self._raise_at if blocked else min(self._ready_at(), self._raise_at)
        return None if blocked else self._ready_at()

    # -- transitions ---------------------------------------------------------

    def _plaintext(self, size: int) -> int:
        return size - self._overhead

    def _ready_at(self) -> float:
        # RFC 8899 §3 (7): probes at least one RTT apart.
        if self._srtt is None:
            return self._next_at
        return max(self._next_at, self._probe_sent + self._srtt)

    def _set_max(self, size: int) -> None:
        self._max = size
        table = {p for p in self.settings.plateaus if p < size} | {size}
        self._plateaus = tuple(sorted(table))
        self._edges = frozenset(self._plateaus) | {self._base, self._min}

    def _set_plpmtu(self, size: int) -> None:
        if size != self._plpmtu:
            self._plpmtu = size
            self._changes.append((size, self._plaintext(size)))

    def _enter_base(self, now: float) -> None:
        # RFC 8899 §5.2 BASE: PROBED_SIZE = BASE_PLPMTU, PROBE_COUNT = 0.
        self._state = PmtuState.BASE
        self._unconfirmed = False
        self._epoch += 1
        self._probe_count = 0
        self._set_plpmtu(self._base)
        self._next_at = now

    def _start_search(self, now: float, lo: int, *, reset_bounds: bool) -> None:
        """Enter SEARCHING from ``lo``; the bounds are kept unless ``reset_bounds``."""
        self._state = PmtuState.SEARCHING
        self._epoch += 1
        self._probe_count = 0
        self._lo = lo
        if reset_bounds:
            self._hi = self._max + 1
            self._fails = {}
            self._hint_cap = None
            self._hint_next = None
        else:
            if self._hi <= lo:
                self._hi = self._max + 1
            for s in [s for s in self._fails if s <= lo]:
                del self._fails[s]
                self._note_refuted(now)
            if self._hint_next is not None and self._hint_next <= lo:
                self._hint_next = None
        self._set_plpmtu(lo)
        self._next_at = now

    def _enter_complete(self, now: float) -> None:
        self._state = PmtuState.SEARCH_COMPLETE
        self._unconfirmed = False
        self._epoch += 1
        self._probe_count = 0
        self._next_at = now + self.settings.confirm_interval
        self._raise_at = now + self.settings.raise_timer

    def _note_refuted(self, now: float) -> None:
        """A size that was lost later got through: the path loses packets at random."""
        self._refuted = min(self._refuted + 1, 2)
        self._refuted_until = now + LOSS_MEMORY

    def _loss_limit(self, now: float) -> int:
        """Losses that make a size too large: MAX_PROBES, plus up to 2 while this
        path recently lost probes of sizes later acked (random loss, not the MTU)."""
        if now >= self._refuted_until:
            self._refuted = 0
        return self.settings.max_probes + self._refuted

    def _on_probe_acked(self, size: int, now: float) -> None:
        self._unconfirmed = False
        state = self._state
        if self._probe_count and state is not PmtuState.SEARCHING:
            self._note_refuted(now)  # the size lost (BASE or PLPMTU) just got through
        self._probe_count = 0
        if state is PmtuState.BASE or state is PmtuState.ERROR:
            # RFC 8899 §5.2: an acked BASE (or ERROR) probe leads to SEARCHING.
            self._start_search(now, size, reset_bounds=False)
        elif state is PmtuState.SEARCHING:
            if size > self._lo:
                self._lo = size
                for s in [s for s in self._fails if s <= size]:
                    del self._fails[s]
                    self._note_refuted(now)
                if size >= self._hi:
                    self._hi = self._max + 1
                self._set_plpmtu(size)
            if self._hint_next is not None and self._hint_next <= self._lo:
                self._hint_next = None
            self._next_at = now
            if self._search_candidate() is None:  # (now, not at a poll an SRTT later)
                self._enter_complete(now)
        elif state is PmtuState.SEARCH_COMPLETE:
            # RFC 8899 §5.2: CONFIRMATION_TIMER resets PROBE_COUNT, PLPMTU still good.
            self._next_at = now + self.settings.confirm_interval

    def _on_probe_lost(self, size: int, now: float) -> None:
        self._probe_count += 1
        state = self._state
        max_probes = self.settings.max_probes
        if state is PmtuState.BASE:
            if self._probe_count >= max_probes:
                # RFC 8899 §5.2: BASE_PLPMTU not confirmed after MAX_PROBES → ERROR.
                self._state = PmtuState.ERROR
                self._epoch += 1
                self._probe_count = 0
                self._error_size = self._min
                self._hi = min(self._hi, self._base)
                self._set_plpmtu(self._min)
            self._next_at = now
        elif state is PmtuState.ERROR:
            self._error_size = self._min
            self._next_at = now + self.settings.confirm_interval
        elif state is PmtuState.SEARCHING:
            count = self._fails.get(size, 0) + 1
            if count >= self._loss_limit(now):
                self._hi = min(self._hi, size)
                for s in [s for s in self._fails if s >= size]:
                    del self._fails[s]
            else:
                self._fails[size] = count
            if self._hint_next == size:
                self._hint_next = None
            # RFC 8899 §5.3.1: MAX_PROBES consecutive losses end the search.  The
            # count is kept per PROBED_SIZE (a step down to another size starts a
            # new count): MAX_PROBES losses at one size make it the upper bound,
            # and the search ends when that bound is within the granularity.
            self._next_at = now
        elif state is PmtuState.SEARCH_COMPLETE:
            if self._probe_count >= self._loss_limit(now):
                # RFC 8899 §5.2: MAX_PROBES lost PLPMTU probes = black hole → BASE.
                old = self._plpmtu
                self._enter_base(now)
                # The lost size is where the new search stops first; it counts as one
                # loss only, so a false alarm under random loss costs a dip, not the MTU.
                self._hi = self._max + 1
                self._fails = {old: 1} if old > self._base else {}
            else:
                self._next_at = now  # confirm again at once, not after the interval

    # -- size selection ------------------------------------------------------

    def _choose(self, now: float) -> int | None:
        state = self._state
        if state is PmtuState.BASE:
            return self._base
        if state is PmtuState.ERROR:
            return self._error_size
        if state is PmtuState.SEARCH_COMPLETE:
            return self._plpmtu
        if state is PmtuState.SEARCHING:
            size = self._search_candidate()
            if size is None:
                self._enter_complete(now)
            return size
        return None

    def _search_candidate(self) -> int | None:
        g = self.settings.granularity
        lo = self._lo
        upper = self._max if self._hint_cap is None else min(self._max, self._hint_cap)
        if lo >= upper:
            return None  # MAX_PLPMTU (or the hinted cap) acked
        if self._hi - lo <= g:
            # Resolution reached; a ceiling (MAX_PLPMTU, the interface's or hinted MTU)
            # within it and not known to fail gets its probe: the search would otherwise
            # end up to granularity - 1 bytes below a ceiling that works.
            return upper if upper < self._hi else None
        soft = min(self._fails) if self._fails else None
        if soft is not None and soft - lo <= g:
            return soft  # accumulate MAX_PROBES losses before believing it
        bound = self._hi if soft is None else min(self._hi, soft)
        top = min(bound - 1, upper)
        if top <= lo:
            return None
        hint = self._hint_next
        if hint is not None and lo < hint <= top:
            return hint
        if lo in self._edges and lo + g <= top:
            return lo + g
        nxt = next((p for p in self._plateaus if lo < p <= top), None)
        ratio = self._cost_ratio()
        if nxt is not None:
            walk = g * max(1, ratio // 2)
            return min(lo + g, nxt) if nxt - lo <= walk else nxt
        width = -(-(bound - lo) // g)
        return min(lo + g * search_step(width, ratio), top)

    def _cost_ratio(self) -> int:
        if self._srtt is None or self._srtt <= 0:
            return 1
        # Capped: on a very fast path (loopback, a LAN) the time-optimal search would
        # walk in granularity steps, hundreds of probes and PathMtuChanged events for
        # a gain of milliseconds.
        return max(1, min(MAX_COST_RATIO, int(self.probe_timer / self._srtt)))
