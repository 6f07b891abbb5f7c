"""Allowed-prefix tables: longest-prefix match on packed integers, one table per family.

A :class:`PrefixTable` maps IP prefixes (``IPv4Network`` / ``IPv6Network``) to values
(peers) and answers "which value owns this address?" with the longest matching prefix,
the rule WireGuard's AllowedIPs and every IP router use (RFC 1812 §5.2.4.3).

Representation (architecture.md rule 8): per family, one dict per prefix length
mapping the masked network as an int to its value, and the lengths present kept in
descending order.  A lookup converts the packed address (4 or 16 bytes, as sliced
out of an IP header) to an int once and tries each length, longest first: the cost
is one dict probe per distinct length in use, which in practice is two or three.
A bounded dict cache keyed by the packed address sits in front, cleared whenever the
table changes or when it fills (so a flood of distinct addresses cannot grow it).

Invariants
- Host bits of an inserted prefix are zero (``ip_network(strict=True)`` semantics:
  inserting ``10.0.0.1/24`` is a programming error and raises ``ValueError``).
- Inserting a prefix that is already present replaces its value; ``remove_value``
  drops every prefix of a value.
- ``lookup`` takes packed bytes and never raises on remote input: a length that is
  neither 4 nor 16 simply matches nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CACHE_SIZE = 4096  # packed addresses remembered in front of the matcher


class _Family(Generic[T]):
    """Prefixes of one address family."""

    __slots__ = ("bits", "by_len", "lengths", "masks")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, T]] = {}
        self.lengths: list[int] = []  # descending
        self.masks: list[tuple[int, int]] = []  # (length, mask), same order as lengths

    def rebuild(self) -> None:
        self.lengths = sorted((n for n, d in self.by_len.items() if d), reverse=True)
        full = (1 << self.bits) - 1
        self.masks = [(n, full ^ ((1 << (self.bits - n)) - 1)) for n in self.lengths]

    def match(self, addr: int) -> T | None:
        by_len = self.by_len
        for n, mask in self.masks:
            v = by_len[n].get(addr & mask)
            if v is not None:
                return v
        return None


class PrefixTable(Generic[T]):
    """Longest-prefix match from IP prefixes to values (peers)."""

    __slots__ = ("_cache", "_fam")

    def __init__(self) -> None:
        self._fam: dict[int, _Family[T]] = {4: _Family(32), 16: _Family(128)}
        self._cache: dict[bytes, T | None] = {}

    def insert(self, network: Network, value: T) -> None:
        fam = self._fam[4 if network.version == 4 else 16]
        net_int = int(network.network_address)
        fam.by_len.setdefault(network.prefixlen, {})[net_int] = value
        fam.rebuild()
        self._cache.clear()

    def remove(self, network: Network) -> T | None:
        """Remove one prefix; return the value it had (None when absent)."""
        fam = self._fam[4 if network.version == 4 else 16]
        d = fam.by_len.get(network.prefixlen)
        if d is None:
            return None
        value = d.pop(int(network.network_address), None)
        fam.rebuild()
        self._cache.clear()
        return value

    def remove_value(self, value: T) -> int:
        """Remove every prefix owned by ``value``; return how many were removed."""
        removed = 0
        for fam in self._fam.values():
            for d in fam.by_len.values():
                for k in [k for k, v in d.items() if v is value]:
                    del d[k]
                    removed += 1
            fam.rebuild()
        self._cache.clear()
        return removed

    def lookup(self, packed: bytes) -> T | None:
        """The value of the longest prefix containing the packed address, or None."""
        cache = self._cache
        try:
            return cache[packed]
        except KeyError:
            pass
        fam = self._fam.get(len(packed))
        value = None if fam is None else fam.match(int.from_bytes(packed, "big"))
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[packed] = value
        return value

    def items(self) -> Iterator[tuple[Network, T]]:
        """Every (prefix, value), IPv4 first, longest prefixes first."""
        for key, fam in self._fam.items():
            for n in fam.lengths:
                for net_int, value in fam.by_len[n].items():
                    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
                    if key == 4:
                        addr = ipaddress.IPv4Address(net_int)
                        yield ipaddress.IPv4Network((addr, n)), value
                    else:
                        addr = ipaddress.IPv6Address(net_int)
                        yield ipaddress.IPv6Network((addr, n)), value

    def __len__(self) -> int:
        return sum(len(d) for fam in self._fam.values() for d in fam.by_len.values())

