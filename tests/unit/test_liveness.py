"""dtlsvpn.dtls.heartbeat.Liveness: keepalive requests and dead-peer detection (RFC 6520 §3, §5.2).

The machine is driven by a tiny discrete-event loop with a fake peer that answers a
request after ``rtt`` while it is alive.  All times are simulated seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dtlsvpn.dtls.heartbeat import PAYLOAD_LEN, HeartbeatSettings, Liveness, deferred_idle
from dtlsvpn.dtls.pmtu import Dplpmtud, PmtuSettings, Probe
from dtlsvpn.errors import UsageError


def make(now: float = 0.0, settings: HeartbeatSettings | None = None, seed: int = 1,
         *, defer: bool = False) -> Liveness:
    return Liveness(settings or HeartbeatSettings(), now, random_bytes=random.Random(seed).randbytes,
                    defer_to_peer=defer)


@dataclass
class Trace:
    sent: list[tuple[float, bytes]] = field(default_factory=list)
    changes: list[tuple[float, bool]] = field(default_factory=list)


def drive(
    lv: Liveness,
    until: float,
    *,
    start: float = 0.0,
    peer_alive: Callable[[float], bool] = lambda t: True,
    rtt: float = 0.05,
    data_every: float | None = None,
) -> Trace:
    """Run ``lv`` from ``start`` to ``until``; the peer answers while ``peer_alive(t)``
    and, with ``data_every``, also sends an authenticated record that often."""
    trace = Trace()
    now = start
    responses: list[tuple[float, bytes]] = []
    next_data = None if data_every is None else start + data_every
    in_flight_max = 0
    stale = 0
    while now <= until:
        for t, answer in sorted(r for r in responses if r[0] <= now):
            responses.remove((t, answer))
            lv.on_response(answer, t)
        if next_data is not None and next_data <= now:
            if peer_alive(now):
                lv.note_rx(now)
            next_data += data_every or 0.0
        payload = lv.poll(now)
        if payload is not None:
            trace.sent.append((now, payload))
            if peer_alive(now) and peer_alive(now + rtt):
                responses.append((now + rtt, payload))
        in_flight_max = max(in_flight_max, int(lv.in_flight))
        trace.changes.extend((now, c) for c in lv.pop_changes())
        candidates = [t for t, _ in responses]
        timer = lv.get_timer()
        if timer is not None:
            candidates.append(timer)
        if next_data is not None:
            candidates.append(next_data)
        nxt = min(candidates)
        stale = stale + 1 if nxt <= now else 0
        assert stale < 10, "timer in the past: busy loop"
        now = max(nxt, now + 1e-9)
    assert in_flight_max <= 1
    return trace


def test_silent_peer_declared_unresponsive_once_within_bound() -> None:
    lv = make()
    trace = drive(lv, 60.0, peer_alive=lambda t: False)
    assert [c for _, c in trace.changes] == [False]
    detected = trace.changes[0][0]
    print(f"\ndead peer detected after {detected:.2f} s (bound {lv.settings.timeout} s)")
    assert detected == pytest.approx(HeartbeatSettings().timeout)
    assert detected <= 10.0
    assert not lv.alive


def test_requests_and_retransmissions_schedule() -> None:
    lv = make()
    trace = drive(lv, 9.5, peer_alive=lambda t: False)
    times = [round(t, 6) for t, _ in trace.sent]
    # first request after the idle interval, then 1 s, then doubling capped at the interval
    assert times == [2.0, 3.0, 5.0, 7.0, 9.0]
    payloads = {p for _, p in trace.sent}
    assert len(payloads) == 1  # a retransmission carries the same payload
    assert len(next(iter(payloads))) == PAYLOAD_LEN


def test_dead_peer_detected_after_last_record() -> None:
    lv = make()
    trace = drive(lv, 40.0, peer_alive=lambda t: t < 20.0, data_every=0.5)
    assert [c for _, c in trace.changes] == [False]
    last_rx = 19.5
    assert trace.changes[0][0] - last_rx == pytest.approx(8.0)


def test_inbound_data_suppresses_requests() -> None:
    lv = make()
    trace = drive(lv, 60.0, data_every=0.5)
    assert trace.sent == []
    assert trace.changes == []
    assert lv.alive


def test_idle_alive_peer_is_kept_alive_by_requests() -> None:
    lv = make()
    trace = drive(lv, 60.0)
    assert trace.changes == []
    gaps = [b - a for (a, _), (b, _) in zip(trace.sent, trace.sent[1:], strict=False)]
    assert all(g == pytest.approx(2.05) for g in gaps)  # one request per idle interval
    assert len({p for _, p in trace.sent}) == len(trace.sent)  # fresh payload each time


def test_alive_again_after_response() -> None:
    lv = make()
    trace = drive(lv, 30.0, peer_alive=lambda t: t >= 15.0)
    assert [c for _, c in trace.changes] == [False, True]
    back = trace.changes[1][0]
    assert 15.0 <= back <= 15.0 + lv.settings.interval + 0.05 + 1e-9
    assert lv.alive


def test_second_silence_reported_again() -> None:
    lv = make()
    trace = drive(lv, 60.0, peer_alive=lambda t: t < 5.0 or 20.0 <= t < 30.0)
    assert [c for _, c in trace.changes] == [False, True, False]


def test_response_with_wrong_payload_is_not_accepted() -> None:
    lv = make()
    payload = lv.poll(2.0)
    assert payload is not None
    assert not lv.on_response(payload[:-1] + bytes([payload[-1] ^ 1]), 2.01)
    assert not lv.on_response(b"", 2.01)
    assert lv.in_flight
    assert lv.poll(3.0) == payload  # still retransmitted
    assert lv.on_response(payload, 3.05)
    assert not lv.in_flight
    assert not lv.on_response(payload, 3.06)  # a duplicate no longer matches


def test_data_during_request_stops_retransmission() -> None:
    lv = make()
    assert lv.poll(2.0) is not None
    lv.note_rx(2.5)
    assert lv.poll(3.0) is None  # timer expired, but the peer spoke: no retry
    assert not lv.in_flight
    assert lv.get_timer() == pytest.approx(4.5)  # next idle interval after 2.5
    assert lv.poll(4.5) is not None


def test_blocked_waits_without_busy_timer() -> None:
    lv = make()
    assert lv.poll(2.0, blocked=True) is None
    assert not lv.in_flight
    # while blocked only the silence bound remains: no deadline in the past
    assert lv.get_timer(blocked=True) == pytest.approx(8.0)
    assert lv.get_timer() == pytest.approx(2.0)
    assert lv.poll(2.7) is not None


def test_cancel_stops_timer() -> None:
    lv = make()
    assert lv.poll(2.0) is not None
    lv.cancel()
    assert not lv.in_flight
    assert lv.poll(2.5) is not None  # a fresh request once the caller polls again


def test_settings_validation() -> None:
    with pytest.raises(UsageError):
        HeartbeatSettings(interval=0)
    with pytest.raises(UsageError):
        HeartbeatSettings(interval=5.0, timeout=5.0)


# -- liveness and PMTU probes share the one-request-in-flight rule (RFC 6520 §3) --


def drive_both(
    until: float, *, cap: int, peer_alive: Callable[[float], bool], rtt: float = 0.05
) -> tuple[Liveness, Dplpmtud, list[tuple[float, bool]], int]:
    rng = random.Random(7)
    lv = Liveness(HeartbeatSettings(), 0.0, random_bytes=rng.randbytes)
    pm = Dplpmtud(
        PmtuSettings(), ip_header=20, record_overhead=37, now=0.0, random_bytes=rng.randbytes
    )
    now = 0.0
    responses: list[tuple[float, bytes]] = []
    changes: list[tuple[float, bool]] = []
    max_in_flight = 0
    while now <= until:
        for t, answer in sorted(r for r in responses if r[0] <= now):
            responses.remove((t, answer))
            lv.note_rx(t)  # every authenticated record is proof of life
            assert lv.on_response(answer, t) or pm.on_response(answer, t)
        sent: tuple[bytes, int] | None = None
        payload = lv.poll(now, blocked=pm.in_flight)
        if payload is not None:
            sent = (payload, 3 + len(payload) + 16)
        else:
            probe: Probe | None = pm.poll(now, blocked=lv.in_flight)
            if probe is not None:
                sent = (probe.payload, probe.size)
        max_in_flight = max(max_in_flight, int(lv.in_flight) + int(pm.in_flight))
        if sent is not None and peer_alive(now) and sent[1] <= cap:
            responses.append((now + rtt, sent[0]))
        changes.extend((now, c) for c in lv.pop_changes())
        timers = [t for t, _ in responses]
        for deadline in (lv.get_timer(blocked=pm.in_flight), pm.get_timer(blocked=lv.in_flight)):
            if deadline is not None:
                timers.append(deadline)
        now = max(min(timers), now + 1e-9)
    return lv, pm, changes, max_in_flight


def test_lost_probes_do_not_count_against_liveness() -> None:
    # Every probe above 1280 is lost, the peer is alive and otherwise idle.
    lv, pm, changes, max_in_flight = drive_both(120.0, cap=1280, peer_alive=lambda t: True)
    assert changes == []
    assert lv.alive
    assert pm.plpmtu == 1280
    assert max_in_flight == 1


def test_dead_peer_detected_while_probing() -> None:
    _, _, changes, max_in_flight = drive_both(40.0, cap=1500, peer_alive=lambda t: t < 3.0)
    assert [c for _, c in changes] == [False]
    # last record from the peer at most 3.05 s; detection within the 10 s bound
    assert changes[0][0] <= 3.05 + 8.0 + 1e-6
    assert max_in_flight == 1


def test_probe_now_sends_at_once_and_reuses_the_outstanding_payload() -> None:
    """roam: the local address changed: a request now, whatever the interval; a request
    already outstanding goes again with its payload (one in flight, RFC 6520 §3)."""
    lv = make(now=0.0)
    assert lv.poll(0.1) is None  # inside the interval: nothing due
    first = lv.probe_now(0.1)
    assert len(first) == PAYLOAD_LEN and lv.in_flight
    assert lv.poll(0.2) is None  # in flight: nothing more
    assert lv.probe_now(0.3) == first  # the same request again, from the new path
    assert lv.on_response(first, 0.35)
    assert not lv.in_flight
    second = lv.probe_now(0.4)
    assert second != first and lv.in_flight


# --- one keepalive per idle interval per pair (the peer runs its own) ---------------------


def test_peer_request_defers_ours_by_one_interval() -> None:
    """The last proof of life was the peer's HeartbeatRequest: our request waits for
    2 × interval of silence, not 1 (the peer's keepalive is running)."""
    s = HeartbeatSettings()
    lv = make(defer=True)
    lv.note_peer_request(1.0)
    assert lv.get_timer() == pytest.approx(1.0 + 2 * s.interval)
    assert lv.poll(1.0 + 2 * s.interval - 1e-6) is None
    assert lv.poll(1.0 + 2 * s.interval) is not None


def test_peer_requests_every_interval_mean_we_never_ask() -> None:
    """A peer heartbeating after each interval (plus a round trip) keeps us quiet."""
    s = HeartbeatSettings()
    lv = make(defer=True)
    t = 0.0
    lv.note_peer_request(t)
    for _ in range(50):
        t += s.interval + 0.01
        assert lv.poll(t - 1e-9) is None, t
        lv.note_peer_request(t)
    assert lv.alive and not lv.in_flight


def test_other_records_after_the_peer_request_restore_the_interval() -> None:
    """Data (or the answer to our request) more than an interval after the peer's last
    request: the peer's keepalive is not what keeps the pair up, ours runs again."""
    s = HeartbeatSettings()
    lv = make(defer=True)
    lv.note_peer_request(1.0)
    lv.note_rx(1.0 + s.interval + 0.5)
    assert lv.get_timer() == pytest.approx(1.0 + s.interval + 0.5 + s.interval)


def test_deferral_never_touches_the_silence_bound() -> None:
    """Dead-peer detection is exact: unresponsive at last_rx + timeout, deferral or not;
    our request (deferred) and its retransmissions go out before that."""
    s = HeartbeatSettings()
    lv = make(defer=True)
    lv.note_peer_request(1.0)
    sent = []
    t = 1.0
    while t < 1.0 + s.timeout + 1.0:
        if lv.poll(t) is not None:
            sent.append(round(t, 3))
        lv.handle_timer(t)
        if not lv.alive:
            break
        t = round(t + 0.001, 3)
    assert t == pytest.approx(1.0 + s.timeout)
    assert lv.pop_changes() == [False]
    assert sent and sent[0] == pytest.approx(1.0 + 2 * s.interval)
    assert all(x < 1.0 + s.timeout for x in sent)


def test_a_client_never_defers() -> None:
    """Only the server defers to the peer's keepalive (two deferring sides could cross
    their requests in step forever)."""
    s = HeartbeatSettings()
    lv = make()
    lv.note_peer_request(1.0)
    assert lv.get_timer() == pytest.approx(1.0 + s.interval)


@pytest.mark.parametrize(("interval", "timeout", "expected"),
                         [(2.0, 8.0, 4.0), (2.0, 5.0, 3.0), (2.0, 3.0, 2.0), (1.0, 30.0, 2.0)])
def test_deferred_idle_keeps_an_interval_before_the_timeout(
        interval: float, timeout: float, expected: float) -> None:
    s = HeartbeatSettings(interval=interval, retransmit=min(1.0, interval), timeout=timeout)
    assert deferred_idle(s) == expected
    lv = make(settings=s, defer=True)
    lv.note_peer_request(0.0)
    assert lv.get_timer() == pytest.approx(min(expected, timeout))
