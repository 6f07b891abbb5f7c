"""Session tickets (RFC 5077) through real Associations and ServerEndpoints in the simulator.

A client completes a full handshake, keeps the ``SessionTicketReceived``
session, and reconnects from a new port (a new association) offering it.  Each
connection is its own ``Simulator`` on a fresh ``ServerEndpoint`` (stateless
resumption: only the ticket key ring is shared) unless a test says otherwise.
Path: 25 ms one way (50 ms RTT), no loss unless stated.

Round trips (simulated time, client side, from connect to HandshakeCompleted)::

    full, with cookie:  CH1 -> HVR | CH2 -> SH..SHD | CKE CCS Fin -> [NST] CCS Fin   = 3 RTT
    resumed:            CH1 -> HVR | CH2(ticket) -> SH [NST] CCS Fin                 = 2 RTT
                        (the server completes half an RTT later on our CCS Fin: 2.5 RTT)
    resumed, cookie_exchange=False on the server:                                    = 1 RTT

CPU work is counted by wrapping the public functions of ``dtlsvpn.crypto.certs``
(``sign``, ``verify_signature``, ``ChainVerifier.verify``) and the
``key_share_factory`` seam of both configs: a resumed handshake does none of
them, on either side.  Wall-clock time of the server endpoint is printed too
(not asserted: it depends on the machine).

Fallbacks (RFC 5077 §3.4: silently a full handshake, which completes): a
tampered ticket (a byte flipped in the key name, nonce, ciphertext or tag),
an expired one (wall time moved past its lifetime, with the client ignoring
its lifetime hint), one sealed under a foreign key ring, one whose key was
rotated out, and one bound to a PSK identity the server no longer knows.  Key
rotation keeps older tickets valid for their lifetime; two endpoints whose rings
were loaded from one saved key file accept each other's tickets.

RFC 7627 §5.3: resuming an EMS session with a ClientHello that lacks EMS is
aborted by the server; a ServerHello that drops EMS on resumption is rejected
by our client (both hellos rewritten on the path by ``SimLink.tamper``; the
cookie does not bind extensions, so the server machine sees the rewrite).

CVE-2022-2576 / security.md S13: every resumption attempt, good ticket or bad,
is first answered by a stateless HelloVerifyRequest no larger than the
ClientHello, before any association exists or any asymmetric operation runs.

Loss: 30 % each way with reordering on a 576-byte path, 12 seeds: the resumed
handshake completes within the backoff the two sides actually went through plus
one worst-case RTT per round trip and per retransmission (the bound of
test_handshake.py, with 2 round trips), with at most 30 retransmissions.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtlsvpn.crypto import certs
from dtlsvpn.crypto.keyexchange import KeyShare, generate_key_share
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
    HandshakeCompleted,
    SessionTicketReceived,
)
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.wire.constants import (
    AlertDescription,
    AlertLevel,
    ExtensionType,
    HandshakeType,
    NamedGroup,
)
from dtlsvpn.wire.extensions import decode_session_ticket
from dtlsvpn.wire.handshake import (
    decode_client_hello,
    decode_server_hello,
    encode_client_hello,
    encode_server_hello,
    parse_handshake_fragments,
)
from dtlsvpn.wire.record import parse_datagram
from tests.pki import Pki
from tests.sim.clock import FakeClock
from tests.sim.harness import (
    MODES,
    PSK_IDENTITY,
    Simulator,
    configs_for,
    report,
    rewrite_handshake,
    with_changes,
)
from tests.sim.link import SimLink

pytestmark = pytest.mark.sim

DELAY = 0.025
RTT = 2 * DELAY
SECTION = "session resumption (simulated, 50 ms RTT)"
HANDSHAKE_FAILURE = int(AlertDescription.handshake_failure)
# Asymmetric work of a full handshake, both sides: (key shares, signatures made,
# signatures checked, chains verified).  ECDHE: one key share each; the server signs
# its ServerKeyExchange, the client checks it and the server's chain; with client
# certificates the client signs a CertificateVerify the server checks with its chain.
FULL_WORK = {
    "ecdhe-ecdsa-aes128": (2, 1, 1, 1),
    "ecdhe-rsa-aes128": (2, 1, 1, 1),
    "mutual-ecdsa": (2, 2, 2, 2),
    "psk-aes128": (0, 0, 0, 0),
    "ecdhe-psk-chacha": (2, 0, 0, 0),
}
RESUME_MODES = list(FULL_WORK)


# --- CPU work counters ---------------------------------------------------------------------


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


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Work:
    w = Work()
    sign, check, chain = certs.sign, certs.verify_signature, certs.ChainVerifier.verify

    def counting_sign(*a: Any, **k: Any) -> Any:
        w.signs += 1
        return sign(*a, **k)

    def counting_check(*a: Any, **k: Any) -> Any:
        w.signature_checks += 1
        return check(*a, **k)

    def counting_chain(*a: Any, **k: Any) -> Any:
        w.chain_checks += 1
        return chain(*a, **k)

    monkeypatch.setattr(certs, "sign", counting_sign)
    monkeypatch.setattr(certs, "verify_signature", counting_check)
    monkeypatch.setattr(certs.ChainVerifier, "verify", counting_chain)
    return w


def key_share_counter(w: Work) -> Callable[[NamedGroup], KeyShare]:
    def factory(group: NamedGroup) -> KeyShare:
        w.key_shares += 1
        return generate_key_share(group)
    return factory


# --- connections -------------------------------------------------------------------------------


def make_ring(seed: int = 0, **kw: Any) -> TicketKeyRing:
    return TicketKeyRing(random.Random(f"ring/{seed}").randbytes, **kw)


@dataclasses.dataclass
class Conn:
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


# --- full -> ticket -> abbreviated ---------------------------------------------------------------


@pytest.mark.parametrize("mode", RESUME_MODES)
def test_resumed_handshake_round_trips_and_cpu_work(pki: Pki, mode: str, work: Work) -> None:
    ring = make_ring()
    w0 = work.snapshot()
    first = full(pki, mode, ring, work=work)
    w_full = work.since(w0)
    session = first.ticket
    assert session.ems and session.suite == int(MODES[mode].suite)
    assert first.completion_time("client") == pytest.approx(3 * RTT)
    assert first.completion_time("server") == pytest.approx(2.5 * RTT)

    w1 = work.snapshot()
    second = connect(pki, mode, ring, session=session, at=60.0, work=work)
    w_resumed = work.since(w1)
    check_resumed(second, session)
    first_server_datagram_is_hvr(second)
    assert second.completion_time("client") == pytest.approx(2 * RTT)
    assert second.completion_time("server") == pytest.approx(2.5 * RTT)
    end = second.started + 2.5 * RTT - 1e-9  # (the test's own data goes out at 2.5 RTT)
    # CH1, CH2, CCS+Finished up; HVR, SH..Finished down: nothing else until completion.
    assert sum(h.time <= end for h in second.sim.c2s.history) == 3
    assert sum(h.time <= end for h in second.sim.s2c.history) == 2
    assert w_resumed == Work(), f"resumed handshake did asymmetric work: {w_resumed}"
    assert dataclasses.astuple(w_full) == FULL_WORK[mode]  # the counters do see the full handshake's work
    srv_ev = second.server_done
    assert srv_ev is not None
    if MODES[mode].psk:
        assert srv_ev.psk_identity == PSK_IDENTITY  # restored from the ticket
    if MODES[mode].mutual:
        assert srv_ev.peer_certificate == pki.client.cert  # restored from the ticket
    # The resumed handshake issues a new ticket, and that one resumes too.
    renewed = second.ticket
    assert renewed.ticket != session.ticket
    third = connect(pki, mode, ring, session=renewed, at=120.0)
    check_resumed(third, renewed)
    report(SECTION, f"{mode:18s}: client done full {first.completion_time('client') / RTT:.1f} "
                    f"RTT / resumed {second.completion_time('client') / RTT:.1f} RTT; asymmetric ops "
                    f"full {w_full.key_shares} key shares, {w_full.signs} signs, "
                    f"{w_full.signature_checks} sig checks, {w_full.chain_checks} chain checks; "
                    f"resumed {w_resumed.total}; server endpoint CPU full "
                    f"{first.server_seconds * 1e3:.2f} ms / resumed {second.server_seconds * 1e3:.2f} ms")


def test_resumption_without_cookie_takes_one_rtt(pki: Pki) -> None:
    """Only when the server is configured without the cookie exchange."""
    ring = make_ring()
    session = full(pki, "ecdhe-ecdsa-aes128", ring).ticket
    conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=session, at=10.0,
                   server={"cookie_exchange": False})
    check_resumed(conn, session)
    assert conn.completion_time("client") == pytest.approx(1 * RTT)
    assert conn.sim.endpoint.stats.hello_verify_sent == 0
    report(SECTION, f"resumed without cookie exchange (configured): client done in "
                    f"{conn.completion_time('client') / RTT:.1f} RTT")


def test_resumption_goes_through_the_cookie_exchange(pki: Pki, work: Work) -> None:
    """CVE-2022-2576: a ticket (valid or not) never skips the HelloVerifyRequest, and the
    server does no asymmetric work and keeps no state before the cookie."""
    ring = make_ring()
    session = full(pki, "ecdhe-ecdsa-aes128", ring).ticket
    bad = dataclasses.replace(session, ticket=_flip(session.ticket, "tag"))
    for offered in (session, bad):
        before = work.snapshot()
        at_first_reply: list[tuple[int, int]] = []

        def watch(sim: Simulator, data: bytes, before: Work = before,
                  seen: list[tuple[int, int]] = at_first_reply) -> None:
            if not seen:
                seen.append((work.since(before).total, len(sim.endpoint.associations)))

        conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=offered, at=30.0, work=work,
                       watch_s2c=watch)
        first_server_datagram_is_hvr(conn)
        assert at_first_reply == [(0, 0)]  # no crypto, no association when the HVR left
        done = conn.client_done
        assert done is not None and done.resumed is (offered is session)


# --- fallbacks to a full handshake ---------------------------------------------------------------


def _flip(ticket: bytes, where: str) -> bytes:
    pos = {"key_name": 3, "nonce": 20, "ciphertext": 40, "tag": len(ticket) - 2,
           "truncated": -1, "extended": -1}[where]
    if where == "truncated":
        return ticket[:-5]
    if where == "extended":
        return ticket + b"\x00"
    return ticket[:pos] + bytes([ticket[pos] ^ 0x01]) + ticket[pos + 1:]


@pytest.mark.parametrize("where", ["key_name", "nonce", "ciphertext", "tag", "truncated",
                                   "extended"])
def test_tampered_ticket_falls_back_to_full_handshake(pki: Pki, where: str) -> None:
    ring = make_ring()
    session = full(pki, "ecdhe-ecdsa-aes128", ring).ticket
    bad = dataclasses.replace(session, ticket=_flip(session.ticket, where))
    conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=bad, at=10.0)
    check_full_fallback(conn, bad.ticket)
    first_server_datagram_is_hvr(conn)


def test_expired_ticket_falls_back_to_full_handshake(pki: Pki) -> None:
    ring = make_ring(ticket_lifetime=600)
    session = full(pki, "psk-aes128", ring).ticket
    assert session.lifetime_hint == 600
    # Just inside the lifetime: resumed.
    check_resumed(connect(pki, "psk-aes128", ring, session=session, at=590.0), session)
    # Past it, from a client that ignores the hint: the server refuses it.
    stubborn = dataclasses.replace(session, lifetime_hint=10**6)
    check_full_fallback(connect(pki, "psk-aes128", ring, session=stubborn, at=700.0),
                        stubborn.ticket)
    # Past it, from our client: it does not even offer the ticket.
    check_full_fallback(connect(pki, "psk-aes128", ring, session=session, at=700.0), b"")


def test_foreign_key_ticket_falls_back_to_full_handshake(pki: Pki) -> None:
    session = full(pki, "ecdhe-ecdsa-aes128", make_ring(1)).ticket
    conn = connect(pki, "ecdhe-ecdsa-aes128", make_ring(2), session=session, at=10.0)
    check_full_fallback(conn, session.ticket)


def test_key_rotation_keeps_old_tickets_valid_for_their_lifetime(pki: Pki) -> None:
    mode = "ecdhe-psk-chacha"
    ring = make_ring(rotate_every=300, ticket_lifetime=600)
    t1 = full(pki, mode, ring).ticket
    t2 = full(pki, mode, ring, at=400.0).ticket  # sealing at 400 s rotates to a new key
    assert len(ring.keys) == 2 and t1.ticket[:16] != t2.ticket[:16]
    assert t2.ticket[:16] == ring.keys[-1].key_name
    # The old key no longer seals but still opens, until its tickets have expired.
    resumed = connect(pki, mode, ring, session=t1, at=590.0)
    check_resumed(resumed, t1)
    assert resumed.ticket.ticket[:16] == ring.keys[-1].key_name != t1.ticket[:16]
    late = dataclasses.replace(t1, lifetime_hint=10**6)
    check_full_fallback(connect(pki, mode, ring, session=late, at=650.0), late.ticket)
    # At 950 s the first key is retired (older than rotate_every + lifetime); t2 lives on.
    check_resumed(connect(pki, mode, ring, session=t2, at=950.0), t2)
    assert t1.ticket[:16] not in [k.key_name for k in ring.keys]
    check_full_fallback(connect(pki, mode, ring, session=late, at=960.0), late.ticket)


def test_rotated_out_key_falls_back_to_full_handshake(pki: Pki) -> None:
    """A ring whose older key was dropped (a key file rewritten with only the newer key)
    refuses that key's tickets within their lifetime and accepts the newer ones."""
    mode = "ecdhe-ecdsa-aes128"
    ring = make_ring(rotate_every=300, ticket_lifetime=3600)
    t1 = full(pki, mode, ring).ticket
    t2 = full(pki, mode, ring, at=400.0).ticket
    newer_only = TicketKeyRing(random.Random(9).randbytes, rotate_every=300,
                               ticket_lifetime=3600, keys=ring.keys[1:])
    check_full_fallback(connect(pki, mode, newer_only, session=t1, at=500.0), t1.ticket)
    check_resumed(connect(pki, mode, newer_only, session=t2, at=500.0), t2)


