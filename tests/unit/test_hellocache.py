"""The replay cache of cookie-bearing ClientHellos (dtls/hellocache.py): expiry with the
cookie secrets' slots, the cap, and a Hypothesis model of both."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.crypto.cookie import CookieSecrets
from dtlsvpn.dtls.hellocache import KEY_LEN, HelloReplayCache
from dtlsvpn.errors import UsageError

PERIOD = 300.0


def _cookie(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def test_remembered_until_no_cookie_of_its_time_is_valid() -> None:
    cache = HelloReplayCache(PERIOD)
    cache.remember(_cookie(1), 10.0)  # slot 0
    assert cache.seen(_cookie(1), 10.0) and not cache.seen(_cookie(2), 10.0)
    assert cache.seen(_cookie(1), 599.9)  # slot 1: a slot-0 cookie is still accepted
    assert not cache.seen(_cookie(1), 600.0)  # slot 2: it is not
    assert len(cache) == 0


def test_expiry_matches_the_cookie_secrets() -> None:
    """For a cookie made at t0 and used at t1, the cache holds it exactly as long as
    CookieSecrets still accepts that cookie (the replay window is then closed)."""
    for t0, t1 in [(0.0, 0.0), (0.0, 299.0), (299.0, 301.0), (10.0, 350.0)]:
        counter = itertools.count(1)

        def random_bytes(n: int, counter: itertools.count[int] = counter) -> bytes:
            return next(counter).to_bytes(n, "big")

        secrets = CookieSecrets(random_bytes, rotate_every=PERIOD)
        cookie = secrets.make(t0, b"peer", b"params")
        assert secrets.check(t1, b"peer", b"params", cookie)
        cache = HelloReplayCache(PERIOD)
        cache.remember(cookie, t1)
        for t in [t1 + d for d in (0.0, 1.0, 150.0, 299.0, 300.0, 599.0, 600.0, 900.0)]:
            valid = secrets.check(t, b"peer", b"params", cookie)
            if valid:
                assert cache.seen(cookie, t), (t0, t1, t)
        assert not secrets.check(t1 + 900.0, b"peer", b"params", cookie)
        assert not cache.seen(cookie, t1 + 900.0)


def test_idle_for_two_periods_forgets_everything() -> None:
    cache = HelloReplayCache(PERIOD)
    cache.remember(_cookie(1), 0.0)
    cache.remember(_cookie(2), 301.0)
    assert len(cache) == 2
    assert not cache.seen(_cookie(2), 1000.0) and len(cache) == 0


def test_a_clock_that_goes_back_forgets_nothing() -> None:
    cache = HelloReplayCache(PERIOD)
    cache.remember(_cookie(1), 400.0)
    assert cache.seen(_cookie(1), 100.0) and cache.seen(_cookie(1), 500.0)


def test_cap_stops_remembering_and_counts() -> None:
    cache = HelloReplayCache(PERIOD, max_entries=3)
    for i in range(5):
        cache.remember(_cookie(i), 1.0)
    assert len(cache) == 3 and cache.full == 2
    assert cache.seen(_cookie(2), 1.0) and not cache.seen(_cookie(4), 1.0)
    assert not cache.seen(_cookie(0), 600.0)  # the generations expire: room again
    cache.remember(_cookie(4), 600.0)
    assert cache.seen(_cookie(4), 600.0)


def test_key_is_a_prefix_of_the_cookie() -> None:
    cache = HelloReplayCache(PERIOD)
    cache.remember(b"a" * 32, 0.0)
    assert cache.seen(b"a" * KEY_LEN + b"b" * (32 - KEY_LEN), 0.0)


def test_bad_parameters() -> None:
    with pytest.raises(UsageError):
        HelloReplayCache(0.0)
    with pytest.raises(UsageError):
        HelloReplayCache(PERIOD, max_entries=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.floats(0.0, 400.0)),
                max_size=40),
       st.integers(1, 6))
def test_model(ops: list[tuple[bool, int, float]], cap: int) -> None:
    """Against a model: a cookie is seen iff it was remembered (under the cap) in the
    current slot or the one before, with time moving forward (the endpoint remembers
    only a cookie it has not seen)."""
    cache = HelloReplayCache(PERIOD, max_entries=cap)
    model: dict[int, int] = {}  # cookie -> slot it was remembered in
    now = 0.0
    last_slot: int | None = None
    for remember, i, dt in ops:
        now += dt
        slot = int(now // PERIOD)
        model = {k: s for k, s in model.items() if s >= slot - 1}
        if last_slot is not None and slot > last_slot + 1:
            model = {}
        last_slot = slot
        if remember and not cache.seen(_cookie(i), now):  # as the endpoint: seen, then remember
            if i not in model and len(model) < cap:
                model[i] = slot
            cache.remember(_cookie(i), now)
        assert cache.seen(_cookie(i), now) == (i in model)
