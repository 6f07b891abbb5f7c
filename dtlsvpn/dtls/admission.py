"""Admission control in front of the server endpoint: HelloVerifyRequest rate limits and
the cap on half-open associations per source address.

HelloVerifyRequests (security.md S13, "flood" in the README): each costs an HMAC and a
send, so a spoofed ClientHello flood turns into CPU the tunnels do not get and into
reflected datagrams.  Two token buckets bound them:

* a **global** bucket (``global_rate`` per second, ``global_burst`` deep);
* a **per-source** bucket, without per-source state: the source host is hashed with
  a secret salt into one of ``slots`` buckets allocated once (two float arrays).  A
  flood from many spoofed addresses spreads over the slots and meets the global
  bucket; a flood from one address meets its slot's bucket.  Memory does not grow
  with the number of sources, so the endpoint still keeps no state per source before
  a valid cookie (RFC 6347 §4.2.1).

A ClientHello over either limit is dropped silently (``hvr_rate_limited``): the
client's retransmission timer asks again.

Half-open associations (cookie verified, handshake not finished) per source host
are capped at ``max_half_open_per_source`` (``source_limited``), so one host, even
one that can receive its cookies, cannot fill the association table.  This is state
after a valid cookie only; entries are dropped when their association is
established or closed.

New associations (a cookie-verified ClientHello, each a full server flight: an ECDHE
key and a signature) also meet a per-source bucket of their own (``new_per_source_rate``,
the same hashed slots; ``association_rate_limited``).  A cookie stays valid for minutes
and proves only that its sender can receive at the address, so without it one captured
cookie-bearing ClientHello, replayed with an alert that closes each half-open
association, bought a full handshake's work per replay, past the HelloVerifyRequest
buckets and the half-open cap; and an on-path observer could replay a victim's to
reflect the server's flights at it.

Sans-I/O: the caller passes ``now``; the salt comes from the config's
``random_bytes``.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class _Assoc(Protocol):
    @property
    def is_established(self) -> bool: ...

    @property
    def is_closed(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    global_rate: float = 2000.0  # HelloVerifyRequests per second, all sources together
    global_burst: float = 4000.0
    per_source_rate: float = 20.0  # per source host (hashed slot)
    per_source_burst: float = 40.0
    slots: int = 4096
    max_half_open_per_source: int = 32
    new_per_source_rate: float = 20.0  # new associations per second per source host
    new_per_source_burst: float = 40.0

    def __post_init__(self) -> None:
        if min(self.global_rate, self.global_burst, self.per_source_rate,
               self.per_source_burst, self.new_per_source_rate,
               self.new_per_source_burst) <= 0 or self.slots < 1:
            raise ValueError("admission limits must be positive")
        if self.max_half_open_per_source < 1:
            raise ValueError("max_half_open_per_source must be at least 1")


def _refilled(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """A token bucket's level at ``now``: ``tokens`` at ``last``, ``rate`` a second more,
    at most ``burst`` (a clock that went back adds nothing)."""
    return min(burst, tokens + max(0.0, now - last) * rate)


class Admission:
    """The HelloVerifyRequest buckets and the half-open table of one endpoint."""

    __slots__ = ("_g_last", "_g_tokens", "_half_open", "_last", "_n_last", "_n_tokens",
                 "_salt", "_tokens", "association_rate_limited", "hvr_rate_limited", "limits",
                 "source_limited")

    def __init__(self, random_bytes: Callable[[int], bytes],
                 limits: AdmissionLimits | None = None) -> None:
        self.limits = lim = limits or AdmissionLimits()
        self._salt = random_bytes(16)
        self._tokens = array("d", [lim.per_source_burst]) * lim.slots
        self._last = array("d", [0.0]) * lim.slots
        self._n_tokens = array("d", [lim.new_per_source_burst]) * lim.slots
        self._n_last = array("d", [0.0]) * lim.slots
        self._g_tokens = lim.global_burst
        self._g_last = 0.0
        self._half_open: dict[str, list[_Assoc]] = {}
        self.hvr_rate_limited = 0
        self.source_limited = 0
        self.association_rate_limited = 0

    # --- HelloVerifyRequests ---------------------------------------------------------

    def _slot(self, host: str) -> int:
        digest = hashlib.blake2b(host.encode(), key=self._salt, digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.limits.slots

    def allow_hello_verify(self, host: str, now: float) -> bool:
        """True if a HelloVerifyRequest may be sent to ``host`` now (and charge it)."""
        lim = self.limits
        g = _refilled(self._g_tokens, self._g_last, now, lim.global_rate, lim.global_burst)
        self._g_last = now
        i = self._slot(host)
        t = _refilled(self._tokens[i], self._last[i], now, lim.per_source_rate,
                      lim.per_source_burst)
        self._last[i] = now
        if g < 1.0 or t < 1.0:
            self._g_tokens, self._tokens[i] = g, t
            self.hvr_rate_limited += 1
            return False
        self._g_tokens, self._tokens[i] = g - 1.0, t - 1.0
        return True

    # --- half-open associations ----------------------------------------------------------

    def admit(self, host: str, now: float) -> bool:
        """True if ``host`` may open one more association now (and charge it; the caller
        then ``opened`` it)."""
        live = [a for a in self._half_open.get(host, ())
                if not a.is_established and not a.is_closed]
        if live:
            self._half_open[host] = live
        else:
            self._half_open.pop(host, None)
        lim = self.limits
        if len(live) >= lim.max_half_open_per_source:
            self.source_limited += 1
            return False
        i = self._slot(host)
        t = _refilled(self._n_tokens[i], self._n_last[i], now, lim.new_per_source_rate,
                      lim.new_per_source_burst)
        self._n_last[i] = now
        if t < 1.0:
            self._n_tokens[i] = t
            self.association_rate_limited += 1
            return False
        self._n_tokens[i] = t - 1.0
        return True

    def opened(self, host: str, assoc: _Assoc) -> None:
        self._half_open.setdefault(host, []).append(assoc)
        if len(self._half_open) > 4 * self.limits.slots:
            self._prune()

    def _prune(self) -> None:
        for host in list(self._half_open):
            live = [a for a in self._half_open[host]
                    if not a.is_established and not a.is_closed]
            if live:
                self._half_open[host] = live
            else:
                del self._half_open[host]

    def half_open(self, host: str) -> int:
        return sum(1 for a in self._half_open.get(host, ())
                   if not a.is_established and not a.is_closed)
