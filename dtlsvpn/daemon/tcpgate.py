"""Admission in front of the server's TCP listener: what ``accept`` may let in.

The UDP side keeps no state before a valid cookie and caps half-open associations per
source (``dtls/admission.py``).  TCP has no cookie: the kernel finished the three-way
handshake, so the source address is real, but every accepted connection holds a
descriptor, a ``StreamAssociation`` and a timer until its TLS handshake completes or
times out (30 s).  Two caps bound that:

* at most ``max_pending`` connections in their TLS handshake, all sources together;
* at most ``max_pending_per_source`` from one source: an IPv4 address (/32), or an
  IPv6 /64 (one host may hold a whole /64; an IPv4-mapped address counts as IPv4).

A connection over its source's cap is accepted and closed at once (the listen backlog
must not fill with it) and counted, ``tcp_source_limited`` among the interface drops.
When all ``max_pending`` places are taken, the connection pending the longest is closed
to make room (``tcp_pending_evicted``): sources that each stay under their cap could
otherwise hold every place with idle connections and keep real clients out; now they
would have to open ``max_pending`` connections within one real client's handshake.  A
completed handshake, or a closed connection, frees its place.

The over-cap line is rate-limited with :class:`~dtlsvpn.daemon.loop.Throttle`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Generic, TypeVar

from dtlsvpn.daemon.udp import normalise


@dataclass(frozen=True, slots=True)
class TcpLimits:
    max_pending: int = 256  # connections in their TLS handshake, all sources
    max_pending_per_source: int = 16  # ... from one /32 (IPv4) or /64 (IPv6)
    accept_backoff: float = 1.0  # seconds the listener rests after EMFILE and the like

    def __post_init__(self) -> None:
        if self.max_pending < 1 or self.max_pending_per_source < 1:
            raise ValueError("TCP admission limits must be at least 1")
        if self.accept_backoff <= 0:
            raise ValueError("accept_backoff must be positive")


def source_of(addr: tuple[object, ...]) -> str:
    """The unit a per-source cap counts: ``a.b.c.d`` or the IPv6 ``prefix::/64``."""
    host = normalise(addr)[0]
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


L = TypeVar("L")  # a link (``StreamLink`` in the daemon)


class Pending(Generic[L]):
    """Connections accepted whose TLS handshake has not completed, by source."""

    __slots__ = ("_by_source", "_source", "limits")

    def __init__(self, limits: TcpLimits | None = None) -> None:
        self.limits = limits or TcpLimits()
        self._source: dict[L, str] = {}  # link -> its source, oldest first
        self._by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._source)

    def refuse(self, source: str) -> str | None:
        """The drop reason when ``source`` may not open one more, else None."""
        lim = self.limits
        if self._by_source.get(source, 0) >= lim.max_pending_per_source:
            return "tcp_source_limited"
        if len(self._source) >= lim.max_pending:
            return "tcp_pending_full"
        return None

    def oldest(self) -> L | None:
        """The link pending the longest (the one a full table gives up for a new one)."""
        return next(iter(self._source), None)

    def opened(self, link: L, source: str) -> None:
        self._source[link] = source
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def done(self, link: L) -> None:
        """The handshake completed, or the connection is gone: its place is free."""
        source = self._source.pop(link, None)
        if source is None:
            return
        n = self._by_source[source] - 1
        if n:
            self._by_source[source] = n
        else:
            del self._by_source[source]

    def from_source(self, source: str) -> int:
        return self._by_source.get(source, 0)
