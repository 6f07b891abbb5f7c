"""Peer liveness over RFC 6520 heartbeats, through real Associations in the simulator.

Settings are the defaults (``HeartbeatSettings``: a keepalive request after 2 s
without any authenticated inbound record, retransmitted from 1 s doubling up to
2 s, the peer declared unresponsive after 8 s of silence), so the dead-peer
bound asserted is the documented default one: detected within 10 s of the peer
going silent.  Path: 25 ms one way (50 ms RTT), 1500-byte path (1472 bytes of
UDP payload).

What is asserted:

* a peer that goes silent (everything dropped one way or both) is reported by
  ``PeerUnresponsive`` exactly once per silence, within the bound (measured from
  the moment the link went dead, printed), and only on the side that stopped
  hearing: with only client-to-server traffic lost, the client keeps hearing the
  server's keepalive requests and stays quiet;
* when the peer comes back, ``PeerAlive`` follows within one keepalive interval
  plus a round trip, exactly once, and PMTU discovery (disabled while the peer
  was unreachable, RFC 8899 §5.2) finds the path again;
* authenticated inbound data is proof of life: while data flows in, no keepalive
  request is sent (``stats.heartbeats_sent`` does not move), while the side that
  receives nothing does send them;
* probes lost to the path MTU never make a peer unresponsive, including a path
  below BASE_PLPMTU where every probe is lost for minutes;
* no heartbeat or probe is ever sent when one side has heartbeats off (so the
  extension was not negotiated): neither side sends, the peer receives none.
  (peer_not_allowed_to_send, which our own peers never send, is covered with a
  scripted client in test_heartbleed.py.)
"""

from __future__ import annotations

import random

import pytest

from dtlsvpn.dtls.events import (
    AssociationClosed,
    HandshakeCompleted,
    PathMtuChanged,
    PeerAlive,
    PeerUnresponsive,
)
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.pmtu import PmtuSettings
from tests.pki import Pki
from tests.sim.configs import configs_for, with_changes
from tests.sim.harness import Simulator
from tests.sim.link import SimLink
from tests.sim.trace import report

pytestmark = pytest.mark.sim

DELAY = 0.025
RTT = 2 * DELAY
CAP = 1500 - 28  # UDP payload of a 1500-byte IPv4 path
DEFAULTS = HeartbeatSettings()
DEAD_PEER_BOUND_S = 10.0  # issue 4: default dead-peer detection within 10 s
SIDES = ("client", "server")
MODE = "ecdhe-ecdsa-aes128"
SECTION = "liveness (simulated, 50 ms RTT; default interval 2 s, timeout 8 s unless stated)"


def live_sim(pki: Pki, *, cap: int = CAP, pmtu: PmtuSettings | None = None, seed: int = 0,
             **overrides: object) -> Simulator:
    c, s = configs_for(MODE, pki, seed=seed, mtu=min(1400, cap), pmtu=pmtu, **overrides)
    links = [SimLink(random.Random(f"live/{seed}/{d}"), name=d, delay=DELAY, mtu=cap)
             for d in ("c2s", "s2c")]
    sim = Simulator(c, s, c2s=links[0], s2c=links[1])
    trace = sim.handshake(limit_seconds=5.0)
    assert trace.satisfied, trace.format()
    return sim


def unresponsive(sim: Simulator, side: str, since: float = 0.0) -> list[tuple[float, PeerUnresponsive]]:
    return [(t, e) for t, e in sim.events_of(side, PeerUnresponsive) if t >= since]


def alive(sim: Simulator, side: str, since: float = 0.0) -> list[tuple[float, PeerAlive]]:
    return [(t, e) for t, e in sim.events_of(side, PeerAlive) if t >= since]


def set_drop(sim: Simulator, c2s: float, s2c: float) -> None:
    sim.c2s.drop = c2s
    sim.s2c.drop = s2c