def test_two_endpoints_sharing_a_key_file_accept_each_others_tickets(
    pki: Pki, tmp_path: Path
) -> None:
    mode = "mutual-ecdsa"
    path = tmp_path / "ticket.keys"
    writer = make_ring(7)
    writer.maintain(FakeClock().wall)
    TicketKeyFile(path).save(writer)
    assert path.stat().st_mode & 0o777 == 0o600
    ring_a = TicketKeyFile(path).load(random.Random("a").randbytes, rotate_every=0)
    ring_b = TicketKeyFile(path).load(random.Random("b").randbytes, rotate_every=0)
    from_a = full(pki, mode, ring_a).ticket
    from_b = full(pki, mode, ring_b, at=5.0).ticket
    check_resumed(connect(pki, mode, ring_b, session=from_a, at=10.0), from_a)
    check_resumed(connect(pki, mode, ring_a, session=from_b, at=15.0), from_b)
    # A server of another deployment (another key file) does not.
    other = tmp_path / "other.keys"
    foreign = make_ring(8)
    foreign.maintain(FakeClock().wall)
    TicketKeyFile(other).save(foreign)
    ring_c = TicketKeyFile(other).load(random.Random("c").randbytes, rotate_every=0)
    check_full_fallback(connect(pki, mode, ring_c, session=from_a, at=20.0), from_a.ticket)


