"""Connections that resume sessions, for the resumption tests: one simulator per connection.

``connect`` runs one connection from a fresh client port to a fresh ``ServerEndpoint``
(only the ticket key ring is shared) at a given simulated time, over a 25 ms one-way
path unless ``links`` says otherwise, taps both links (``Conn.c2s_seen``/``s2c_seen``)
and times the server endpoint's wall-clock work.  Randomness is seeded from the
connection's own parameters, so a result does not depend on which tests ran.
``Work`` counts the asymmetric operations of both sides (``key_share_counter`` is the
``key_share_factory`` seam; the signing and chain counters are the test module's
``work`` fixture).  The ``check_*`` helpers assert a resumed handshake or a full
fallback (3 RTT, a fresh ticket) and that data then flows both ways.
"""

from __future__ import annotations

import dataclasses
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from dtlsvpn.crypto.keyexchange import KeyShare, generate_key_share
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.dtls.events import HandshakeCompleted, SessionTicketReceived
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.wire.constants import ExtensionType, HandshakeType, NamedGroup
from dtlsvpn.wire.extensions import decode_session_ticket
from dtlsvpn.wire.handshake import decode_client_hello, parse_handshake_fragments
from dtlsvpn.wire.record import parse_datagram
from tests.pki import Pki
from tests.sim.clock import FakeClock
from tests.sim.configs import configs_for, with_changes
from tests.sim.harness import Simulator
from tests.sim.link import SimLink

DELAY = 0.025
RTT = 2 * DELAY


@dataclasses.dataclass
class Work:
    """Asymmetric operations, both sides together."""

    key_shares: int = 0
    signs: int = 0
    signature_checks: int = 0
    chain_checks: int = 0

    def snapshot(self) -> Work:
        return dataclasses.replace(self)

    def since(self, before: Work) -> Work:
        return Work(*(a - b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(before), strict=True)))

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


def key_share_counter(w: Work) -> Callable[[NamedGroup], KeyShare]:
    def factory(group: NamedGroup) -> KeyShare:
        w.key_shares += 1
        return generate_key_share(group)
    return factory


@dataclasses.dataclass
class Conn:
    """One connection's simulator and what was seen on its links."""

    sim: Simulator
    satisfied: bool
    c2s_seen: list[bytes]
    s2c_seen: list[bytes]
    server_seconds: float  # wall-clock time spent in the server endpoint
    started: float  # simulated time of connect()

    @property
    def client_done(self) -> HandshakeCompleted | None:
        return self.sim.completed("client")

    @property
    def server_done(self) -> HandshakeCompleted | None:
        return self.sim.completed("server")

    def completion_time(self, side: str) -> float:
        (t, _), = self.sim.events_of(side, HandshakeCompleted)
        return t - self.started

    @property
    def ticket(self) -> ClientSession:
        (_, ev), = self.sim.events_of("client", SessionTicketReceived)
        return ev.session

    def offered_ticket(self) -> bytes | None:
        """The session_ticket extension of the last ClientHello the client sent."""
        found: bytes | None = None
        for d in self.c2s_seen:
            for rec in parse_datagram(d)[0]:
                if rec.content_type != 22 or rec.epoch != 0:
                    continue
                for f in parse_handshake_fragments(rec.fragment):
                    if f.msg_type == HandshakeType.client_hello and f.is_whole:
                        data = decode_client_hello(f.body).ext(ExtensionType.session_ticket)
                        found = None if data is None else decode_session_ticket(data)
        return found


