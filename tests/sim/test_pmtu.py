"""DPLPMTUD (RFC 8899) through real Associations and a ServerEndpoint in the simulator.

Units: the sim link's ``mtu`` counts UDP payload bytes, PLPMTU counts IP packet
bytes; over IPv4 (both sides here, ``ip_header=20``) ``PLPMTU = UDP payload + 28``,
so a path of MTU N is a link capped at ``N - 28``.

Path: 25 ms one way (50 ms RTT), no jitter.  Each side searches its own sending
direction with padded HeartbeatRequests (``probes_sent``) and reports
``PathMtuChanged(plpmtu, inner_mtu)``; the discovered PLPMTU of a side is the
last such event.

What is asserted, per cap N in {576, 1280, 1380, 1420, 1500, 9000} and for a GCM
and a ChaCha20-Poly1305 suite:

* the discovered PLPMTU is at most N and less than ``granularity`` (16) bytes
  below it (``PmtuSettings.granularity``: "at most granularity - 1 bytes below
  the largest working size"), on both sides, and no PLPMTU above N is ever
  reported;
* ``inner_mtu = PLPMTU - 20 - 8 - record overhead``, the record overhead being
  13 (header) + the suite's AEAD expansion (GCM: 8-byte explicit nonce + 16-byte
  tag, RFC 5288 §3; ChaCha20-Poly1305: 16-byte tag, RFC 7905 §2) + the RFC 9146
  CID and inner type byte when the peer asked for a non-empty CID; and an inner
  packet of exactly ``inner_mtu`` bytes makes a datagram of exactly
  ``PLPMTU - 28`` bytes that crosses the capped link;
* the convergence time (handshake completion to the last PathMtuChanged) is
  at most 5 s of simulated time.

576 is below the default BASE_PLPMTU (1200, RFC 8899 §5.1.2), so that cap runs
in two configurations: ``base576`` (``base_plpmtu = min_plpmtu = 576``: nothing
to discover below the start, the search only fails upwards) and ``min576``
(``min_plpmtu = 576``, base left at 1200: the three lost BASE probes lead to
ERROR, which reports MIN_PLPMTU and confirms it, RFC 8899 §5.2).  In ``min576``
the PLPMTU starts at the unconfirmed BASE_PLPMTU of 1200, above the path, for
the ~3 s the three BASE probes take to time out: that first value is exempt from
"never above N" (it is the configuration's assumption, not a discovery).

Black hole: the cap drops from 1500 to 1280 mid-association with no ICMP; the
confirmation probes of the old PLPMTU are lost MAX_PROBES times, the PLPMTU falls
back to BASE and the search re-converges at 1280; detection and re-convergence
times are asserted (goal <= 10 s).  Hints: a ``path_hint`` above the confirmed
PLPMTU never raises it; a valid hint below it (an ICMP Packet Too Big after the
cap dropped) re-converges within a second.  Random loss: 10 % each way on a 1500
path for 20 seeds; no side ends below BASE_PLPMTU or above the cap, and most
(>= 80 % of the 40 side-runs) end at the cap.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import pytest

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.events import HandshakeCompleted, PathMtuChanged, PeerUnresponsive
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.pmtu import PmtuSettings
from tests.pki import Pki
from tests.sim.configs import configs_for
from tests.sim.harness import Simulator
from tests.sim.link import SimLink
from tests.sim.trace import report

pytestmark = pytest.mark.sim

DELAY = 0.025  # one way: 50 ms RTT
IPV4_UDP = 20 + 8
GRANULARITY = PmtuSettings().granularity  # 16
CONVERGE_GOAL_S = 5.0
BLACK_HOLE_GOAL_S = 10.0
RUN_AFTER_S = 30.0
CAPS = (576, 1280, 1380, 1420, 1500, 9000)
SIDES = ("client", "server")
SUITE_MODES = {"gcm": "ecdhe-ecdsa-aes128", "chacha": "ecdhe-ecdsa-chacha"}
# Record header + AEAD expansion (RFC 5288 §3 / RFC 7905 §2), without CID.
RECORD_OVERHEAD = {"gcm": 13 + 8 + 16, "chacha": 13 + 16}
SETTINGS = {
    "default": PmtuSettings(),
    "base576": PmtuSettings(base_plpmtu=576, min_plpmtu=576),
    "min576": PmtuSettings(min_plpmtu=576),
}
SECTION = "PMTU discovery (simulated, 50 ms RTT)"


def cid_overhead(assoc: Association) -> int:
    """RFC 9146 §4: a non-empty CID we send adds its bytes and the inner type byte."""
    ids = getattr(assoc, "connection_ids", None)  # absent before connection IDs exist
    send_cid = b"" if ids is None else ids[1]
    return len(send_cid) + 1 if send_cid else 0


def capped_links(cap: int, seed: int, drop: float = 0.0) -> tuple[SimLink, SimLink]:
    def link(d: str) -> SimLink:
        return SimLink(random.Random(f"pmtu/{seed}/{d}"), name=d, delay=DELAY,
                       mtu=cap - IPV4_UDP, drop=drop)
    return link("c2s"), link("s2c")


def pmtu_sim(pki: Pki, cap: int, *, suite: str = "gcm", settings: str = "default",
             seed: int = 0, drop: float = 0.0) -> Simulator:
    """A handshake over a path of MTU ``cap`` with PMTU discovery on, both sides."""
    c, s = configs_for(SUITE_MODES[suite], pki, seed=seed, mtu=min(1400, cap - IPV4_UDP),
                       pmtu=SETTINGS[settings])
    c2s, s2c = capped_links(cap, seed, drop)
    sim = Simulator(c, s, c2s=c2s, s2c=s2c)
    trace = sim.handshake(limit_seconds=600.0)
    assert trace.satisfied, trace.format()
    return sim


@dataclass
class Discovery:
    """One side's PathMtuChanged history, relative to its handshake completion."""

    completed_at: float
    changes: list[tuple[float, PathMtuChanged]]

    @property
    def final(self) -> PathMtuChanged:
        return self.changes[-1][1]

    @property
    def converged_after(self) -> float:
        return self.changes[-1][0] - self.completed_at

    def since(self, t: float) -> list[tuple[float, PathMtuChanged]]:
        return [(when, e) for when, e in self.changes if when >= t]


