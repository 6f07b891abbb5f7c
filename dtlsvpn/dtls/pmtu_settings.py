"""DPLPMTUD settings, probes and probe sizing (RFC 8899), apart from the state machine.

:class:`PmtuSettings` holds the RFC 8899 §5.1.1/§5.1.2 constants, validated
once; :class:`Probe` is what the machine (:mod:`dtlsvpn.dtls.pmtu`) asks the
caller to send; :func:`search_step` is the pure arithmetic behind the search
order below.  Sizes are IP packet sizes throughout.

Search order (RFC 8899 §5.3.2: sizes SHOULD maximise the gain per step;
common sizes MAY come from a table).  A success costs one RTT, a failure a
whole probe timer, so failures are what to avoid:
  1. a hinted size (PTB/IP_MTU) inside the open range is probed first;
  2. after a table size (``plateaus``, plus BASE_PLPMTU and MAX_PLPMTU) is
     acked, size + granularity is probed, so a path whose MTU is a common
     size fails exactly once at its edge;
  3. the next table size is probed directly when it is further than a walk
     of ``granularity`` steps would cost in RTTs (half a probe timer's worth),
     else the sizes up to it are walked in ``granularity`` steps;
  4. between an acked size and a failed one with no table size in between,
     the step is chosen by the worst-case-optimal asymmetric search (cost 1
     per acked probe, ``probe_timer / srtt`` per lost one), which is binary
     search when RTT ≈ timer and a walk when failures are expensive.
(Which sizes count as failed, and for how long, is the machine's business.)

Configuration notes: for IPv6 (``ip_header >= 40``) MIN_PLPMTU and
BASE_PLPMTU are raised to 1280 (RFC 8899 §5.1.2, RFC 8200).  For an IPv4
path that may be smaller than 1200, set ``min_plpmtu`` down to 576 (the
size every IPv4 host reassembles, RFC 1122 §3.3.3); with ``base_plpmtu``
left at 1200 such a path is found through ERROR (three lost base probes
first), with ``base_plpmtu = min_plpmtu = 576`` it is found directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtlsvpn.errors import UsageError

UDP_HEADER = 8
IPV4_MIN_MTU = 68  # RFC 8899 §5.1.2 / RFC 791: smallest IPv4 MTU
IPV6_MIN_MTU = 1280  # RFC 8200 §5
PROBE_PAYLOAD_LEN = 16
MIN_PROBE_TIMER = 1.0  # RFC 8899 §5.1.1: PROBE_TIMER MUST NOT be smaller than 1 s
LOSS_MEMORY = 120.0  # seconds a refuted loss keeps raising the loss limit

MAX_COST_RATIO = 32  # cap on probe_timer / srtt in the search (see Dplpmtud._cost_ratio)
# Common IP MTUs: IPv6 minimum, usual tunnel/PPPoE/DSL sizes, Ethernet, jumbo.
COMMON_PLPMTUS: tuple[int, ...] = (1280, 1400, 1420, 1440, 1450, 1480, 1492, 1500, 9000)


@dataclass(frozen=True)
class PmtuSettings:
    """DPLPMTUD constants (RFC 8899 §5.1.1, §5.1.2); sizes are IP packet sizes.

    ``max_plpmtu`` is further capped by ``local_mtu``, the local MTU towards the peer
    (a connected socket's ``IP_MTU``; RFC 8899 §5.3.1: MAX_PLPMTU is the minimum of the
    local MTU and what the PL allows), which a running :class:`Dplpmtud` follows
    (``local_mtu``).  ``granularity`` is the search resolution: the result is
    at most ``granularity - 1`` bytes below the largest working size (16 → ≤ 15 B).
    ``confirm_interval`` is the CONFIRMATION_TIMER (less than the raise timer).
    """

    base_plpmtu: int = 1200  # RFC 8899 §5.1.2: 1200 RECOMMENDED for IPv4
    min_plpmtu: int = 1200
    max_plpmtu: int = 9000
    max_probes: int = 3  # RFC 8899 §5.1.2 default
    probe_timer: float = 1.0
    raise_timer: float = 600.0  # RFC 8899 §5.1.1 PMTU_RAISE_TIMER
    confirm_interval: float = 2.0
    granularity: int = 16
    plateaus: tuple[int, ...] = COMMON_PLPMTUS
    local_mtu: int | None = None

    def __post_init__(self) -> None:
        if self.local_mtu is not None and self.local_mtu < self.base_plpmtu:
            raise UsageError(f"local_mtu {self.local_mtu} is below base_plpmtu")
        if not IPV4_MIN_MTU <= self.min_plpmtu <= self.base_plpmtu <= self.max_plpmtu:
            raise UsageError("need 68 <= min_plpmtu <= base_plpmtu <= max_plpmtu")
        if self.probe_timer < MIN_PROBE_TIMER:
            # RFC 8899 §5.1.1: the PROBE_TIMER MUST NOT be smaller than 1 second.
            raise UsageError(f"probe_timer {self.probe_timer} s is below 1 s (RFC 8899 §5.1.1)")
        if self.max_probes < 1 or self.granularity < 1:
            raise UsageError("max_probes and granularity must be >= 1")
        if not 0 < self.confirm_interval < self.raise_timer:
            # RFC 8899 §5.1.1: the CONFIRMATION_TIMER is less than the PMTU_RAISE_TIMER.
            raise UsageError("need 0 < confirm_interval < raise_timer")


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe to send: a HeartbeatRequest with this payload and ``padding``
    random padding bytes makes an IP packet of exactly ``size`` bytes."""

    size: int
    payload: bytes
    padding: int


def search_step(width: int, cost_ratio: int) -> int:
    """Worst-case-optimal probe offset for an asymmetric-cost search.

    The answer lies in ``width`` granularity units above the last acked size
    (the next unit up is known or believed to fail).  An acked probe costs 1,
    a lost one ``cost_ratio``.  With ``n(b)`` the widest range a budget ``b``
    resolves (``n(b) = 1`` for ``b < ratio``, ``n(b) = n(b-1) + n(b-ratio)``),
    any step ``k`` with ``width - n(b-1) <= k <= n(b-ratio)`` leaves both outcomes
    solvable within the smallest sufficient budget ``b``; the middle of that range
    is taken (a bisection when both costs are equal, a walk when failures are
    dear).  Returns a step in ``[1, width - 1]`` (``1`` when ``width <= 2``).
    """
    if width <= 2:
        return 1
    r = max(1, min(cost_ratio, 64))
    n = [1] * r
    while n[-1] < width:
        n.append(n[-1] + n[len(n) - r])
    b = len(n) - 1
    low = max(1, width - n[b - 1])
    high = min(n[b - r], width - 1)
    return max(1, (low + high) // 2)