def connect(
    pki: Pki,
    mode: str,
    ring: TicketKeyRing,
    *,
    session: ClientSession | None = None,
    at: float = 0.0,
    seed: int = 0,
    links: tuple[SimLink, SimLink] | None = None,
    c2s_tamper: Callable[[bytes], bytes | None] | None = None,
    s2c_tamper: Callable[[bytes], bytes | None] | None = None,
    client: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    work: Work | None = None,
    watch_s2c: Callable[[Simulator, bytes], None] | None = None,
    mtu: int = 1400,
    limit: float = 5.0,
    until: str = "established",
) -> Conn:
    """One connection from a fresh client port to a fresh endpoint at simulated time ``at``.

    Randomness (both sides' ``random_bytes``, the client port) is seeded from the
    connection's own parameters, so a test's result does not depend on which tests ran.
    """
    key = f"{mode}/{seed}/{at}/{b'' if session is None else session.ticket[:8]!r}"
    extra: dict[str, Any] = {}
    if work is not None:
        extra["key_share_factory"] = key_share_counter(work)
    c, s = configs_for(mode, pki, ticket_keys=ring, mtu=mtu, **extra)
    c = with_changes(c, resume_session=session, random_bytes=random.Random(f"{key}/c").randbytes,
                     **(client or {}))
    s = with_changes(s, random_bytes=random.Random(f"{key}/s").randbytes, **(server or {}))
    c2s_seen: list[bytes] = []
    s2c_seen: list[bytes] = []

    def tap(seen: list[bytes], tamper: Callable[[bytes], bytes | None] | None,
            ) -> Callable[[bytes], bytes | None]:
        def f(data: bytes) -> bytes | None:
            out = data if tamper is None else tamper(data)
            if out is not None:
                seen.append(out)
            return out
        return f

    if links is None:
        links = (SimLink(random.Random(f"{seed}/c2s"), name="c2s", delay=DELAY),
                 SimLink(random.Random(f"{seed}/s2c"), name="s2c", delay=DELAY))
    holder: list[Simulator] = []

    def s2c_hook(data: bytes) -> bytes | None:
        if watch_s2c is not None:
            watch_s2c(holder[0], data)
        return data if s2c_tamper is None else s2c_tamper(data)

    links[0].tamper = tap(c2s_seen, c2s_tamper)
    links[1].tamper = tap(s2c_seen, s2c_hook)
    sim = Simulator(c, s, c2s=links[0], s2c=links[1], clock=FakeClock(start=at),
                    client_addr=("198.18.0.2", 40000 + zlib.crc32(key.encode()) % 20000))
    holder.append(sim)
    spent = [0.0]
    receive, handle_timer = sim.endpoint.receive, sim.endpoint.handle_timer

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper

    sim.endpoint.receive = timed(receive)  # type: ignore[method-assign]
    sim.endpoint.handle_timer = timed(handle_timer)  # type: ignore[method-assign]
    sim.connect()
    started = sim.now
    if until == "established":
        trace = sim.run_until(sim.both_established, limit)
    else:
        trace = sim.run_until(lambda: sim.client.is_closed, limit)
        sim.run_for(1.0)  # let the alert reach the other side
    conn = Conn(sim, trace.satisfied, c2s_seen, s2c_seen, spent[0], started)
    if until == "established":
        assert trace.satisfied, trace.format()
    return conn


def full(pki: Pki, mode: str, ring: TicketKeyRing, **kw: Any) -> Conn:
    conn = connect(pki, mode, ring, **kw)
    for side in ("client", "server"):
        ev = conn.sim.completed(side)
        assert ev is not None and ev.resumed is False and ev.ems is True
    return conn


def check_full_fallback(conn: Conn, offered: bytes | None) -> None:
    """Completed as a full handshake (3 RTT, a new ticket), after offering ``offered``."""
    assert conn.offered_ticket() == offered
    for side in ("client", "server"):
        ev = conn.sim.completed(side)
        assert ev is not None and ev.resumed is False, side
    assert conn.completion_time("client") == pytest.approx(3 * RTT)
    assert conn.ticket.ticket != offered  # a fresh ticket replaces the failed one
    exchange(conn.sim)


def check_resumed(conn: Conn, session: ClientSession) -> None:
    assert conn.offered_ticket() == session.ticket
    for side in ("client", "server"):
        ev = conn.sim.completed(side)
        assert ev is not None and ev.resumed is True and ev.ems is True, side
        assert int(ev.suite) == session.suite
    exchange(conn.sim)


def exchange(sim: Simulator) -> None:
    srv = sim.side("server")
    sim.send_from_client(sim.client.protect([b"ping"]))
    sim.send_from_server(srv.protect([b"pong"]))
    sim.run_until(lambda: sim.server_rx[-1:] == [b"ping"] and sim.client_rx[-1:] == [b"pong"], 1.0)
    assert sim.server_rx[-1:] == [b"ping"] and sim.client_rx[-1:] == [b"pong"]


def first_server_datagram_is_hvr(conn: Conn) -> None:
    """CVE-2022-2576: the first answer is a stateless HelloVerifyRequest, no larger than
    the ClientHello that caused it; one per connection."""
    first = parse_datagram(conn.s2c_seen[0])[0]
    assert [(r.content_type, r.epoch) for r in first] == [(22, 0)]
    (frag,) = parse_handshake_fragments(first[0].fragment)
    assert frag.msg_type == HandshakeType.hello_verify_request
    assert len(conn.s2c_seen[0]) <= len(conn.c2s_seen[0])
    assert conn.sim.endpoint.stats.hello_verify_sent == 1
    assert conn.sim.endpoint.stats.cookie_accepted == 1