def discovery(sim: Simulator, side: str) -> Discovery:
    (done, _), = sim.events_of(side, HandshakeCompleted)
    changes = sim.events_of(side, PathMtuChanged)
    assert changes, f"{side}: no PathMtuChanged at all"
    return Discovery(done, changes)


def check_inner_packet_fits(sim: Simulator, side: str, plpmtu: int) -> None:
    """An inner packet of exactly inner_mtu bytes is a datagram of PLPMTU - 28 that arrives."""
    assoc = sim.side(side)
    assert assoc.inner_mtu is not None
    payload = bytes([0x45]) * assoc.inner_mtu
    datagrams = assoc.protect([payload])
    assert [len(d) for d in datagrams] == [plpmtu - IPV4_UDP]
    rx = sim.server_rx if side == "client" else sim.client_rx
    before = len(rx)
    if side == "client":
        sim.send_from_client(datagrams)
    else:
        sim.send_from_server(datagrams)
    sim.run_until(lambda: len(rx) > before, 1.0)
    assert rx[before:] == [payload], f"{side}: an inner_mtu packet did not cross the path"


CELLS = [(576, "base576"), (576, "min576"), *[(cap, "default") for cap in CAPS if cap != 576]]


@pytest.mark.parametrize("suite", list(SUITE_MODES))
@pytest.mark.parametrize(("cap", "settings"), CELLS, ids=[f"{c}-{s}" for c, s in CELLS])
def test_discovers_path_mtu(pki: Pki, cap: int, settings: str, suite: str) -> None:
    sim = pmtu_sim(pki, cap, suite=suite, settings=settings)
    sim.run_for(RUN_AFTER_S)
    figures = []
    for side in SIDES:
        assoc = sim.side(side)
        d = discovery(sim, side)
        where = f"cap={cap} {settings} {suite} {side}: {[(round(t, 3), e) for t, e in d.changes]}"
        final = d.final
        assert 0 <= cap - final.plpmtu < GRANULARITY, where
        # Never above the path, but for the initial BASE_PLPMTU when it was configured
        # above the path (min576: RFC 8899 starts from BASE_PLPMTU, assumed to work).
        first, *rest = d.changes
        assert first[1].plpmtu == SETTINGS[settings].base_plpmtu, where
        assert all(e.plpmtu <= cap for _, e in rest), where
        assert assoc.plpmtu == final.plpmtu and assoc.inner_mtu == final.inner_mtu, where
        overhead = RECORD_OVERHEAD[suite] + cid_overhead(assoc)
        assert assoc.record_overhead == overhead, where
        for _, e in d.changes:
            assert e.inner_mtu == e.plpmtu - IPV4_UDP - overhead, where
        assert d.converged_after <= CONVERGE_GOAL_S, where
        assert assoc.stats.probes_sent > 0, where
        assert not sim.events_of(side, PeerUnresponsive), where
        check_inner_packet_fits(sim, side, final.plpmtu)
        out_link = sim.c2s if side == "client" else sim.s2c
        lost = [h.time - d.completed_at for h in out_link.history if h.fate == "oversize"]
        edge = f", last probe lost to the cap at {max(lost):4.2f} s" if lost else ""
        figures.append(f"{side} {final.plpmtu}/{final.inner_mtu} at {d.converged_after:4.2f} s"
                       + edge)
    # Probes above the cap were really sent and lost to it (except at the top of the range).
    if cap < SETTINGS[settings].max_plpmtu:
        assert sim.c2s.counters.oversize > 0 and sim.s2c.counters.oversize > 0
    report(SECTION, f"cap {cap:4d} {settings:7s} {suite:6s}: final plpmtu/inner_mtu "
                    + ", ".join(figures))


