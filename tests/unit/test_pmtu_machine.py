"""dtlsvpn.dtls.pmtu.Dplpmtud: RFC 8899 DPLPMTUD driven over a fake path.

The fake path delivers a probe (and its response, one RTT later) iff the probe's IP
size is <= the path's cap at send time and a seeded RNG does not drop it.  The cap
may change mid-run without any ICMP (a black hole).  All times are simulated seconds.

IPv4 with a 576-byte path: with the default BASE_PLPMTU 1200 such a path is found
through ERROR; configuring ``base_plpmtu = min_plpmtu = 576`` finds it directly,
which is what the convergence test uses for the 576 cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.dtls.pmtu import (
    PROBE_PAYLOAD_LEN,
    Dplpmtud,
    PmtuSettings,
    PmtuState,
    search_step,
)
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.heartbeat import HEADER_LEN, encode_heartbeat

IP4 = 20
OVERHEAD = 13 + 24  # record header + AES-GCM explicit nonce and tag
IFACE = 9000
RTT = 0.05
CAPS = [576, 1280, 1380, 1420, 1500, 9000]


def settings_for(cap: int) -> PmtuSettings:
    return PmtuSettings(base_plpmtu=576, min_plpmtu=576) if cap < 1200 else PmtuSettings()


def make(
    s: PmtuSettings | None = None, *, seed: int = 1, ip: int = IP4, now: float = 0.0
) -> Dplpmtud:
    return Dplpmtud(
        s or PmtuSettings(),
        ip_header=ip,
        record_overhead=OVERHEAD,
        now=now,
        random_bytes=random.Random(seed).randbytes,
        interface_mtu=IFACE,
    )


@dataclass
class FakePath:
    cap: Callable[[float], int]
    rtt: float = RTT
    loss: float = 0.0
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def delivers(self, size: int, now: float) -> bool:
        if size > self.cap(now):
            return False
        return self.loss == 0.0 or self.rng.random() >= self.loss


def state_of(m: Dplpmtud) -> PmtuState:
    return m.state  # (a call, so that mypy does not narrow the state across inputs)


def fixed(cap: int) -> Callable[[float], int]:
    return lambda t: cap


class Sim:
    """Discrete-event loop around one machine and one fake path."""

    def __init__(self, m: Dplpmtud, path: FakePath, now: float = 0.0) -> None:
        self.m = m
        self.path = path
        self.now = now
        self.responses: list[tuple[float, bytes]] = []
        self.changes: list[tuple[float, int, int]] = []
        self.probes: list[tuple[float, int, bool]] = []
        self.states: list[tuple[float, PmtuState]] = [(now, m.state)]

    def _record(self) -> None:
        self.changes.extend((self.now, p, i) for p, i in self.m.pop_changes())
        if self.m.state is not self.states[-1][1]:
            self.states.append((self.now, self.m.state))

    def run_until(self, end: float) -> Sim:
        m = self.m
        stale = 0
        while True:
            for t, payload in sorted(r for r in self.responses if r[0] <= self.now):
                self.responses.remove((t, payload))
                m.on_response(payload, t)
            probe = m.poll(self.now)
            if probe is not None:
                # the heartbeat the caller would build is exactly the probed IP size
                plaintext = encode_heartbeat(1, probe.payload, bytes(probe.padding))
                assert len(plaintext) == m.plaintext_size(probe.size)
                assert len(probe.payload) == PROBE_PAYLOAD_LEN
                if self.probes and m.srtt is not None:
                    # RFC 8899 §3 (7): probes at least one RTT apart
                    assert self.now - self.probes[-1][0] >= self.path.rtt - 1e-9
                ok = self.path.delivers(probe.size, self.now)
                self.probes.append((self.now, probe.size, ok))
                if ok:
                    self.responses.append((self.now + self.path.rtt, probe.payload))
            self._record()
            times = [t for t, _ in self.responses]
            timer = m.get_timer()
            if timer is not None:
                times.append(timer)
            if not times:
                break
            nxt = min(times)
            stale = stale + 1 if nxt <= self.now else 0
            assert stale < 10, "timer in the past: busy loop"
            if nxt > end:
                break
            self.now = max(nxt, self.now + 1e-9)
        self.now = max(self.now, end)
        return self

    def completed_at(self, after: float = 0.0) -> float | None:
        return next(
            (t for t, s in self.states if s is PmtuState.SEARCH_COMPLETE and t >= after), None
        )


@pytest.mark.parametrize("cap", CAPS)
def test_converges_to_cap(cap: int) -> None:
    sim = Sim(make(settings_for(cap)), FakePath(fixed(cap))).run_until(30.0)
    m = sim.m
    assert m.state is PmtuState.SEARCH_COMPLETE
    assert cap - 15 <= m.plpmtu <= cap
    assert all(p <= cap for _, p, _ in sim.changes)  # never above the cap, not even briefly
    done = sim.completed_at()
    last_change = sim.changes[-1][0] if sim.changes else 0.0
    print(
        f"\ncap {cap}: PLPMTU {m.plpmtu} (inner {m.inner_mtu}) final value at {last_change:.2f} s,"
        f" SEARCH_COMPLETE at {done:.2f} s, {sum(1 for p in sim.probes if p[0] <= (done or 0))}"
        " probes"
    )
    assert done is not None and done <= 5.0
    assert m.inner_mtu == m.plpmtu - IP4 - 8 - OVERHEAD


@pytest.mark.parametrize("iface", [1400, 1500, 1392, 1210])
def test_an_interface_mtu_is_a_ceiling_reached_exactly(iface: int) -> None:
    """The interface MTU given as the upper bound (the client's IP_MTU): no probe above
    it, and the search ends at it, not up to granularity - 1 below (it got its own probe
    when the steps stopped within granularity of it)."""
    m = Dplpmtud(PmtuSettings(), ip_header=IP4, record_overhead=OVERHEAD, now=0.0,
                 random_bytes=random.Random(3).randbytes, interface_mtu=iface)
    sim = Sim(m, FakePath(fixed(iface))).run_until(30.0)
    assert m.state is PmtuState.SEARCH_COMPLETE and m.plpmtu == iface, sim.probes
    assert max(size for _, size, _ in sim.probes) == iface
    assert all(ok for _, _, ok in sim.probes)  # nothing lost: nothing was too big


def test_a_ceiling_that_fails_ends_the_search_below_it() -> None:
    """The ceiling's own probe is not repeated for ever: lost MAX_PROBES times, the
    search ends at the last acked size below it."""
    m = Dplpmtud(PmtuSettings(), ip_header=IP4, record_overhead=OVERHEAD, now=0.0,
                 random_bytes=random.Random(3).randbytes, interface_mtu=1400)
    sim = Sim(m, FakePath(fixed(1396))).run_until(60.0)
    assert m.state is PmtuState.SEARCH_COMPLETE and m.plpmtu == 1392, sim.probes
    assert sum(1 for _, size, _ in sim.probes if size == 1400) == 3  # MAX_PROBES


def test_cap_576_through_error_with_default_base() -> None:
    s = PmtuSettings(min_plpmtu=576)
    sim = Sim(make(s), FakePath(fixed(576))).run_until(30.0)
    states = [st for _, st in sim.states]
    assert PmtuState.ERROR in states
    assert sim.m.plpmtu == 576
    assert sim.m.state is PmtuState.SEARCH_COMPLETE


@pytest.mark.parametrize("drop", [20.0, 20.3, 20.9, 21.4, 22.0])  # phases of the confirmation
def test_black_hole_detected_and_reconverged(drop: float) -> None:
    path = FakePath(lambda t: 1500 if t < drop else 1280)
    sim = Sim(make(), path).run_until(drop)
    assert sim.m.plpmtu == 1500 and sim.m.state is PmtuState.SEARCH_COMPLETE
    sim.run_until(drop + 30.0)
    after = [(t, p) for t, p, _ in sim.changes if t >= drop]
    assert after[0][1] == 1200  # RFC 8899 §5.2: black hole → BASE_PLPMTU
    back = next(t for t, p in after if p == 1280)
    states = [s for t, s in sim.states if t >= drop]
    assert states[:3] == [PmtuState.BASE, PmtuState.SEARCHING, PmtuState.SEARCH_COMPLETE]
    done = sim.completed_at(drop)
    print(
        f"\nblack hole 1500→1280 at {drop}: detected after {after[0][0] - drop:.2f} s, PLPMTU 1280 after"
        f" {back - drop:.2f} s, search complete after {(done or 0) - drop:.2f} s"
    )
    assert back - drop <= 10.0
    assert done is not None and done - drop <= 10.0
    assert sim.m.plpmtu == 1280


def test_forged_hint_above_confirmed_is_ignored() -> None:
    sim = Sim(make(), FakePath(fixed(1280))).run_until(10.0)
    assert sim.m.plpmtu == 1280
    for hint in (1281, 1500, 9000, 65535):
        sim.m.path_hint(hint, sim.now)
    sim.run_until(60.0)
    assert sim.m.plpmtu == 1280
    assert sim.m.state is PmtuState.SEARCH_COMPLETE
    assert [p for t, p, _ in sim.changes if t >= 10.0] == []


def test_hint_above_only_caps_the_search() -> None:
    m = make()
    m.path_hint(1400, 0.0)  # e.g. the kernel's IP_MTU before any probe
    sim = Sim(m, FakePath(fixed(1500))).run_until(30.0)
    assert sim.m.plpmtu == 1400  # probed, acked, and not beyond the hint
    assert max(size for _, size, _ in sim.probes) == 1400
    # a forged larger hint while searching cannot raise anything either
    m2 = make()
    sim2 = Sim(m2, FakePath(fixed(1380))).run_until(0.3)
    m2.path_hint(9000, sim2.now)
    sim2.run_until(30.0)
    assert 1365 <= m2.plpmtu <= 1380


def test_hint_below_confirmed_leads_to_lower_verified_size() -> None:
    change = 20.0
    path = FakePath(lambda t: 1500 if t < change else 1400)
    sim = Sim(make(), path).run_until(change)
    assert sim.m.plpmtu == 1500
    sim.m.path_hint(1400, change)  # ICMP Packet Too Big with the new MTU
    assert sim.m.plpmtu == 1200  # RFC 8899 §4.6.2: SHOULD drop to BASE_PLPMTU at once
    sim.run_until(change + 30.0)
    verified = [(t, p) for t, p, _ in sim.changes if t >= change]
    assert verified[:2] == [(change, 1200), (pytest.approx(change + RTT), 1400)]
    assert sim.m.plpmtu == 1400
    assert all(ok for _, size, ok in sim.probes if size == 1400)


def test_forged_hint_below_costs_only_a_dip() -> None:
    sim = Sim(make(), FakePath(fixed(1500))).run_until(20.0)
    sim.m.path_hint(1300, 20.0)
    sim.run_until(30.0)
    assert sim.m.plpmtu == 1500
    restored = next(t for t, p, _ in sim.changes if t >= 20.0 and p == 1500)
    assert restored - 20.0 < 2.0


def test_hint_below_min_is_ignored() -> None:
    sim = Sim(make(), FakePath(fixed(1500))).run_until(20.0)
    sim.m.path_hint(1199, 20.0)
    sim.m.path_hint(68, 20.0)
    assert sim.m.pop_changes() == []
    assert sim.m.plpmtu == 1500


def test_hint_below_base_enters_error_then_searches() -> None:
    s = PmtuSettings(min_plpmtu=576)
    sim = Sim(make(s), FakePath(lambda t: 1500 if t < 20.0 else 1000)).run_until(20.0)
    sim.m.path_hint(1000, 20.0)
    assert sim.m.state is PmtuState.ERROR and sim.m.plpmtu == 576
    sim.run_until(40.0)
    assert sim.m.plpmtu == 1000


def test_error_when_base_fails() -> None:
    sim = Sim(make(), FakePath(fixed(1000))).run_until(30.0)
    assert sim.m.state is PmtuState.ERROR
    assert sim.m.plpmtu == 1200  # MIN_PLPMTU (= BASE here) is what is reported
    lost_base = [t for t, size, ok in sim.probes if size == 1200 and not ok]
    assert lost_base[:3] == [0.0, 1.0, 2.0]
    # ERROR keeps probing slowly, not at the probe-timer rate
    assert len(sim.probes) < 3 + 30 / PmtuSettings().confirm_interval + 1


@pytest.mark.parametrize("cap", CAPS)
def test_random_loss_does_not_collapse_estimate(cap: int) -> None:
    s = settings_for(cap)
    finals = []
    for seed in range(20):
        path = FakePath(fixed(cap), loss=0.10, seed=seed)
        sim = Sim(make(s, seed=seed), path).run_until(120.0)
        finals.append(sim.m.plpmtu)
        assert min([p for _, p, _ in sim.changes], default=576) >= s.base_plpmtu
        assert all(p <= cap for _, p, _ in sim.changes)
    good = sum(cap - 15 <= f <= cap for f in finals)
    print(f"\ncap {cap} with 10% loss: {good}/20 seeds at the cap, finals {sorted(set(finals))}")
    assert good >= 18


def test_raise_timer_searches_upward_again() -> None:
    path = FakePath(lambda t: 1280 if t < 100.0 else 1500)
    sim = Sim(make(), path).run_until(590.0)
    assert sim.m.plpmtu == 1280  # no probing above the PLPMTU before PMTU_RAISE_TIMER
    assert all(size <= 1296 for t, size, _ in sim.probes if t > 10.0)
    sim.run_until(620.0)
    assert sim.m.plpmtu == 1500
    assert sim.m.state is PmtuState.SEARCH_COMPLETE


def test_a_local_mtu_rise_resumes_a_search_that_reached_the_ceiling() -> None:
    """Dialled under a 1400 local MTU on a 1500 path: the search ends at 1400; the local
    MTU back at 1500 resumes it at once (not at the 600 s raise timer), and no probe
    goes above the local MTU in force."""
    sim = Sim(make(PmtuSettings(local_mtu=1400)), FakePath(fixed(1500))).run_until(20.0)
    assert sim.m.plpmtu == 1400 and sim.m.state is PmtuState.SEARCH_COMPLETE
    assert max(size for _, size, _ in sim.probes) == 1400
    sim.m.local_mtu(1500, sim.now)
    sim.run_until(25.0)
    assert sim.m.plpmtu == 1500 and sim.m.state is PmtuState.SEARCH_COMPLETE
    assert max(size for _, size, _ in sim.probes) == 1500


def test_a_local_mtu_rise_leaves_a_path_bound_search_alone() -> None:
    """The search ended below the local MTU (the path's bottleneck is elsewhere): a
    larger local MTU changes nothing before the raise timer."""
    sim = Sim(make(PmtuSettings(local_mtu=1500)), FakePath(fixed(1420))).run_until(20.0)
    found = sim.m.plpmtu
    assert 1405 <= found <= 1420 and sim.m.state is PmtuState.SEARCH_COMPLETE
    sim.m.local_mtu(9000, sim.now)
    sim.run_until(300.0)
    assert sim.m.plpmtu == found
    assert all(size == found for t, size, _ in sim.probes if t > 20.0)  # confirmations


@pytest.mark.parametrize("at", [0.3, 20.0])  # while searching, after it
def test_a_local_mtu_fall_bounds_every_later_probe(at: float) -> None:
    sim = Sim(make(PmtuSettings(local_mtu=1500)), FakePath(fixed(1500))).run_until(at)
    sim.m.local_mtu(1300, sim.now)
    sim.run_until(at + 30.0)
    assert sim.m.plpmtu == 1300 and sim.m.state is PmtuState.SEARCH_COMPLETE
    assert all(size <= 1300 for t, size, _ in sim.probes if t >= at)


def test_a_local_mtu_outside_the_settings_is_bounded() -> None:
    """Never above max_plpmtu, never below BASE_PLPMTU as a ceiling (below BASE it is a
    hint: ERROR, as for any hint there)."""
    sim = Sim(make(PmtuSettings(max_plpmtu=1450, local_mtu=1300)),
              FakePath(fixed(9000))).run_until(20.0)
    assert sim.m.plpmtu == 1300
    sim.m.local_mtu(9000, sim.now)
    sim.run_until(40.0)
    assert sim.m.plpmtu == 1450 and max(size for _, size, _ in sim.probes) == 1450
    sim.m.local_mtu(1000, sim.now)  # below BASE = MIN_PLPMTU: nothing but MIN is probed
    at = sim.now
    sim.run_until(at + 30.0)
    assert sim.m.plpmtu == 1200 and all(size <= 1200 for t, size, _ in sim.probes if t >= at)
    with pytest.raises(UsageError):
        PmtuSettings(local_mtu=1100)


def _between_probes(sim: Sim) -> float:
    """Run on until no probe is in flight (its response is one RTT away)."""
    while sim.m.in_flight:
        sim.run_until(sim.now + RTT / 2)
    return sim.now


def test_a_new_path_forgets_the_old_one_and_confirms_at_once() -> None:
    """A move (``new_path``): an ICMP cap and the failed sizes of the old path no longer
    hold the search; at the ceiling already, the PLPMTU is probed at once
    (``unconfirmed``), not at the next confirmation interval."""
    path = FakePath(lambda t: 1400 if t < 40.0 else 1500)
    sim = Sim(make(PmtuSettings(local_mtu=1500)), path).run_until(20.0)
    assert sim.m.plpmtu == 1400
    sim.m.path_hint(1400, sim.now)  # the old path: a router said 1400
    sim.run_until(40.0)
    sim.m.local_mtu(1500, sim.now, new_path=True)  # moved: this path carries 1500
    sim.run_until(45.0)
    assert sim.m.plpmtu == 1500 and sim.m.state is PmtuState.SEARCH_COMPLETE
    at = _between_probes(sim)
    sim.m.local_mtu(1500, at, new_path=True)  # moved again, the same local MTU
    assert sim.m.unconfirmed
    probe = sim.m.poll(at)
    assert probe is not None and probe.size == 1500  # at once
    assert sim.m.on_response(probe.payload, at + 0.01) and not sim.m.unconfirmed


def test_without_a_move_the_old_paths_bounds_hold() -> None:
    """The control: the same reading without ``new_path`` leaves the search alone."""
    path = FakePath(lambda t: 1400 if t < 40.0 else 1500)
    sim = Sim(make(PmtuSettings(local_mtu=1500)), path).run_until(40.0)
    sim.m.local_mtu(1500, sim.now)
    sim.run_until(100.0)
    assert sim.m.plpmtu == 1400


def test_a_hint_below_a_probe_in_flight_sends_the_hinted_size_at_once() -> None:
    """The ICMP says the probe in flight cannot pass: it is not waited for (1 s)."""
    sim = Sim(make(PmtuSettings(local_mtu=1500)), FakePath(fixed(1500))).run_until(20.0)
    m = sim.m
    at = _between_probes(sim)
    m.local_mtu(1500, at, new_path=True)
    probe = m.poll(at)
    assert probe is not None and probe.size == 1500
    m.path_hint(1400, at + 0.01)  # the router's answer to that probe
    nxt = m.poll(at + RTT + 0.001)  # (probes one RTT apart, RFC 8899 §3 (7); not 1 s)
    assert nxt is not None and nxt.size == 1400
    assert not m.on_response(probe.payload, at + RTT + 0.002)  # the abandoned one is gone


def test_ipv6_floor_is_1280() -> None:
    m = make(ip=40)
    assert m.plpmtu == 1280
    sim = Sim(m, FakePath(fixed(1280))).run_until(10.0)
    assert sim.m.plpmtu == 1280
    assert sim.m.inner_mtu == 1280 - 40 - 8 - OVERHEAD


def test_one_probe_in_flight_and_blocked() -> None:
    m = make()
    assert m.poll(0.0, blocked=True) is None
    assert m.get_timer(blocked=True) is None  # nothing to do until the other request ends
    probe = m.poll(0.0)
    assert probe is not None and probe.size == 1200
    assert m.in_flight and m.poll(0.0) is None
    assert m.get_timer() == pytest.approx(1.0)  # PROBE_TIMER
    assert not m.on_response(probe.payload[::-1], 0.01)
    assert m.on_response(probe.payload, 0.05)
    assert m.state is PmtuState.SEARCHING
    assert m.srtt == pytest.approx(0.05)


def test_late_response_is_not_accepted() -> None:
    m = make()
    probe = m.poll(0.0)
    assert probe is not None
    m.handle_timer(1.0)
    assert not m.in_flight
    assert not m.on_response(probe.payload, 1.2)


def test_disable_and_enable() -> None:
    sim = Sim(make(), FakePath(fixed(1500))).run_until(10.0)
    sim.m.disable()
    assert sim.m.state is PmtuState.DISABLED
    assert sim.m.get_timer() is None and sim.m.poll(11.0) is None
    sim.m.enable(12.0)
    assert state_of(sim.m) is PmtuState.BASE and sim.m.plpmtu == 1200
    sim.now = 12.0
    sim.run_until(30.0)
    assert sim.m.plpmtu == 1500


def test_settings_validation() -> None:
    with pytest.raises(UsageError):
        PmtuSettings(probe_timer=0.5)  # RFC 8899 §5.1.1: MUST NOT be below 1 s
    with pytest.raises(UsageError):
        PmtuSettings(min_plpmtu=1300, base_plpmtu=1200)
    with pytest.raises(UsageError):
        PmtuSettings(confirm_interval=700.0)
    with pytest.raises(UsageError):
        Dplpmtud(
            PmtuSettings(),
            ip_header=IP4,
            record_overhead=OVERHEAD,
            now=0.0,
            random_bytes=random.Random(0).randbytes,
            interface_mtu=1000,
        )


@given(st.integers(1, 2000), st.integers(1, 100))
def test_search_step_bounds(width: int, ratio: int) -> None:
    k = search_step(width, ratio)
    assert 1 <= k <= max(1, width - 1)


def test_search_step_shapes() -> None:
    assert search_step(2, 20) == 1
    assert search_step(20, 20) == 1  # failures cost 20 RTTs: walk a short gap
    assert 45 <= search_step(100, 1) <= 55  # equal costs: bisect
    assert search_step(488, 20) > 16  # a wide gap still jumps


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ack", "lose", "hint", "local", "move", "wait", "toggle"]),
            st.integers(500, 10000),
            st.floats(0.0, 30.0),
        ),
        max_size=60,
    )
)
def test_invariants_under_any_inputs(ops: list[tuple[str, int, float]]) -> None:
    m = make(PmtuSettings(min_plpmtu=576))
    now = 0.0
    acked = {m.plpmtu, 576}
    ceiling = IFACE
    for op, size, dt in ops:
        probe = m.poll(now)
        if probe is not None:
            assert 576 <= probe.size <= ceiling
            assert probe.padding >= 16 and HEADER_LEN + PROBE_PAYLOAD_LEN + probe.padding > 0
            if op == "ack":
                assert m.on_response(probe.payload, now + 0.01)
                acked.add(probe.size)
        if op == "hint":
            m.path_hint(size, now)
        elif op in ("local", "move"):
            m.local_mtu(size, now, new_path=op == "move")
            ceiling = max(1200, min(IFACE, size))  # (the kernel refuses more: no probe)
        elif op == "toggle":
            if m.state is PmtuState.DISABLED:
                m.enable(now)
            else:
                m.disable()
        now += dt if op == "wait" else 0.02
        m.handle_timer(now)
        assert m.in_flight == (m.get_timer() is not None and m.in_flight)
        timer = m.get_timer()
        assert timer is not None or m.state is PmtuState.DISABLED
        # the PLPMTU is BASE, MIN, or a size that a probe confirmed
        assert m.plpmtu in acked or m.plpmtu in (1200, 576)
        assert 576 <= m.plpmtu <= IFACE