@pytest.mark.parametrize("pmtu", [False, True], ids=["no-pmtu", "pmtu"])
def test_silent_peer_reported_once_then_alive_again(pki: Pki, pmtu: bool) -> None:
    sim = live_sim(pki, pmtu=PmtuSettings() if pmtu else None)
    sim.run_for(10.0)  # idle: keepalives run (one side's, see below), nobody is declared dead
    for side in SIDES:
        assert not unresponsive(sim, side)
    assert sum(sim.side(side).stats.heartbeats_sent for side in SIDES) > 0
    figures = []
    for round_ in (1, 2):  # two silences: one event each
        t_dead = sim.now
        set_drop(sim, 1.0, 1.0)
        sim.run_for(30.0)
        for side in SIDES:
            events = unresponsive(sim, side, t_dead)
            where = f"round {round_} {side}: {events}\n{sim.log[-40:]}"
            assert len(events) == 1, where
            (t_ev, ev), = events
            detected = t_ev - t_dead
            assert detected <= DEAD_PEER_BOUND_S, where
            assert DEFAULTS.timeout - 1e-6 <= ev.silent_for <= DEAD_PEER_BOUND_S, where
            assert not alive(sim, side, t_dead), where
            assert sim.side(side).is_established  # closing is the caller's policy
            if round_ == 1:
                figures.append(f"{side} {detected:.2f} s (silent_for {ev.silent_for:.2f} s)")
        t_back = sim.now
        set_drop(sim, 0.0, 0.0)

        def both_alive(t: float = t_back) -> bool:
            return all(alive(sim, s, t) for s in SIDES)

        sim.run_until(both_alive, 10.0)
        back = []
        for side in SIDES:
            came_back = alive(sim, side, t_back)
            assert len(came_back) == 1, f"{side}: {came_back}"
            took = came_back[0][0] - t_back
            assert took <= DEFAULTS.interval + 2 * RTT, f"{side}: {took}"
            back.append(f"{side} {took:.2f} s")
        sim.run_for(20.0)
        for side in SIDES:
            assert len(alive(sim, side, t_back)) == 1
            assert len(unresponsive(sim, side, t_dead)) == 1  # still exactly once
            if pmtu:
                assert sim.side(side).plpmtu == 1500  # rediscovered after PeerAlive
        if round_ == 1:
            figures.append("PeerAlive after " + ", ".join(back))
    for side in SIDES:
        assert not any(isinstance(e, AssociationClosed) for _, e in
                       (sim.client_events if side == "client" else sim.server_events))
    report(SECTION, f"dead peer (both ways, {'with' if pmtu else 'no'} PMTU) detected after "
                    + ", ".join(figures))


@pytest.mark.parametrize("dead", ["c2s", "s2c"])
def test_one_way_silence_reported_only_by_the_side_that_stopped_hearing(
    pki: Pki, dead: str
) -> None:
    sim = live_sim(pki)
    sim.run_for(5.0)
    t_dead = sim.now
    set_drop(sim, 1.0 if dead == "c2s" else 0.0, 1.0 if dead == "s2c" else 0.0)
    sim.run_for(40.0)
    deaf = "server" if dead == "c2s" else "client"
    hearing = "client" if deaf == "server" else "server"
    events = unresponsive(sim, deaf, t_dead)
    assert len(events) == 1, events
    detected = events[0][0] - t_dead
    assert detected <= DEAD_PEER_BOUND_S
    # The other side keeps receiving its peer's keepalive requests: proof of life.
    assert unresponsive(sim, hearing) == []
    assert sim.side(hearing).stats.heartbeat_answered > 0
    report(SECTION, f"one-way loss {dead}: {deaf} detected after {detected:.2f} s, "
                    f"{hearing} never (it answered {sim.side(hearing).stats.heartbeat_answered} "
                    "requests)")


def _stream(sim: Simulator, *, up: bool, down: bool, seconds: float, every: float) -> None:
    srv = sim.side("server")
    end = sim.now + seconds
    n = 0
    while sim.now < end - 1e-9:
        if up:
            sim.send_from_client(sim.client.protect([b"up %d" % n]))
        if down:
            sim.send_from_server(srv.protect([b"down %d" % n]))
        n += 1
        sim.run_for(every)


@pytest.mark.parametrize("direction", ["both", "down-only", "up-only"])
def test_inbound_data_suppresses_keepalives(pki: Pki, direction: str) -> None:
    sim = live_sim(pki)
    sim.run_for(0.5)
    srv = sim.side("server")
    before = {s: sim.side(s).stats.heartbeats_sent for s in SIDES}
    up = direction in ("both", "up-only")
    down = direction in ("both", "down-only")
    _stream(sim, up=up, down=down, seconds=30.0, every=0.5)
    sent = {s: sim.side(s).stats.heartbeats_sent - before[s] for s in SIDES}
    assert len(sim.server_rx) == (60 if up else 0) and len(sim.client_rx) == (60 if down else 0)
    # A side that receives data sends no keepalive; one that receives none does.
    assert sent["client"] == (0 if down else sent["client"]), sent
    assert sent["server"] == (0 if up else sent["server"]), sent
    if not down:
        assert sent["client"] >= 10, sent
    if not up:
        assert sent["server"] >= 10, sent
    for side in SIDES:
        assert not unresponsive(sim, side)
    assert srv.stats.heartbeat_answered == sent["client"]
    assert sim.client.stats.heartbeat_answered == sent["server"]
    report(SECTION, f"30 s of data ({direction}, every 0.5 s): keepalives sent client "
                    f"{sent['client']}, server {sent['server']}")