def test_ticket_for_psk_identity_no_longer_known(pki: Pki) -> None:
    """The ticket binds psk:client-1; the server now knows only client-2."""
    ring = make_ring()
    session = full(pki, "ecdhe-psk-chacha", ring).ticket
    psk2 = bytes(range(100, 132))
    only_2 = {"psk_lookup": {b"client-2": psk2}.get}
    # A client that moved to the new identity gets a full handshake under it.
    conn = connect(pki, "ecdhe-psk-chacha", ring, session=session, at=10.0, server=only_2,
                   client={"psk": psk2, "psk_identity": b"client-2"})
    check_full_fallback(conn, session.ticket)
    assert conn.server_done is not None and conn.server_done.psk_identity == b"client-2"
    # One still on the old identity is not resumed either: its full handshake is refused.
    conn = connect(pki, "ecdhe-psk-chacha", ring, session=session, at=20.0, server=only_2,
                   until="closed")
    assert conn.offered_ticket() == session.ticket
    assert conn.client_done is None and conn.server_done is None
    closed = conn.sim.events_of("server", AssociationClosed)
    assert [e.alert for _, e in closed] == [int(AlertDescription.unknown_psk_identity)]


# --- RFC 7627 §5.3 ---------------------------------------------------------------------------------


def _without_ems_client_hello(data: bytes) -> bytes:
    def edit(body: bytes) -> bytes:
        ch = decode_client_hello(body)
        exts = tuple(e for e in ch.extensions if e.type != ExtensionType.extended_master_secret)
        return encode_client_hello(dataclasses.replace(ch, extensions=exts))
    return rewrite_handshake(data, HandshakeType.client_hello, edit)


