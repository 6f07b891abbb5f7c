"""Stateless HelloVerifyRequest cookies.

Purpose: let the server check that a ClientHello comes from an address that
can receive our replies, before it keeps any state or does any asymmetric
crypto (RFC 6347 §4.2.1; security.md S13).

Invariants:
- cookie = HMAC-SHA256(secret, len(peer) + peer + hello_params), 32 bytes.
  RFC 6347 §4.2.1 suggests exactly this shape: "Cookie = HMAC(Secret,
  Client-IP, Client-Parameters)". The length prefix keeps the address and the
  parameters from running into each other.
- The secret changes every ``rotate_every`` seconds of the caller's clock;
  a cookie made under the previous secret is still accepted (RFC 6347 §4.2.1
  allows a limited window in which both secrets are accepted, so clients can
  handshake through a change), one made two secrets ago is not. Rotation is
  lazy: it happens when ``make``/``check`` see ``now``. Rotation slots are
  aligned on multiples of ``rotate_every``, so a cookie lives at most two
  periods.
- Comparison is constant-time (hmac.compare_digest).
- No per-client state: the object holds two secrets and nothing else
  (RFC 6347 §4.2.1: cookies SHOULD be verifiable without per-client state).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from dtlsvpn.errors import UsageError

COOKIE_LEN = 32
SECRET_LEN = 32
_U16 = struct.Struct("!H")


class CookieSecrets:
    """The server's current and previous cookie secrets."""

    __slots__ = ("_current", "_period", "_previous", "_random_bytes", "_slot")

    def __init__(self, random_bytes: Callable[[int], bytes], rotate_every: float = 300.0) -> None:
        if not rotate_every > 0:
            raise UsageError("rotate_every must be positive")
        self._random_bytes = random_bytes
        self._period = float(rotate_every)
        self._current = self._new_secret()
        self._previous: bytes | None = None
        self._slot: int | None = None

    @property
    def period(self) -> float:
        """Seconds between two secrets (a cookie lives at most two periods)."""
        return self._period

    def _new_secret(self) -> bytes:
        secret = self._random_bytes(SECRET_LEN)
        if len(secret) != SECRET_LEN:
            raise UsageError("random_bytes returned the wrong length")
        return secret

    def _rotate(self, now: float) -> None:
        slot = int(now // self._period)
        if self._slot is None:
            self._slot = slot
        elif slot == self._slot + 1:
            self._previous = self._current
            self._current = self._new_secret()
            self._slot = slot
        elif slot > self._slot + 1:
            # Idle for two periods or more: everything issued before is stale.
            self._previous = None
            self._current = self._new_secret()
            self._slot = slot

    @staticmethod
    def _mac(secret: bytes, peer: bytes, hello_params: bytes) -> bytes:
        return hmac.digest(secret, _U16.pack(len(peer)) + peer + hello_params, hashlib.sha256)

    def make(self, now: float, peer: bytes, hello_params: bytes) -> bytes:
        """The cookie for a HelloVerifyRequest to ``peer``."""
        self._rotate(now)
        return self._mac(self._current, peer, hello_params)[:COOKIE_LEN]

    def check(self, now: float, peer: bytes, hello_params: bytes, cookie: bytes) -> bool:
        """True when ``cookie`` was made for this peer and parameters by a live secret."""
        self._rotate(now)
        if len(cookie) != COOKIE_LEN:
            return False
        ok = hmac.compare_digest(self._mac(self._current, peer, hello_params), cookie)
        if self._previous is not None:
            ok |= hmac.compare_digest(self._mac(self._previous, peer, hello_params), cookie)
        return ok