@pytest.mark.parametrize(("cap", "local"), [(1500, 1500), (1420, 1420), (9000, None)])
def test_the_report_that_ends_the_search_says_so(pki: Pki, cap: int, local: int | None
                                                 ) -> None:
    """The PLPMTU change made by the probe that completes the search (its ceiling, the
    local MTU or MAX_PLPMTU, acked) carries ``search_complete``; no earlier one does, so
    the daemon applies that one at once and keeps debouncing the climb before it.  At
    50 ms RTT, where the completion used to wait for the next poll, an RTT after the
    ack, and was reported as a plain change (with any RTT jitter)."""
    settings = PmtuSettings(local_mtu=local)
    c, s = configs_for(SUITE_MODES["gcm"], pki, seed=0, mtu=min(1400, cap - IPV4_UDP),
                       pmtu=settings)
    # Jitter: an ack that comes back sooner than the smoothed RTT is what left the
    # completion to a later poll (probes go at least one SRTT apart, RFC 8899 §3).
    c2s, s2c = (SimLink(random.Random(f"complete/{d}"), name=d, delay=DELAY, jitter=0.02,
                        mtu=cap - IPV4_UDP) for d in ("c2s", "s2c"))
    sim = Simulator(c, s, c2s=c2s, s2c=s2c)
    assert sim.handshake(limit_seconds=600.0).satisfied
    sim.run_for(RUN_AFTER_S)
    for side in SIDES:
        d = discovery(sim, side)
        flags = [e.search_complete for _, e in d.changes]
        where = f"{side}: {[(round(t, 3), e) for t, e in d.changes]}"
        assert flags[-1] and not any(flags[:-1]), where
        assert d.final.plpmtu == cap, where
        assert sim.side(side).plpmtu == cap, where


