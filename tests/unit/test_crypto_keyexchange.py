"""dtlsvpn.crypto.keyexchange: ECDHE agreement, point validation, PSK premaster layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.crypto.keyexchange import (
    generate_key_share,
    load_key_share,
    psk_premaster,
)
from dtlsvpn.errors import IllegalParameter, UsageError
from dtlsvpn.wire.constants import NamedGroup

X25519_VEC = json.loads((Path(__file__).parents[1] / "vectors" / "crypto_x25519.json").read_text())
GROUPS = [NamedGroup.x25519, NamedGroup.secp256r1, NamedGroup.secp384r1]
PUBLIC_LEN = {NamedGroup.x25519: 32, NamedGroup.secp256r1: 65, NamedGroup.secp384r1: 97}
SECRET_LEN = {NamedGroup.x25519: 32, NamedGroup.secp256r1: 32, NamedGroup.secp384r1: 48}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_both_sides_agree(group: NamedGroup) -> None:
    a, b = generate_key_share(group), generate_key_share(group)
    assert a.group == b.group == group
    pa, pb = a.public_bytes(), b.public_bytes()
    assert len(pa) == PUBLIC_LEN[group]
    if group != NamedGroup.x25519:
        assert pa[0] == 0x04  # RFC 8422 §5.4.1: uncompressed
    shared = a.exchange(pb)
    assert shared == b.exchange(pa)
    assert len(shared) == SECRET_LEN[group]


def test_rfc7748_vector() -> None:
    v = X25519_VEC
    alice = load_key_share(NamedGroup.x25519, bytes.fromhex(v["alice_private"]))
    bob = load_key_share(NamedGroup.x25519, bytes.fromhex(v["bob_private"]))
    assert alice.public_bytes().hex() == v["alice_public"]
    assert bob.public_bytes().hex() == v["bob_public"]
    assert alice.exchange(bytes.fromhex(v["bob_public"])).hex() == v["shared"]
    assert bob.exchange(bytes.fromhex(v["alice_public"])).hex() == v["shared"]


@pytest.mark.parametrize("group", [NamedGroup.secp256r1, NamedGroup.secp384r1])
def test_load_ec_share_matches_cryptography(group: NamedGroup) -> None:
    curve = ec.SECP256R1() if group == NamedGroup.secp256r1 else ec.SECP384R1()
    scalar = 0x1234567890ABCDEF
    share = load_key_share(group, scalar.to_bytes(32, "big"))
    key = ec.derive_private_key(scalar, curve)
    peer = generate_key_share(group)
    peer_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, peer.public_bytes())
    assert share.exchange(peer.public_bytes()) == key.exchange(ec.ECDH(), peer_key)


@pytest.mark.parametrize(
    "peer",
    [
        b"",
        bytes(31),
        bytes(33),
        bytes(32),  # u = 0: all-zero shared secret
        b"\x01" + bytes(31),  # u = 1: small-order point, all-zero shared secret
    ],
)
def test_x25519_bad_peer_values(peer: bytes) -> None:
    with pytest.raises(IllegalParameter):
        generate_key_share(NamedGroup.x25519).exchange(peer)


@pytest.mark.parametrize("group", [NamedGroup.secp256r1, NamedGroup.secp384r1])
def test_ec_bad_points(group: NamedGroup) -> None:
    share = generate_key_share(group)
    good = generate_key_share(group).public_bytes()
    n = (len(good) - 1) // 2
    bad = [
        b"",
        b"\x00",  # the point at infinity
        good[:-1],
        good + b"\x00",
        b"\x02" + good[1 : 1 + n],  # compressed form is not accepted
        b"\x03" + good[1 : 1 + n],
        b"\x05" + good[1:],  # unknown form byte
        b"\x04" + bytes(2 * n),  # (0, 0) is not on the curve
        good[:-1] + bytes([good[-1] ^ 1]),  # y altered: off the curve
        b"\x04" + b"\xff" * (2 * n),  # coordinates outside the field
    ]
    for point in bad:
        with pytest.raises(IllegalParameter):
            share.exchange(point)
    # A point of the other curve has the wrong length.
    other = NamedGroup.secp384r1 if group == NamedGroup.secp256r1 else NamedGroup.secp256r1
    with pytest.raises(IllegalParameter):
        share.exchange(generate_key_share(other).public_bytes())


@given(group=st.sampled_from(GROUPS), data=st.binary(max_size=120))
def test_exchange_only_raises_illegal_parameter(group: NamedGroup, data: bytes) -> None:
    share = generate_key_share(group)
    try:
        out = share.exchange(data)
    except IllegalParameter:
        return
    assert len(out) == SECRET_LEN[group]


def test_unknown_group() -> None:
    with pytest.raises(UsageError):
        generate_key_share(25)  # type: ignore[arg-type]  # secp521r1, not offered
    with pytest.raises(UsageError):
        load_key_share(30, bytes(32))  # type: ignore[arg-type]  # x448


def test_psk_premaster_plain_rfc4279() -> None:
    # RFC 4279 §2: other_secret is N zero bytes, N = len(psk); both length-prefixed.
    psk = bytes.fromhex("0102030405")
    assert psk_premaster(psk) == bytes.fromhex("0005" "0000000000" "0005" "0102030405")


def test_psk_premaster_ecdhe_rfc5489() -> None:
    # RFC 5489 §2: other_secret is the ECDH shared secret (RFC 8422 §5.10).
    a, b = generate_key_share(NamedGroup.x25519), generate_key_share(NamedGroup.x25519)
    z = a.exchange(b.public_bytes())
    psk = b"sixteen byte psk"
    pms = psk_premaster(psk, z)
    assert pms == (32).to_bytes(2, "big") + z + (16).to_bytes(2, "big") + psk
    assert len(pms) == 2 + 32 + 2 + 16


def test_psk_premaster_limits() -> None:
    with pytest.raises(UsageError):
        psk_premaster(b"")
    with pytest.raises(UsageError):
        psk_premaster(bytes(70000))
