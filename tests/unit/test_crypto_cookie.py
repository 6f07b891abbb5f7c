"""dtlsvpn.crypto.cookie: stateless HelloVerifyRequest cookies and secret rotation."""

from __future__ import annotations

import random

import pytest

from dtlsvpn.crypto.cookie import COOKIE_LEN, CookieSecrets
from dtlsvpn.errors import UsageError

PEER = b"\xc0\x00\x02\x01" + (4433).to_bytes(2, "big")
OTHER_PEER = b"\xc0\x00\x02\x02" + (4433).to_bytes(2, "big")
PARAMS = b"client-hello-params"


def seeded(seed: int = 1):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def test_make_and_check() -> None:
    cs = CookieSecrets(seeded())
    cookie = cs.make(10.0, PEER, PARAMS)
    assert len(cookie) == COOKIE_LEN
    assert cs.check(11.0, PEER, PARAMS, cookie)


def test_other_peer_or_params_rejected() -> None:
    cs = CookieSecrets(seeded())
    cookie = cs.make(0.0, PEER, PARAMS)
    assert not cs.check(0.0, OTHER_PEER, PARAMS, cookie)
    assert not cs.check(0.0, PEER, PARAMS + b"x", cookie)
    assert not cs.check(0.0, PEER, b"", cookie)
    # The length prefix keeps the address from sliding into the parameters.
    assert not cs.check(0.0, PEER[:-1], PEER[-1:] + PARAMS, cookie)


def test_tampered_or_wrong_length_rejected() -> None:
    cs = CookieSecrets(seeded())
    cookie = cs.make(0.0, PEER, PARAMS)
    assert not cs.check(0.0, PEER, PARAMS, cookie[:-1])
    assert not cs.check(0.0, PEER, PARAMS, cookie + b"\x00")
    assert not cs.check(0.0, PEER, PARAMS, b"")
    assert not cs.check(0.0, PEER, PARAMS, bytes([cookie[0] ^ 1]) + cookie[1:])


def test_rotation_keeps_previous_secret_only() -> None:
    cs = CookieSecrets(seeded(), rotate_every=300.0)
    cookie = cs.make(1000.0, PEER, PARAMS)  # slot 3
    assert cs.check(1199.0, PEER, PARAMS, cookie)  # same slot
    assert cs.check(1250.0, PEER, PARAMS, cookie)  # slot 4: previous secret
    assert cs.make(1250.0, PEER, PARAMS) != cookie
    assert not cs.check(1500.0, PEER, PARAMS, cookie)  # slot 5: two rotations later


def test_long_idle_drops_both_secrets() -> None:
    cs = CookieSecrets(seeded(), rotate_every=10.0)
    cookie = cs.make(0.0, PEER, PARAMS)
    assert not cs.check(25.0, PEER, PARAMS, cookie)


def test_fresh_cookie_after_rotation_valid() -> None:
    cs = CookieSecrets(seeded(), rotate_every=10.0)
    cs.make(0.0, PEER, PARAMS)
    cookie = cs.make(15.0, PEER, PARAMS)
    assert cs.check(15.0, PEER, PARAMS, cookie)
    assert cs.check(21.0, PEER, PARAMS, cookie)


def test_deterministic_with_seeded_random() -> None:
    a = CookieSecrets(seeded(7)).make(0.0, PEER, PARAMS)
    b = CookieSecrets(seeded(7)).make(0.0, PEER, PARAMS)
    c = CookieSecrets(seeded(8)).make(0.0, PEER, PARAMS)
    assert a == b != c


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        CookieSecrets(seeded(), rotate_every=0)
    with pytest.raises(UsageError):
        CookieSecrets(lambda n: b"short")