@pytest.mark.parametrize("suite", list(SUITE_MODES))
def test_black_hole_detected_and_reconverged(pki: Pki, suite: str) -> None:
    """1500 -> 1280 with no ICMP while data flows: the lost confirmation probes reveal it
    (RFC 8899 §5.2; confirmation runs while the side sends data, RFC 8899 §5.1.1)."""
    sim = pmtu_sim(pki, 1500, suite=suite)
    sim.run_for(10.0)
    for side in SIDES:
        assert sim.side(side).plpmtu == 1500
    t_drop = sim.now
    sim.c2s.mtu = sim.s2c.mtu = 1280 - IPV4_UDP
    sim.start_traffic(30.0)  # (over before the last check: only its packet arrives then)
    sim.run_for(40.0)
    figures = []
    for side in SIDES:
        d = discovery(sim, side)
        after = d.since(t_drop)
        where = f"{suite} {side}: {[(round(t - t_drop, 3), e.plpmtu) for t, e in after]}"
        assert after, f"black hole never detected: {where}"
        detected = after[0][0] - t_drop
        reconverged = after[-1][0] - t_drop
        assert after[0][1].plpmtu <= 1280, where  # the first move is down, below the cap
        assert 0 <= 1280 - d.final.plpmtu < GRANULARITY, where
        assert all(e.plpmtu <= 1280 for _, e in after), where
        assert reconverged <= BLACK_HOLE_GOAL_S, where
        assert not sim.events_of(side, PeerUnresponsive), where
        check_inner_packet_fits(sim, side, d.final.plpmtu)
        figures.append(f"{side} detected {detected:4.2f} s, re-converged {reconverged:4.2f} s")
    report(SECTION, f"black hole 1500->1280 {suite:6s}: " + ", ".join(figures))


def test_no_confirmation_probes_while_idle(pki: Pki) -> None:
    """RFC 8899 §5.1.1: a side that sends no data suspends confirming its PLPMTU; the
    keepalive alone runs (one request per idle interval for the pair).  Once data
    flows the confirmations resume, one CONFIRMATION_TIMER apart at most."""
    sim = pmtu_sim(pki, 1500)
    sim.run_for(10.0)  # the searches are over
    probes = {side: sim.side(side).stats.probes_sent for side in SIDES}
    beats = sum(sim.side(side).stats.heartbeats_sent for side in SIDES)
    sim.run_for(20.0)
    for side in SIDES:
        assert sim.side(side).stats.probes_sent == probes[side], side
        assert sim.side(side).plpmtu == 1500
    beats = sum(sim.side(side).stats.heartbeats_sent for side in SIDES) - beats
    interval = HeartbeatSettings().interval
    assert 0 < beats <= 20.0 / interval + 1  # one keepalive per interval, not one per side
    sim.start_traffic(10.0, period=0.1)
    sim.run_for(10.0)
    for side in SIDES:
        sent = sim.side(side).stats.probes_sent - probes[side]
        assert sent >= 10.0 / PmtuSettings().confirm_interval - 2, side


def test_valid_hint_below_reconverges_at_once(pki: Pki) -> None:
    """The cap drops and an ICMP Packet Too Big says 1280: no waiting for lost probes."""
    sim = pmtu_sim(pki, 1500)
    sim.run_for(10.0)
    t_hint = sim.now
    sim.c2s.mtu = sim.s2c.mtu = 1280 - IPV4_UDP
    for side in SIDES:
        sim.path_hint(side, 1280)
        # RFC 8899 §4.6.2: never used directly; PLPMTU falls back to BASE, then a probe.
        assert sim.side(side).plpmtu == 1200
    sim.run_for(20.0)
    figures = []
    for side in SIDES:
        d = discovery(sim, side)
        after = d.since(t_hint)
        where = f"{side}: {[(round(t - t_hint, 3), e.plpmtu) for t, e in after]}"
        assert d.final.plpmtu == 1280, where
        took = after[-1][0] - t_hint
        assert took <= 1.0, where
        check_inner_packet_fits(sim, side, 1280)
        figures.append(f"{side} {took:4.2f} s")
    report(SECTION, "ICMP hint 1280 after 1500->1280: re-converged " + ", ".join(figures))