def _without_ems_server_hello(data: bytes) -> bytes:
    def edit(body: bytes) -> bytes:
        sh = decode_server_hello(body)
        exts = tuple(e for e in sh.extensions if e.type != ExtensionType.extended_master_secret)
        return encode_server_hello(dataclasses.replace(sh, extensions=exts))
    return rewrite_handshake(data, HandshakeType.server_hello, edit)


def _aborted_with(conn: Conn, closer: str, fragment: str | None) -> None:
    sim = conn.sim
    assert conn.client_done is None and conn.server_done is None
    closed = sim.events_of(closer, AssociationClosed)
    assert len(closed) == 1, closed
    ev = closed[0][1]
    assert ev.local and ev.alert == HANDSHAKE_FAILURE, ev
    if fragment is not None:
        assert fragment in ev.reason, ev
    other = "server" if closer == "client" else "client"
    alerts = [(e.level, e.description) for _, e in sim.events_of(other, AlertReceived)]
    assert alerts == [(AlertLevel.fatal, HANDSHAKE_FAILURE)]


@pytest.mark.parametrize("server_requires_ems", [True, False])
def test_resuming_ems_session_without_ems_aborts(pki: Pki, server_requires_ems: bool) -> None:
    """The ClientHello carrying an EMS session's ticket lacks EMS (rewritten on the path).
    With the server's require_extended_master_secret off, the RFC 7627 §5.3 rule itself
    aborts (not the blanket EMS requirement)."""
    ring = make_ring()
    session = full(pki, "ecdhe-ecdsa-aes128", ring,
                   server={"require_extended_master_secret": server_requires_ems}).ticket
    conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=session, at=10.0,
                   c2s_tamper=_without_ems_client_hello, until="closed",
                   server={"require_extended_master_secret": server_requires_ems})
    assert conn.offered_ticket() == session.ticket
    _aborted_with(conn, "server", None if server_requires_ems else "EMS session")