@pytest.mark.parametrize(
    ("path_mtu", "settings"),
    [(1280, PmtuSettings()), (1420, PmtuSettings()), (1000, PmtuSettings())],
    ids=["1280", "1420", "1000-below-base"],
)
def test_probes_lost_to_the_mtu_never_make_the_peer_unresponsive(
    pki: Pki, path_mtu: int, settings: PmtuSettings
) -> None:
    """Idle for 120 s with PMTU discovery on: only probes and keepalives on the wire.
    On the 1000-byte path every probe (BASE 1200, then MIN_PLPMTU 1200 in ERROR) is
    lost, all the time."""
    sim = live_sim(pki, cap=path_mtu - 28, pmtu=settings)
    sim.run_for(120.0)
    for side in SIDES:
        assoc = sim.side(side)
        assert not unresponsive(sim, side), sim.log[-60:]
        assert assoc.stats.probes_sent >= 3
        if path_mtu >= settings.base_plpmtu:
            assert assoc.plpmtu is not None and path_mtu - assoc.plpmtu < settings.granularity
        else:
            assert assoc.plpmtu == settings.min_plpmtu  # ERROR: MIN_PLPMTU reported
    lost = sim.c2s.counters.oversize + sim.s2c.counters.oversize
    assert lost >= 6
    if path_mtu < settings.base_plpmtu:
        # Nothing but keepalives got through for two minutes, and that was enough.
        assert all(e.plpmtu == settings.min_plpmtu for s in SIDES
                   for _, e in sim.events_of(s, PathMtuChanged)[1:])
    report(SECTION, f"{path_mtu}-byte path, 120 s idle with PMTU on: {lost} probes lost to "
                    "the cap, 0 PeerUnresponsive")


@pytest.mark.parametrize("off", SIDES)
def test_no_heartbeat_sent_without_the_extension(pki: Pki, off: str) -> None:
    c, s = configs_for(MODE, pki, pmtu=PmtuSettings())
    if off == "client":
        c = with_changes(c, heartbeat=False)
    else:
        s = with_changes(s, heartbeat=False)
    links = [SimLink(random.Random(d), name=d, delay=DELAY, mtu=CAP) for d in ("c2s", "s2c")]
    sim = Simulator(c, s, c2s=links[0], s2c=links[1])
    assert sim.handshake(limit_seconds=5.0).satisfied
    sim.run_for(60.0)
    set_drop(sim, 1.0, 1.0)  # even a silent peer is not probed
    sim.run_for(30.0)
    for side in SIDES:
        assoc = sim.side(side)
        (_, done), = sim.events_of(side, HandshakeCompleted)
        assert done.heartbeat is False
        st = assoc.stats
        assert st.heartbeats_sent == 0 and st.probes_sent == 0
        # Nothing arrived either: no heartbeat record was answered, dropped or refused.
        assert (st.heartbeat_answered, st.heartbeat_dropped, st.heartbeat_malformed,
                st.heartbeat_unexpected) == (0, 0, 0, 0)
        assert assoc.plpmtu is None  # no probes, no PMTU discovery
        assert not unresponsive(sim, side) and not sim.events_of(side, PathMtuChanged)
    assert not [line for line in sim.log if " send " in line and "HB " in line]


@pytest.mark.parametrize("settings", [
    HeartbeatSettings(interval=1.0, retransmit=1.0, timeout=3.0),
    HeartbeatSettings(interval=5.0, retransmit=1.0, timeout=20.0),
], ids=["fast-3s", "slow-20s"])
def test_configured_bound_is_honoured(pki: Pki, settings: HeartbeatSettings) -> None:
    """Non-default settings: the peer is declared unresponsive within ``timeout`` of the
    silence (and not before ``timeout`` after the last record it sent)."""
    sim = live_sim(pki, heartbeat_settings=settings)
    sim.run_for(3 * settings.interval)
    t_dead = sim.now
    set_drop(sim, 1.0, 1.0)
    sim.run_for(3 * settings.timeout)
    figures = []
    for side in SIDES:
        events = unresponsive(sim, side)
        assert len(events) == 1, events
        (t_ev, ev), = events
        assert t_ev - t_dead <= settings.timeout + 1e-6
        assert ev.silent_for == pytest.approx(settings.timeout)
        figures.append(f"{side} {t_ev - t_dead:.2f} s")
    report(SECTION, f"timeout {settings.timeout:g} s, interval {settings.interval:g} s: "
                    "detected after " + ", ".join(figures))