@pytest.mark.parametrize("hint", [1281, 1500, 9000, 65535])
def test_forged_hint_above_confirmed_size_ignored(pki: Pki, hint: int) -> None:
    """RFC 8899 §4.6.2 / §3 (6): a hint never raises the PLPMTU."""
    sim = pmtu_sim(pki, 1280)
    sim.run_for(10.0)
    t_hint = sim.now
    for side in SIDES:
        sim.path_hint(side, hint)
        assert sim.side(side).plpmtu == 1280
    sim.run_for(30.0)
    for side in SIDES:
        d = discovery(sim, side)
        assert d.since(t_hint) == [], f"{side}: {d.since(t_hint)}"
        assert sim.side(side).plpmtu == 1280
        assert not sim.events_of(side, PeerUnresponsive)
        check_inner_packet_fits(sim, side, 1280)


def test_hint_below_min_plpmtu_ignored(pki: Pki) -> None:
    """RFC 8899 §4.6.2: a PTB below MIN_PLPMTU (1200 by default) is invalid."""
    sim = pmtu_sim(pki, 1500)
    sim.run_for(10.0)
    t_hint = sim.now
    for side in SIDES:
        sim.path_hint(side, 576)
    sim.run_for(10.0)
    for side in SIDES:
        assert discovery(sim, side).since(t_hint) == []
        assert sim.side(side).plpmtu == 1500


def test_forged_hint_below_costs_only_a_dip(pki: Pki) -> None:
    """A forged PTB between BASE and the PLPMTU drops to BASE, then the old size is
    re-probed and confirmed: the path MTU comes back within seconds."""
    sim = pmtu_sim(pki, 1500)
    sim.run_for(10.0)
    t_hint = sim.now
    sim.path_hint("client", 1300)
    assert sim.client.plpmtu == 1200
    sim.run_for(20.0)
    d = discovery(sim, "client")
    after = d.since(t_hint)
    assert d.final.plpmtu == 1500, after
    assert after[-1][0] - t_hint <= 2.0, after
    assert discovery(sim, "server").since(t_hint) == []  # the other direction is untouched


LOSS_SEEDS = range(20)


def test_random_loss_does_not_collapse_the_estimate(pki: Pki) -> None:
    """10 % loss each way on a 1500 path, 20 seeds, 60 s after the handshake."""
    finals: list[int] = []
    times: list[float] = []
    rows = []
    for seed in LOSS_SEEDS:
        sim = pmtu_sim(pki, 1500, seed=seed, drop=0.1)
        sim.run_for(60.0)
        for side in SIDES:
            d = discovery(sim, side)
            where = f"seed={seed} {side}: {[(round(t, 2), e.plpmtu) for t, e in d.changes]}"
            assert all(1200 <= e.plpmtu <= 1500 for _, e in d.changes), where
            assert sim.side(side).plpmtu == d.final.plpmtu
            finals.append(d.final.plpmtu)
            if d.final.plpmtu > 1500 - GRANULARITY:
                times.append(d.converged_after)
            else:
                rows.append(f"seed {seed} {side} ended at {d.final.plpmtu}")
    at_cap = sum(p > 1500 - GRANULARITY for p in finals)
    assert min(finals) >= 1200, finals
    assert at_cap >= 0.8 * len(finals), f"{at_cap}/{len(finals)} at the cap: {rows}"
    report(SECTION, f"10 % loss, cap 1500, {len(LOSS_SEEDS)} seeds x 2 sides: {at_cap}/"
                    f"{len(finals)} at the cap, convergence min/med/max {min(times):.1f}/"
                    f"{statistics.median(times):.1f}/{max(times):.1f} s; others: "
                    + ("; ".join(rows) or "none"))