@pytest.mark.parametrize("client_requires_ems", [True, False])
def test_server_dropping_ems_on_resumption_is_rejected(pki: Pki, client_requires_ems: bool) -> None:
    ring = make_ring()
    session = full(pki, "psk-aes128", ring).ticket
    conn = connect(pki, "psk-aes128", ring, session=session, at=10.0,
                   s2c_tamper=_without_ems_server_hello, until="closed",
                   client={"require_extended_master_secret": client_requires_ems})
    _aborted_with(conn, "client", None if client_requires_ems else "without EMS")


# --- 30 % loss -------------------------------------------------------------------------------------

LOSSY_SEEDS = range(12)
LOSSY_DELAY, LOSSY_JITTER, LOSSY_REORDER_DELAY = 0.025, 0.005, 0.1
LOSSY_RTT_MAX = 2 * (LOSSY_DELAY + LOSSY_JITTER + LOSSY_REORDER_DELAY)
UDP_PAYLOAD_CAP = 576 - 28
_lossy: dict[str, list[tuple[int, float, int]]] = {}


def backoff_budget(k: int, initial: float = 1.0, cap: float = 60.0) -> float:
    return sum((min(initial * 2.0**i, cap) for i in range(k)), 0.0)


@pytest.fixture(scope="module")
def lossy_tickets(pki: Pki) -> Iterator[dict[str, tuple[TicketKeyRing, ClientSession]]]:
    out = {}
    for mode in ("ecdhe-ecdsa-aes128", "ecdhe-psk-chacha"):
        ring = make_ring()
        out[mode] = (ring, full(pki, mode, ring, mtu=UDP_PAYLOAD_CAP).ticket)
    yield out
    for mode, rows in _lossy.items():
        times = [t for _, t, _ in rows]
        retx = [r for _, _, r in rows]
        report(SECTION, f"resumed at 30 % loss, 576-byte path, {mode}: n={len(rows)} time "
                        f"min/med/max {min(times):.2f}/{statistics.median(times):.2f}/"
                        f"{max(times):.2f} s, retransmissions {min(retx)}/"
                        f"{statistics.median(retx):g}/{max(retx)}")


