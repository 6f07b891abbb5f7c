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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtlsvpn.crypto import certs
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
)
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.wire.constants import (
    AlertDescription,
    AlertLevel,
    ExtensionType,
    HandshakeType,
)
from dtlsvpn.wire.handshake import (
    decode_client_hello,
    decode_server_hello,
    encode_client_hello,
    encode_server_hello,
)
from tests.pki import Pki
from tests.sim.clock import FakeClock
from tests.sim.configs import MODES, PSK_IDENTITY, ticket_ring
from tests.sim.harness import Simulator
from tests.sim.link import SimLink
from tests.sim.records import rewrite_handshake
from tests.sim.sessions import (
    RTT,
    Conn,
    Work,
    check_full_fallback,
    check_resumed,
    connect,
    first_server_datagram_is_hvr,
    full,
)
from tests.sim.trace import report

pytestmark = pytest.mark.sim

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


# --- CPU work counters (the Work of tests/sim/sessions.py) ---------------------------------


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



# --- full -> ticket -> abbreviated ---------------------------------------------------------------


@pytest.mark.parametrize("mode", RESUME_MODES)
def test_resumed_handshake_round_trips_and_cpu_work(pki: Pki, mode: str, work: Work) -> None:
    ring = ticket_ring("ring")
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
    ring = ticket_ring("ring")
    session = full(pki, "ecdhe-ecdsa-aes128", ring).ticket
    conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=session, at=10.0,
                   server={"cookie_exchange": False})
    check_resumed(conn, session)
    assert conn.completion_time("client") == pytest.approx(1 * RTT)
    assert conn.sim.endpoint.stats.hello_verify_sent == 0
    report(SECTION, f"resumed without cookie exchange (configured): client done in "
                    f"{conn.completion_time('client') / RTT:.1f} RTT")


def test_s13_b3_11_resumption_goes_through_the_cookie_exchange(pki: Pki, work: Work) -> None:
    """CVE-2022-2576: a ticket (valid or not) never skips the HelloVerifyRequest, and the
    server does no asymmetric work and keeps no state before the cookie."""
    ring = ticket_ring("ring")
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
def test_b5_tampered_ticket_falls_back_to_full_handshake(pki: Pki, where: str) -> None:
    ring = ticket_ring("ring")
    session = full(pki, "ecdhe-ecdsa-aes128", ring).ticket
    bad = dataclasses.replace(session, ticket=_flip(session.ticket, where))
    conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=bad, at=10.0)
    check_full_fallback(conn, bad.ticket)
    first_server_datagram_is_hvr(conn)


def test_b5_expired_ticket_falls_back_to_full_handshake(pki: Pki) -> None:
    ring = ticket_ring("ring", ticket_lifetime=600)
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


def test_b5_foreign_key_ticket_falls_back_to_full_handshake(pki: Pki) -> None:
    session = full(pki, "ecdhe-ecdsa-aes128", ticket_ring("ring", 1)).ticket
    conn = connect(pki, "ecdhe-ecdsa-aes128", ticket_ring("ring", 2), session=session, at=10.0)
    check_full_fallback(conn, session.ticket)


def test_b5_key_rotation_keeps_old_tickets_valid_for_their_lifetime(pki: Pki) -> None:
    mode = "ecdhe-psk-chacha"
    ring = ticket_ring("ring", rotate_every=300, ticket_lifetime=600)
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
    ring = ticket_ring("ring", rotate_every=300, ticket_lifetime=3600)
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
    writer = ticket_ring("ring", 7)
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
    foreign = ticket_ring("ring", 8)
    foreign.maintain(FakeClock().wall)
    TicketKeyFile(other).save(foreign)
    ring_c = TicketKeyFile(other).load(random.Random("c").randbytes, rotate_every=0)
    check_full_fallback(connect(pki, mode, ring_c, session=from_a, at=20.0), from_a.ticket)


def test_ticket_for_psk_identity_no_longer_known(pki: Pki) -> None:
    """The ticket binds psk:client-1; the server now knows only client-2."""
    ring = ticket_ring("ring")
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


def test_a_ticket_from_before_the_psk_was_replaced_does_not_resume(pki: Pki) -> None:
    """Same identity, new key (the ticket keys persist across the server's restart): the
    ticket binds a digest of the PSK it was made under, so the session of the old key is
    not resumed (it was, for the ticket's whole lifetime) and the client that has the
    new key gets a full handshake under it."""
    ring = ticket_ring("ring")
    session = full(pki, "ecdhe-psk-chacha", ring).ticket
    new_psk = bytes(range(100, 132))
    rotated = {"psk_lookup": {PSK_IDENTITY: new_psk}.get}
    conn = connect(pki, "ecdhe-psk-chacha", ring, session=session, at=10.0, server=rotated,
                   client={"psk": new_psk})
    check_full_fallback(conn, session.ticket)
    # The same key again (a restart with nothing changed): resumed.
    check_resumed(connect(pki, "ecdhe-psk-chacha", ring, session=session, at=20.0), session)


def test_a_ticket_from_before_the_client_ca_changed_does_not_resume(pki: Pki) -> None:
    """The server's client CA set changed (a CA retired, one added): certificate
    sessions from before are judged again by a full handshake."""
    ring = ticket_ring("ring")
    session = full(pki, "mutual-ecdsa", ring).ticket
    check_resumed(connect(pki, "mutual-ecdsa", ring, session=session, at=5.0), session)
    widened = {"ca_certs": (pki.ca.cert, pki.rsa_ca.cert)}
    conn = connect(pki, "mutual-ecdsa", ring, session=session, at=10.0, server=widened)
    check_full_fallback(conn, session.ticket)


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
def test_b5_resuming_ems_session_without_ems_aborts(pki: Pki, server_requires_ems: bool) -> None:
    """The ClientHello carrying an EMS session's ticket lacks EMS (rewritten on the path).
    With the server's require_extended_master_secret off, the RFC 7627 §5.3 rule itself
    aborts (not the blanket EMS requirement)."""
    ring = ticket_ring("ring")
    session = full(pki, "ecdhe-ecdsa-aes128", ring,
                   server={"require_extended_master_secret": server_requires_ems}).ticket
    conn = connect(pki, "ecdhe-ecdsa-aes128", ring, session=session, at=10.0,
                   c2s_tamper=_without_ems_client_hello, until="closed",
                   server={"require_extended_master_secret": server_requires_ems})
    assert conn.offered_ticket() == session.ticket
    _aborted_with(conn, "server", None if server_requires_ems else "EMS session")


@pytest.mark.parametrize("client_requires_ems", [True, False])
def test_b5_server_dropping_ems_on_resumption_is_rejected(pki: Pki, client_requires_ems: bool) -> None:
    ring = ticket_ring("ring")
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
        ring = ticket_ring("ring")
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
