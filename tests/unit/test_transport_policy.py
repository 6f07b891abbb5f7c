"""vpn/transport.py: the client's UDP-first, TCP-fallback carrier policy, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.errors import UsageError
from dtlsvpn.vpn.transport import Action, Carrier, TransportPolicy, TransportSettings

A = Action


def test_auto_falls_back_when_the_dtls_handshake_gets_no_answer() -> None:
    p = TransportPolicy(TransportSettings(udp_timeout=3.0, probe_interval=3.0))
    assert p.start(0.0) == [A.DIAL_UDP]
    assert p.get_timer() == 3.0
    assert p.handle_timer(2.9) == []
    assert p.handle_timer(3.0) == [A.CLOSE_UDP, A.DIAL_TCP]
    assert p.tcp_established(3.2) == [A.CARRY_TCP]
    assert p.carrier is Carrier.TCP and p.since == 3.2
    # A fresh DTLS dial every probe_interval (not the dialler's back-off), failed or not.
    assert p.get_timer() == pytest.approx(6.2)
    assert p.handle_timer(6.2) == [A.REDIAL_UDP]
    assert p.udp_lost(9.0) == []  # that probe got no answer: nothing moves
    assert p.carrier is Carrier.TCP and p.get_timer() == pytest.approx(9.2)
    assert p.handle_timer(9.2) == [A.REDIAL_UDP]
    assert p.udp_established(9.3) == [A.CARRY_UDP, A.CLOSE_TCP]
    assert p.carrier is Carrier.UDP and p.since == 9.3 and p.switches == 1
    assert p.get_timer() is None


def _up(p: TransportPolicy, now: float = 0.1) -> None:
    p.start(0.0)
    p.udp_established(now)


def test_sending_into_silence_probes_at_once_and_moves_to_the_standby() -> None:
    p = TransportPolicy(TransportSettings(suspect_after=1.0, probe_timeout=0.6))
    _up(p)
    assert p.udp_sample(1.0, rx=5, tx=100) == []
    assert p.udp_sample(1.25, rx=6, tx=120) == []  # answers come in: fine
    # A send nothing answered: dated to the previous sample (it went out since then).
    assert p.udp_sample(1.5, rx=6, tx=130) == []
    assert p.get_timer() == 2.25  # the shell samples again then
    assert p.udp_sample(2.2, rx=6, tx=150) == []  # 0.95 s only
    assert p.udp_sample(2.5, rx=6, tx=160) == [A.PROBE_UDP, A.DIAL_TCP]
    assert p.carrier is Carrier.UDP and p.get_timer() == pytest.approx(3.1)
    # The standby comes up beside UDP: it does not carry yet.
    assert p.tcp_established(2.7) == []
    assert p.carrier is Carrier.UDP and p.tcp_up
    assert p.udp_sample(3.0, rx=6, tx=170) == []  # (still no answer)
    assert p.handle_timer(3.1) == [A.CLOSE_UDP, A.CARRY_TCP]
    assert p.carrier is Carrier.TCP and p.since == 3.1 and p.switches == 1
    assert p.udp_lost(3.2) == []  # the role reports the association it closed


def test_standby_not_up_yet_carries_when_it_completes() -> None:
    p = TransportPolicy(TransportSettings(suspect_after=1.0, probe_timeout=0.5))
    _up(p)
    p.udp_sample(1.0, rx=1, tx=1)
    p.udp_sample(1.1, rx=1, tx=2)
    assert p.udp_sample(2.1, rx=1, tx=3) == [A.PROBE_UDP, A.DIAL_TCP]
    assert p.handle_timer(2.6) == [A.CLOSE_UDP]
    assert p.carrier is None
    assert p.tcp_established(2.9) == [A.CARRY_TCP]


def test_an_answered_probe_is_no_switch_when_the_peer_has_nothing_to_send() -> None:
    """One-way traffic: nothing comes back but the heartbeat's answer; no move, and the
    standby closes after standby_linger without a new alarm."""
    p = TransportPolicy(TransportSettings(suspect_after=1.0, probe_timeout=0.6,
                                          standby_linger=30.0))
    _up(p)
    p.udp_sample(1.0, rx=1, tx=10)
    p.udp_sample(1.2, rx=1, tx=11)
    assert p.udp_sample(2.2, rx=1, tx=20) == [A.PROBE_UDP, A.DIAL_TCP]
    assert p.udp_sample(2.25, rx=2, tx=21) == []  # the heartbeat answer
    assert p.tcp_established(2.4) == []  # a standby, not a carrier
    assert p.handle_timer(2.8) == []  # the probe deadline is gone
    assert p.carrier is Carrier.UDP and p.switches == 0
    # Still one-way: the next alarm probes again, but does not dial a second link.
    p.udp_sample(2.5, rx=2, tx=30)
    assert p.udp_sample(3.5, rx=2, tx=40) == [A.PROBE_UDP]
    assert p.udp_sample(3.6, rx=3, tx=41) == []
    assert p.get_timer() == pytest.approx(33.6)
    assert p.handle_timer(33.6) == [A.CLOSE_TCP]
    assert not p.tcp_active and p.carrier is Carrier.UDP and p.switches == 0


def test_idle_is_not_silence() -> None:
    p = TransportPolicy(TransportSettings(suspect_after=1.0))
    _up(p)
    p.udp_sample(1.0, rx=1, tx=10)
    assert p.udp_sample(60.0, rx=1, tx=10) == []  # nothing sent, nothing received
    assert p.get_timer() is None


def test_without_heartbeats_the_move_waits_for_udp_silence() -> None:
    p = TransportPolicy(TransportSettings(suspect_after=1.0, udp_silence=3.0))
    _up(p)
    p.udp_sample(1.0, rx=1, tx=1)
    p.udp_sample(1.5, rx=1, tx=2)
    assert p.udp_sample(2.5, rx=1, tx=3, can_probe=False) == [A.DIAL_TCP]
    assert p.get_timer() == 4.25  # udp_silence after the first unanswered send (≈1.25)
    p.tcp_established(2.7)
    assert p.handle_timer(4.2) == []
    assert p.handle_timer(4.25) == [A.CLOSE_UDP, A.CARRY_TCP]


def test_a_standby_ready_when_udp_is_lost_carries_at_once() -> None:
    p = TransportPolicy(TransportSettings())
    _up(p)
    p.udp_sample(1.0, rx=1, tx=1)
    p.udp_sample(1.1, rx=1, tx=2)
    p.udp_sample(2.1, rx=1, tx=3)
    p.tcp_established(2.2)
    assert p.udp_lost(2.3) == [A.CARRY_TCP]  # e.g. PeerUnresponsive


def test_a_lost_standby_is_forgotten() -> None:
    p = TransportPolicy(TransportSettings())
    _up(p)
    p.udp_sample(1.0, rx=1, tx=1)
    p.udp_sample(1.1, rx=1, tx=2)
    p.udp_sample(2.1, rx=1, tx=3)
    assert p.tcp_lost(2.2) == []
    assert not p.tcp_active and p.carrier is Carrier.UDP
    assert p.handle_timer(2.7) == [A.CLOSE_UDP, A.DIAL_TCP]  # still unanswered: dial again


def test_lost_tcp_tries_udp_first_again() -> None:
    p = TransportPolicy(TransportSettings())
    p.start(0.0)
    p.handle_timer(3.0)
    p.tcp_established(3.1)
    assert p.tcp_lost(20.0) == [A.DIAL_UDP]
    assert p.carrier is None and p.get_timer() == 23.0


def test_udp_back_before_tcp_finished_wins() -> None:
    p = TransportPolicy(TransportSettings())
    p.start(0.0)
    p.handle_timer(3.0)  # -> DIAL_TCP
    p.tcp_lost(3.5)  # -> DIAL_UDP again
    assert p.udp_established(3.6) == [A.CARRY_UDP]
    p2 = TransportPolicy(TransportSettings())
    p2.start(0.0)
    p2.udp_established(0.5)
    p2.tcp_active = True  # a stray TCP attempt completing late
    assert p2.tcp_established(1.0) == [A.CLOSE_TCP] and p2.carrier is Carrier.UDP


@pytest.mark.parametrize("mode, first", [("udp", A.DIAL_UDP), ("tcp", A.DIAL_TCP)])
def test_forced_modes_never_move(mode: str, first: Action) -> None:
    p = TransportPolicy(TransportSettings(mode=mode))
    assert p.start(0.0) == [first]
    assert p.get_timer() is None  # no fallback deadline, no probes
    if mode == "udp":
        p.udp_established(1.0)
        p.udp_sample(5.0, rx=1, tx=1)
        assert p.udp_sample(10.0, rx=1, tx=9) == []
        assert p.udp_lost(10.0) == []
    else:
        p.tcp_established(1.0)
        assert p.handle_timer(100.0) == []
        assert p.tcp_lost(100.0) == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(UsageError, match="auto, udp, tcp"):
        TransportSettings(mode="quic")
    with pytest.raises(UsageError, match="udp_timeout"):
        TransportSettings(udp_timeout=0)


_INPUTS = st.sampled_from(["udp_up", "udp_lost", "tcp_up", "tcp_lost", "timer", "silent",
                           "answer"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["auto", "udp", "tcp"]), st.lists(_INPUTS, max_size=30))
def test_invariants_hold_for_any_sequence(mode: str, inputs: list[str]) -> None:
    """At most one attempt per carrier; the carrier is one that is active; forced
    modes never dial the other carrier."""
    p = TransportPolicy(TransportSettings(mode=mode))
    now = 0.0
    actions = p.start(now)
    for what in inputs:
        now += 1.7
        now, more = _step(p, what, now)
        actions += more
        if p.carrier is Carrier.UDP:
            assert p.udp_active
        if p.carrier is Carrier.TCP:
            assert p.tcp_active
    if mode == "udp":
        assert A.DIAL_TCP not in actions
    if mode == "tcp":
        assert A.DIAL_UDP not in actions


def _step(p: TransportPolicy, what: str, now: float) -> tuple[float, list[Action]]:
    """One input the shell could give in the policy's current state."""
    if what == "udp_up" and p.udp_active:
        return now, p.udp_established(now)
    if what == "udp_lost" and p.udp_active:
        return now, p.udp_lost(now)
    if what == "tcp_up" and p.tcp_active:
        return now, p.tcp_established(now)
    if what == "tcp_lost" and p.tcp_active:
        return now, p.tcp_lost(now)
    if what == "timer" and (t := p.get_timer()) is not None:
        now = max(now, t)
        return now, p.handle_timer(now)
    if what == "silent":
        return now, p.udp_sample(now, rx=0, tx=int(now * 10))
    if what == "answer":
        return now, p.udp_sample(now, rx=int(now * 10), tx=int(now * 10))
    return now, []