def test_dead_peer_while_streaming_is_the_worst_case(pki: Pki) -> None:
    """Data flows both ways until the path dies: the last record arrived just before, so
    detection takes the whole timeout (8 s), still within the 10 s bound."""
    sim = live_sim(pki)
    _stream(sim, up=True, down=True, seconds=5.0, every=0.1)
    t_dead = sim.now
    set_drop(sim, 1.0, 1.0)
    sim.run_for(30.0)
    figures = []
    for side in SIDES:
        ((t_ev, _),) = unresponsive(sim, side)
        detected = t_ev - t_dead
        assert DEFAULTS.timeout - 0.2 <= detected <= DEAD_PEER_BOUND_S
        figures.append(f"{side} {detected:.2f} s")
    report(SECTION, "dead peer while streaming (worst case) detected after " + ", ".join(figures))


@pytest.mark.parametrize("pmtu", [False, True], ids=["no-pmtu", "pmtu"])
def test_one_keepalive_per_idle_interval_per_pair(pki: Pki, pmtu: bool) -> None:
    """An idle pair exchanges one request and its response per interval, not one per
    side: the side that hears the peer's request defers its own (heartbeat.py), and an
    idle side confirms no PLPMTU (keepalive.py, RFC 8899 §5.1.1).  Both stay alive."""
    sim = live_sim(pki, pmtu=PmtuSettings() if pmtu else None)
    sim.run_for(10.0)  # handshake done, PMTU searches over
    before = {s: (sim.side(s).stats.heartbeats_sent, sim.side(s).stats.probes_sent,
                  sim.side(s).stats.heartbeat_answered) for s in SIDES}
    window = 40.0
    sim.run_for(window)
    sent = sum(sim.side(s).stats.heartbeats_sent - before[s][0] for s in SIDES)
    probes = sum(sim.side(s).stats.probes_sent - before[s][1] for s in SIDES)
    answered = sum(sim.side(s).stats.heartbeat_answered - before[s][2] for s in SIDES)
    per_interval = window / DEFAULTS.interval
    assert per_interval - 2 <= sent <= per_interval + 1, (sent, probes)
    assert probes == 0
    assert answered == sent
    for side in SIDES:
        assert not unresponsive(sim, side)
    report(SECTION, f"idle pair, {'PMTU on' if pmtu else 'no PMTU'}: {sent} keepalive requests "
                    f"in {window:g} s (one side's), {probes} probes")


def test_server_deferring_to_a_client_that_goes_silent(pki: Pki) -> None:
    """The client runs the keepalive; when it goes silent the server, which deferred to
    it, asks at 2 × interval after the last record (then retransmits) and declares the
    peer unresponsive exactly ``timeout`` after that record: detection is unchanged."""
    sim = live_sim(pki)
    sim.run_for(12.0)
    server = sim.side("server")
    assert server.stats.heartbeat_answered > 0  # the client's keepalive is running
    sent_before = server.stats.heartbeats_sent
    t_dead = sim.now
    set_drop(sim, 1.0, 0.0)  # the client's records are lost from now on
    assert sim.run_until(lambda: bool(unresponsive(sim, "server", t_dead)), 20.0).satisfied
    ((t_ev, ev),) = unresponsive(sim, "server", t_dead)
    assert ev.silent_for == pytest.approx(DEFAULTS.timeout)
    last_rx = t_ev - ev.silent_for
    asked = server.stats.heartbeats_sent - sent_before
    # Requests at last_rx + 4, + 5, + 7 s (retransmission timer 1 s, doubling, capped at
    # the interval); none at last_rx + 2 s, where the client's own was due.
    assert asked == 3, asked
    assert t_ev - t_dead <= DEAD_PEER_BOUND_S
    report(SECTION, f"client silent under a deferring server: detected {t_ev - t_dead:.2f} s "
                    f"after, {ev.silent_for:.2f} s after its last record, {asked} requests asked")
    assert last_rx <= t_dead
