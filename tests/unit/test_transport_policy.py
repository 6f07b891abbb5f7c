"""vpn/transport.py: the client's UDP-first, TCP-fallback carrier policy, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.errors import UsageError
from dtlsvpn.vpn.transport import Action, Carrier, TransportPolicy, TransportSettings

A = Action


def test_auto_falls_back_when_the_dtls_handshake_gets_no_answer() -> None:
    p = TransportPolicy(TransportSettings(udp_timeout=3.0, probe_interval=10.0))
    assert p.start(0.0) == [A.DIAL_UDP]
    assert p.get_timer() == 3.0
    assert p.handle_timer(2.9) == []
    assert p.handle_timer(3.0) == [A.CLOSE_UDP, A.DIAL_TCP]
    assert p.tcp_established(3.2) == [A.CARRY_TCP]
    assert p.carrier is Carrier.TCP and p.since == 3.2
    # The UDP probe is due probe_interval later; it fails once, then succeeds.
    assert p.get_timer() == 13.2
    assert p.handle_timer(13.2) == [A.DIAL_UDP]
    assert p.handle_timer(16.2) == [A.CLOSE_UDP]  # the probe got no answer
    assert p.carrier is Carrier.TCP and p.get_timer() == 26.2
    assert p.handle_timer(26.2) == [A.DIAL_UDP]
    assert p.udp_established(26.3) == [A.CARRY_UDP, A.CLOSE_TCP]
    assert p.carrier is Carrier.UDP and p.since == 26.3 and p.switches == 1
    assert p.get_timer() is None


def test_established_udp_that_goes_silent_moves_to_tcp() -> None:
    p = TransportPolicy(TransportSettings(udp_silence=3.0))
    p.start(0.0)
    p.udp_established(0.1)
    assert p.udp_silent(5.0, last_rx=4.0, last_tx=4.9) == []  # 1 s of silence only
    assert p.udp_silent(9.0, last_rx=4.0, last_tx=3.0) == []  # nothing sent: idle, not blocked
    assert p.udp_silent(7.0, last_rx=4.0, last_tx=6.9) == [A.CLOSE_UDP, A.DIAL_TCP]
    assert p.carrier is None
    assert p.tcp_established(7.3) == [A.CARRY_TCP]


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
        assert p.udp_silent(10.0, last_rx=1.0, last_tx=9.0) == []
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


_INPUTS = st.sampled_from(["udp_up", "udp_lost", "tcp_up", "tcp_lost", "timer", "silent"])


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
        return now, p.udp_silent(now, last_rx=now - 10, last_tx=now)
    return now, []
