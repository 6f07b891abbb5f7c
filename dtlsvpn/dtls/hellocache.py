"""The server's memory of the cookie-bearing ClientHellos that opened an association.

A cookie (``crypto/cookie.py``) stays valid for up to two rotation periods and proves
only that its sender can receive at the address, so an on-path observer who captured a
victim's cookie-bearing ClientHello could replay it, spoofing the victim's address,
behind an alert that closes each half-open association: each replay bought a full
server flight (an ECDHE key, a signature, the certificate chain) reflected at the
victim, bounded only by the per-source new-association bucket (``dtls/admission.py``).

The endpoint remembers the cookie of each ClientHello that passed the cookie check and
the admission buckets and opened an association, and refuses (drops silently,
``hello_replayed``) a cookie-verified ClientHello with a cookie it remembers.

Key: the cookie alone.  It is an HMAC over the client's address and port and the
ClientHello's version, random, session_id, cipher_suites and compression_methods, so
the same cookie means the same address and the same hello parameters under the same
secret; a whole-body digest would let a replayer change an extension and pass.  The
first 16 bytes are kept (a collision needs 2**64 remembered cookies).  A legitimate
client is not affected: its retransmissions while its association exists are routed to
that association before any gate (``endpoint._receive_slow``), and a client that starts
over (after a failure, a renewal, a ticket resumption) sends a new random, so it gets a
new cookie.

Expiry follows the cookie secrets: two generations on the same slots as
``CookieSecrets`` (``now // rotate_every``).  A hello accepted in slot ``s`` carries a
cookie made in slot ``s`` or ``s - 1``, which no check accepts after slot ``s + 1``; so
the generation recorded in slot ``s`` is dropped when slot ``s + 2`` begins.

Memory: no state per source before a valid cookie; one entry per association opened.
At the cap (``max_entries`` in both generations together) new cookies are not
remembered (``full`` counts them) and their replays are bounded by the new-association
bucket as before; the cap never refuses a first hello.

Sans-I/O: the caller passes ``now``.
"""

from __future__ import annotations

from dtlsvpn.errors import UsageError

KEY_LEN = 16


class HelloReplayCache:
    """Two generations of remembered cookies, rotated with the cookie secrets."""

    __slots__ = ("_current", "_period", "_previous", "_slot", "full", "max_entries")

    def __init__(self, rotate_every: float, max_entries: int = 65536) -> None:
        if not rotate_every > 0 or max_entries < 1:
            raise UsageError("replay cache: rotate_every and max_entries must be positive")
        self._period = float(rotate_every)
        self.max_entries = max_entries
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._slot: int | None = None
        self.full = 0  # cookies not remembered because of the cap

    def _rotate(self, now: float) -> None:
        slot = int(now // self._period)
        if self._slot is None:
            self._slot = slot
        elif slot == self._slot + 1:
            self._previous, self._current = self._current, set()
            self._slot = slot
        elif slot > self._slot + 1:
            # Two periods or more: no cookie of either generation is valid any more.
            self._previous, self._current = set(), set()
            self._slot = slot
        # A clock that went back rotates nothing (as CookieSecrets).

    def seen(self, cookie: bytes, now: float) -> bool:
        """True when an association was already opened with this cookie."""
        self._rotate(now)
        key = cookie[:KEY_LEN]
        return key in self._current or key in self._previous

    def remember(self, cookie: bytes, now: float) -> None:
        """Record the cookie of a ClientHello that opened an association."""
        self._rotate(now)
        if len(self._current) + len(self._previous) >= self.max_entries:
            self.full += 1
            return
        self._current.add(cookie[:KEY_LEN])

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
