"""The client's dialer (daemon/dialer.py) alone: every state × input, and the back-off."""

from __future__ import annotations

import itertools
import random

import pytest

from dtlsvpn.daemon.dialer import (
    BACKOFF_CAP,
    DIAL_TIMEOUT,
    STABLE,
    DialAction,
    Dialer,
    DialState,
)

WAITING = {DialState.DIALLING, DialState.HANDSHAKING, DialState.BACKING_OFF}


def test_a_dial_that_completes() -> None:
    d = Dialer(random.Random(1))
    assert d.state is DialState.DOWN and d.deadline is None
    d.start(100.0)
    assert (d.state, d.deadline) == (DialState.DIALLING, 100.0)
    assert d.due(99.0) is None  # not yet
    assert d.due(100.0) is DialAction.DIAL and d.deadline is None
    d.dialled(100.0)
    assert (d.state, d.deadline) == (DialState.HANDSHAKING, 100.0 + DIAL_TIMEOUT)
    d.established(100.5)
    assert (d.state, d.deadline, d.attempt) == (DialState.UP, None, 0)


def test_timeouts_back_off_capped_and_jittered_then_reset() -> None:
    d = Dialer(random.Random(7))
    d.start(0.0)
    now, delays = 0.0, []
    for n in range(12):
        assert d.due(now) is DialAction.DIAL
        d.dialled(now)
        now = d.deadline or now
        assert d.due(now) is DialAction.TIMED_OUT
        delay = d.lost(now)
        assert delay is not None and d.state is DialState.BACKING_OFF
        ceiling = min(BACKOFF_CAP, 2.0 ** n)
        assert ceiling / 2 <= delay <= ceiling
        delays.append(delay)
        now = d.deadline or now
    assert len({round(x, 6) for x in delays[6:]}) > 1  # jittered at the cap
    assert d.due(now) is DialAction.DIAL
    d.dialled(now)
    d.established(now)
    assert d.attempt == 12  # a handshake alone proves nothing: the server may end it
    now += STABLE  # up for a while: a loss now is a new outage
    assert d.lost(now) is not None and d.attempt == 1 and d.lost(now) is None  # once only


def test_a_refusal_right_after_the_handshake_backs_off_to_the_cap() -> None:
    """A server that completes the handshake and ends it at once (close_notify: a peer it
    no longer knows) is refused every time: the back-off grows as for timeouts."""
    d = Dialer(random.Random(5))
    d.start(0.0)
    now, delays = 0.0, []
    for _ in range(10):
        assert d.due(now) is DialAction.DIAL
        d.dialled(now)
        d.established(now + 0.01)
        delay = d.lost(now + 0.02)
        assert delay is not None
        delays.append(delay)
        now = d.deadline or now
    assert delays[-1] >= BACKOFF_CAP / 2 and max(delays) <= BACKOFF_CAP
    assert delays == sorted(delays[:5]) + delays[5:]  # growing until the cap


def test_redial_now_keeps_the_count() -> None:
    d = Dialer(random.Random(6))
    d.start(0.0)
    d.due(0.0)
    d.lost(0.0)
    d.redial_now(0.3)  # the network changed: dial now, not after the back-off
    assert (d.state, d.deadline, d.attempt) == (DialState.DIALLING, 0.3, 1)
    d.stop()
    d.redial_now(1.0)
    assert (d.state, d.deadline) == (DialState.DOWN, None)


def test_lost_while_backing_off_or_down_changes_nothing() -> None:
    d = Dialer(random.Random(2))
    assert d.lost(5.0) is None and d.state is DialState.DOWN
    d.start(0.0)
    d.due(0.0)
    d.lost(0.0)  # cannot reach the host
    deadline = d.deadline
    assert d.lost(0.5) is None and d.deadline == deadline  # (PeerUnresponsive, then closed)


STEPS = {
    "start": lambda d, now: d.start(now),
    "due": lambda d, now: d.due(now),
    "dialled": lambda d, now: d.dialled(now),
    "established": lambda d, now: d.established(now),
    "redial_now": lambda d, now: d.redial_now(now),
    "lost": lambda d, now: d.lost(now),
    "stop": lambda d, now: d.stop(),
}


@pytest.mark.parametrize("walk", list(itertools.product(STEPS, repeat=3)),
                         ids=lambda walk: "-".join(walk))
def test_every_walk_keeps_the_invariants(walk: tuple[str, ...]) -> None:
    d = Dialer(random.Random(3))
    now = 10.0
    for name in walk:
        STEPS[name](d, now)
        now += 1.0
        # A deadline only in the states that wait for one; never one in the past of
        # what it was set from, and never without a state that explains it.
        if d.deadline is not None:
            assert d.state in WAITING, walk
        if d.state in (DialState.DOWN, DialState.UP):
            assert d.deadline is None, walk
        assert d.attempt >= 0
