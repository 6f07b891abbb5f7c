"""Ephemeral ECDH key shares and the PSK premaster secret.

Purpose: produce our ECDHE public value, turn the peer's into a shared
secret, and lay out the premaster secret of the PSK suites.

Invariants:
- Groups: x25519, secp256r1, secp384r1 (protocol.md; RFC 8422 §5.1.1).
- NIST curve points are sent and accepted uncompressed only (RFC 8422 §5.1.2,
  §5.4.1); a point of the wrong length, in another format, or not on the curve
  is refused with illegal_parameter (RFC 8422 §5.11 requires the check).
- X25519 public values are 32 raw bytes (RFC 8422 §5.4.1, RFC 7748 §5); an
  all-zero shared secret is refused (RFC 8422 §5.11, RFC 7748 §6.1).
- The premaster secret is the ECDH shared secret, x-coordinate only
  (RFC 8422 §5.10), for ECDHE suites; PSK suites wrap it per RFC 4279 §2 /
  RFC 5489 §2.
- Key shares are one-shot objects; tests inject deterministic ones through a
  :data:`KeyShareFactory` (architecture.md: key-share factory seam).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dtlsvpn.errors import IllegalParameter, UsageError
from dtlsvpn.wire.constants import NamedGroup


class KeyShare(Protocol):
    """Our half of one ephemeral ECDH exchange."""

    group: NamedGroup

    def public_bytes(self) -> bytes: ...

    def exchange(self, peer_public: bytes) -> bytes: ...


KeyShareFactory = Callable[[NamedGroup], KeyShare]

_X25519_LEN = 32


class X25519Share:
    """An X25519 key share (RFC 7748)."""

    __slots__ = ("_key", "group")

    def __init__(self, key: x25519.X25519PrivateKey | None = None) -> None:
        self.group = NamedGroup.x25519
        self._key = key if key is not None else x25519.X25519PrivateKey.generate()

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def exchange(self, peer_public: bytes) -> bytes:
        if len(peer_public) != _X25519_LEN:
            raise IllegalParameter(f"x25519 public value must be 32 bytes, got {len(peer_public)}")
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(bytes(peer_public))
            shared = self._key.exchange(peer)
        except ValueError as exc:  # cryptography refuses low-order points itself
            raise IllegalParameter(f"x25519 exchange failed: {exc}") from None
        # RFC 7748 §6.1 / RFC 8422 §5.11: an all-zero result MUST be refused.
        if not any(shared):
            raise IllegalParameter("x25519 shared secret is all zero")
        return shared


_CURVES: dict[NamedGroup, tuple[type[ec.EllipticCurve], int]] = {
    NamedGroup.secp256r1: (ec.SECP256R1, 32),
    NamedGroup.secp384r1: (ec.SECP384R1, 48),
}


class EcdhShare:
    """An ECDH key share on a NIST prime curve, uncompressed points only."""

    __slots__ = ("_coord_len", "_curve", "_key", "group")

    def __init__(self, group: NamedGroup, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        try:
            curve_cls, coord_len = _CURVES[group]
        except KeyError:
            raise UsageError(f"{group!r} is not a NIST curve group") from None
        self.group = group
        self._curve = curve_cls()
        self._coord_len = coord_len
        if key is not None and not isinstance(key.curve, curve_cls):
            raise UsageError(f"private key is on {key.curve.name}, not {group.name}")
        self._key = key if key is not None else ec.generate_private_key(self._curve)

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def exchange(self, peer_public: bytes) -> bytes:
        # RFC 8422 §5.4.1: uncompressed form only: 0x04 || X || Y.
        if len(peer_public) != 1 + 2 * self._coord_len or peer_public[0] != 4:
            raise IllegalParameter(f"{self.group.name}: not an uncompressed point")
        try:
            # Checks that the point is on the curve (RFC 8422 §5.11).
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, bytes(peer_public))
            return self._key.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise IllegalParameter(f"{self.group.name}: invalid point: {exc}") from None


def _named_group(group: int) -> NamedGroup:
    try:
        return NamedGroup(group)
    except ValueError:
        raise UsageError(f"unsupported group {group!r}") from None


def generate_key_share(group: NamedGroup) -> KeyShare:
    """A fresh key share for ``group`` (UsageError for a group we do not support)."""
    named = _named_group(group)
    if named is NamedGroup.x25519:
        return X25519Share()
    return EcdhShare(named)


def load_key_share(group: NamedGroup, private: bytes) -> KeyShare:
    """A key share from a fixed private value, for reproducible test transcripts.

    X25519: the 32-byte scalar (RFC 7748 §5). NIST curves: the big-endian scalar.
    """
    named = _named_group(group)
    if named is NamedGroup.x25519:
        return X25519Share(x25519.X25519PrivateKey.from_private_bytes(private))
    curve_cls, _ = _CURVES[named]
    key = ec.derive_private_key(int.from_bytes(private, "big"), curve_cls())
    return EcdhShare(named, key)


_U16 = struct.Struct("!H")


def psk_premaster(psk: bytes, other_secret: bytes | None = None) -> bytes:
    """The premaster secret of the PSK suites.

    RFC 4279 §2: uint16 len(other_secret) + other_secret + uint16 len(psk) + psk;
    for plain PSK other_secret is len(psk) zero bytes. RFC 5489 §2: for
    ECDHE_PSK, other_secret is the ECDH shared secret (RFC 8422 §5.10).
    """
    if not 0 < len(psk) <= 0xFFFF:
        raise UsageError("PSK must be 1..65535 bytes")
    other = bytes(len(psk)) if other_secret is None else other_secret
    if len(other) > 0xFFFF:
        raise UsageError("other_secret longer than 65535 bytes")
    return _U16.pack(len(other)) + other + _U16.pack(len(psk)) + psk