@pytest.mark.parametrize("seed", LOSSY_SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("mode", ["ecdhe-ecdsa-aes128", "ecdhe-psk-chacha"])
def test_resumption_under_30_percent_loss(
    pki: Pki, lossy_tickets: dict[str, tuple[TicketKeyRing, ClientSession]], mode: str, seed: int
) -> None:
    ring, session = lossy_tickets[mode]
    def link(d: str) -> SimLink:
        return SimLink(random.Random(f"resume/{mode}/{seed}/{d}"), name=d, drop=0.3,
                       reorder=0.25, reorder_delay=LOSSY_REORDER_DELAY, delay=LOSSY_DELAY,
                       jitter=LOSSY_JITTER, mtu=UDP_PAYLOAD_CAP)

    conn = connect(pki, mode, ring, session=session, at=30.0, seed=seed,
                   links=(link("c2s"), link("s2c")), mtu=UDP_PAYLOAD_CAP, limit=1200.0)
    sim = conn.sim
    kc = sim.client.stats.retransmissions
    srv = sim.side("server")
    ks = srv.stats.retransmissions
    elapsed = max(conn.completion_time("client"), conn.completion_time("server"))
    where = f"mode={mode} seed={seed} kc={kc} ks={ks} elapsed={elapsed:.2f}\n" + "\n".join(sim.log[-80:])
    for side in ("client", "server"):
        ev = sim.completed(side)
        assert ev is not None and ev.resumed is True, where
    bound = backoff_budget(kc) + backoff_budget(ks) + LOSSY_RTT_MAX * (2 + kc + ks)
    assert elapsed <= bound, f"{elapsed:.2f} > {bound:.2f}: {where}"
    assert kc + ks <= 30, where
    assert sim.c2s.counters.oversize == 0 and sim.s2c.counters.oversize == 0, where
    _lossy.setdefault(mode, []).append((seed, elapsed, kc + ks))
