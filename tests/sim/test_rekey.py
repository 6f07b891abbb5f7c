"""Make-before-break rekeying (RekeyingClient + ServerEndpoint) in the simulator.

Driver: ``harness.Simulator`` with a :class:`RekeyingClient` (``rekeying=True``).  The server answers on its
newest *established* association for the client (during a renewal handshake: the
old one), the client on ``RekeyingClient.current``.  Path: 20 ms one way; one
numbered inner packet each way every 50 ms; ``rekey_interval`` 5 s (or a record
limit of 200 and no interval); grace 2 s on both sides, shorter than the interval
so that each old association is retired before the next renewal.

Each inner packet carries its direction, its sequence number and the generation
of the association that sealed it (0 = the first handshake, n = after n
rekeys); "lost" means sent and never returned by any ``receive_datagram``.

What is asserted:

* no loss: over 30 s of simulated time (5 renewals), without CID, with the
  default CID (client to server only) and with 4-byte CIDs both ways, every
  packet sent either way is delivered exactly once; ``Rekeyed`` events number
  the generations 1..n, the endpoint's ``rekeys`` stat is n, every generation
  carried traffic both ways;
* record limit: with ``rekey_records=200`` and no interval, renewals happen by
  record count, and no association writes or reads more than 200 records plus
  what one renewal handshake takes;
* grace: a record sealed under the old keys and delayed in the network is still
  delivered within the grace period (both directions) and no longer after it;
  the old association is then closed on both sides;
* a renewal never resumes (``resumed=False`` on both sides, even when the first
  association was resumed from a ticket) and draws a fresh ECDHE key share on
  each side (counted through ``key_share_factory``; all public values distinct);
  its ClientHello offers an empty session ticket;
* loss: with 20 % loss each way (6 seeds, without CID and with the default CID),
  no inner packet whose datagram the link delivered is lost: "delivered by the
  link" is the link's fate of the datagram that carried the packet
  (``SimLink.history``), and such a packet must be returned by one of the
  receiver's associations (old, new or pending).  Packets whose datagram the
  link dropped are excluded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from dtlsvpn.crypto.keyexchange import KeyShare, generate_key_share
from dtlsvpn.dtls.events import HandshakeCompleted, SessionTicketReceived
from dtlsvpn.dtls.rekey import Rekeyed, RekeyingClient, rekey_due
from dtlsvpn.wire.constants import ExtensionType, HandshakeType, NamedGroup
from dtlsvpn.wire.extensions import decode_session_ticket
from dtlsvpn.wire.handshake import decode_client_hello, parse_handshake_fragments
from dtlsvpn.wire.record import parse_datagram
from tests.pki import Pki
from tests.sim.configs import split_configs, ticket_ring, with_changes
from tests.sim.harness import CLIENT_ADDR, Simulator, link_pair
from tests.sim.stream import PERIOD
from tests.sim.trace import report

pytestmark = pytest.mark.sim

INTERVAL = 5.0
GRACE = 2.0
RUN = 30.0
SECTION = "rekeying (simulated, 20 ms one way, a packet each way every 50 ms)"
CID_MODES: dict[str, dict[str, Any]] = {
    "no-cid": {"connection_id": False},
    "cid-default": {},
    "cid-both-4": {"cid_length": 4},
}


MODE = "ecdhe-ecdsa-aes128"
DELAY = 0.02  # one way


def rekeying_net(pki: Pki, seed: int, *, drop: float = 0.0, **both: Any) -> Simulator:
    both.setdefault("rekey_interval", INTERVAL)
    c2s, s2c = link_pair(seed, delay=DELAY, drop=drop)
    return Simulator(*split_configs(MODE, pki, seed, **both), c2s=c2s, s2c=s2c,
                     rekeying=True, grace=GRACE)


def plain_net(pki: Pki, seed: int, **both: Any) -> Simulator:
    """A plain client over the same lossless path (an endpoint with the same grace)."""
    c2s, s2c = link_pair(0, delay=DELAY)
    return Simulator(*split_configs(MODE, pki, seed, **both), c2s=c2s, s2c=s2c, grace=GRACE)


def rekeying(sim: Simulator) -> RekeyingClient:
    assert sim.rekeying_client is not None
    return sim.rekeying_client


def generations(sim: Simulator) -> list[int]:
    return [e.generation for _t, e in sim.events_of("client", Rekeyed)]


def stream(sim: Simulator, seconds: float = RUN, *, handshake_limit: float = 10.0) -> None:
    """Handshake, then the packet stream for ``seconds``, then let the last ones land."""
    sim.establish(handshake_limit)
    sim.start_traffic(seconds)
    sim.run_for(seconds + 10 * DELAY)


def check_generations(sim: Simulator) -> int:
    """Rekeyed numbers the generations; the endpoint and both sides agree. Returns n.

    The endpoint counts a renewal when it creates the new association (cookie
    accepted), the client when the handshake completes: a renewal still running when
    the run ends is on the endpoint's count only.
    """
    client = rekeying(sim)
    gens = generations(sim)
    n = len(gens)
    assert gens == list(range(1, n + 1)), gens
    assert client.generation == n
    running = len(sim.server_assocs) - (n + 1)
    assert running in (0, 1), sim.format()
    if running:
        assert client.pending is not None
    assert sim.endpoint.stats.rekeys == n + running
    # Every renewal was a full handshake the server completed (the running one may have
    # completed on the server's side only: its last flight is still on the way).
    done = [sim.server_assocs.index(a) for _t, a, _e in sim.server_events_of(HandshakeCompleted)]
    assert done in (list(range(n + 1)), list(range(n + 1 + running)))
    return n


# --- no loss across interval-triggered renewals ------------------------------------------------


@pytest.mark.parametrize("cid", list(CID_MODES))
def test_stream_across_rekeys_loses_nothing(pki: Pki, cid: str) -> None:
    sim = rekeying_net(pki, 11, **CID_MODES[cid])
    stream(sim)
    n = check_generations(sim)
    assert n == 5, (n, sim.format())
    for d in ("c2s", "s2c"):
        sent = sim.stream.sent(d)
        got = sim.stream.received(d)
        assert len(sent) >= RUN / PERIOD - 1
        assert not sim.stream.lost(d), ([p.seq for p in sim.stream.lost(d)], sim.format())
        assert set(got.values()) == {1}, "a packet was delivered twice"
        assert {p.generation for p in sent} == set(range(n + 1)), "a generation carried nothing"
    times = [f"{t:.2f}" for t, _e in sim.events_of("client", Rekeyed)]
    report(SECTION, f"{cid}: {n} rekeys at {', '.join(times)} s; "
                    f"endpoint rekeys={sim.endpoint.stats.rekeys}")
    for line in sim.stream.per_generation():
        report(SECTION, f"  {cid} {line}")


# --- the record-count (AEAD limit) trigger --------------------------------------------------


def test_record_limit_triggers_rekey_without_interval(pki: Pki) -> None:
    limit = 200
    sim = rekeying_net(pki, 12, rekey_interval=None, rekey_records=limit)
    stream(sim)
    n = check_generations(sim)
    # 601 packets each way at 200 records per association: at least two renewals.
    cur = rekeying(sim).current
    assert n >= 2, (f"{n} renewals: the current association wrote {cur.stats.tx_records} and "
                    f"read {cur.stats.rx_records} records (limit {limit}), rekey_due="
                    f"{rekey_due(cur, sim.now)}, client timer {rekeying(sim).get_timer()}\n"
                    + sim.format(20))
    assert not sim.stream.lost("c2s") and not sim.stream.lost("s2c")
    assert all(v == 1 for d in ("c2s", "s2c") for v in sim.stream.received(d).values())
    # Each replaced association got to the limit, and not far past it: the renewal runs
    # while it keeps carrying data, one handshake (< 0.2 s here) at 20 records/s.  The
    # server's association of each generation sees what the client's wrote and read.
    rows = []
    for g, srv in enumerate(sim.server_assocs):
        written = srv.stats.tx_records
        read = srv.stats.rx_records
        rows.append(f"gen {g}: server wrote {written} read {read} records")
        if g < n:
            assert max(written, read) >= limit, rows
        assert max(written, read) <= limit + 40, rows
    assert rekeying(sim).current.stats.tx_records <= limit + 40
    times = [f"{t:.2f}" for t, _e in sim.events_of("client", Rekeyed)]
    report(SECTION, f"rekey_records={limit}, no interval: {n} rekeys at {', '.join(times)} s")
    for line in rows + sim.stream.per_generation():
        report(SECTION, f"  records {line}")


# --- the grace period -------------------------------------------------------------------------


@pytest.mark.parametrize("cid", list(CID_MODES))
def test_old_keys_accepted_during_grace_then_refused(pki: Pki, cid: str) -> None:
    sim = rekeying_net(pki, 13, **CID_MODES[cid])
    client = rekeying(sim)
    sim.establish()
    sim.start_traffic(3 * INTERVAL)
    assert sim.run_until(lambda: client.pending is not None, INTERVAL + 1.0).satisfied
    old_client = client.current
    old_server = sim.server_sender()
    assert old_server is sim.server_assocs[0]
    # Records sealed under the old keys that the network holds back (never seen yet).
    held_c = [old_client.protect([f"old-c{i}".encode()])[0] for i in range(3)]
    held_s = [old_server.protect([f"old-s{i}".encode()])[0] for i in range(3)]
    assert sim.run_until(lambda: client.generation == 1, 2.0).satisfied, sim.format()
    switched = sim.now
    assert client.previous is old_client
    new_server = sim.server_assocs[1]
    assert new_server.is_established and sim.endpoint._previous == {CLIENT_ADDR: old_server}

    # Within the grace period: a delayed old record is delivered, both ways.
    sim.run_for(GRACE / 4)
    assert sim.deliver_to_server(held_c[0], CLIENT_ADDR) == [b"old-c0"], sim.format()
    assert sim.deliver_to_client(held_s[0]) == [b"old-s0"], sim.format()
    # A replay of it is not (the old association's replay window still works).
    assert sim.deliver_to_server(held_c[0], CLIENT_ADDR) == []
    assert sim.deliver_to_client(held_s[0]) == []

    # After it: the old keys are gone on both sides.
    sim.run_for(GRACE + 0.5)
    assert sim.now < switched + INTERVAL - 1.0 and client.generation == 1  # no next rekey yet
    retired_c, retired_s = sim.deliver_to_server(held_c[1], CLIENT_ADDR), sim.deliver_to_client(held_s[1])
    replay_c, replay_s = sim.deliver_to_server(held_c[0], CLIENT_ADDR), sim.deliver_to_client(held_s[0])
    state = (f"{cid}: server previous={sim.endpoint._previous} old closed="
             f"{old_server.is_closed} retire_at={sim.endpoint._retire_at}; "
             f"client previous={client.previous}")
    assert (retired_c, replay_c) == ([], []), state + "\n" + sim.format()
    assert (retired_s, replay_s) == ([], []), state
    assert client.previous is None
    assert old_server.is_closed and not sim.endpoint._previous, state
    # From another address too (with a CID the endpoint would route it by CID).
    assert sim.deliver_to_server(held_c[2], ("192.0.2.1", 1234)) == []
    # Meanwhile the stream went on without a loss.
    sim.run_for(3 * INTERVAL)
    assert not sim.stream.lost("c2s") and not sim.stream.lost("s2c")
    report(SECTION, f"grace {GRACE:g} s, {cid}: old record at +{GRACE / 4:g} s delivered both "
                    f"ways, at +{GRACE * 1.25 + 0.5:g} s refused both ways")


# --- a renewal is a full handshake with fresh ECDHE keys -----------------------------------


def test_renewal_never_resumes_and_draws_fresh_key_shares(pki: Pki) -> None:
    ring = ticket_ring("cid-ring", 14)
    shares: list[tuple[str, bytes]] = []

    def counter(side: str) -> Callable[[NamedGroup], KeyShare]:
        def factory(group: NamedGroup) -> KeyShare:
            share = generate_key_share(group)
            shares.append((side, share.public_bytes()))
            return share
        return factory

    # A first connection, only to get a ticket.
    first = plain_net(pki, 14, ticket_keys=ring)
    first.establish()
    ((_t, got),) = first.events_of("client", SessionTicketReceived)
    assert isinstance(got, SessionTicketReceived)

    c, s = split_configs(MODE, pki, 15, ticket_keys=ring, rekey_interval=INTERVAL)
    c = with_changes(c, resume_session=got.session, key_share_factory=counter("client"))
    s = with_changes(s, key_share_factory=counter("server"))
    c2s, s2c = link_pair(0, delay=DELAY)
    sim = Simulator(c, s, c2s=c2s, s2c=s2c, rekeying=True, grace=GRACE)
    client = rekeying(sim)
    sim.establish()
    first_result = client.current.handshake_result
    assert first_result is not None and first_result.resumed  # the ticket worked
    assert shares == []  # no ECDHE in this resumption
    sim.start_traffic(2 * INTERVAL + 1.0)
    sim.run_for(2 * INTERVAL + 1.5)
    n = check_generations(sim)
    assert n == 2
    assert not sim.stream.lost("c2s") and not sim.stream.lost("s2c")
    # Both renewals: full handshakes on both sides...
    result = client.current.handshake_result
    assert result is not None and not result.resumed
    server_done = [e.resumed for _t, _a, e in sim.server_events_of(HandshakeCompleted)]
    assert server_done == [True, False, False]
    # ... each with one fresh key share per side, all distinct.
    assert Counter(side for side, _pub in shares) == {"client": n, "server": n}
    assert len({pub for _side, pub in shares}) == 2 * n
    # The renewal's ClientHellos offered no ticket (an empty session_ticket extension).
    offered = []
    for w, _rec in sim.records("c2s"):
        for rec in parse_datagram(w.data)[0]:
            if rec.content_type != 22 or rec.epoch != 0:
                continue
            for f in parse_handshake_fragments(rec.fragment):
                if f.msg_type == HandshakeType.client_hello and f.is_whole:
                    ext = decode_client_hello(f.body).ext(ExtensionType.session_ticket)
                    offered.append(None if ext is None else decode_session_ticket(ext))
    # The first handshake: CH, CH+cookie with the ticket; each renewal: two without.
    assert offered[:2] == [got.session.ticket] * 2
    assert offered[2:] == [b""] * (2 * n), offered
    report(SECTION, f"renewals after a resumed start: resumed {server_done}, key shares "
                    f"{len(shares)} ({len({p for _s, p in shares})} distinct) for {n} renewals")


# --- under loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", ["no-cid", "cid-default"])
@pytest.mark.parametrize("seed", range(6))
def test_rekey_under_loss_loses_nothing_the_link_delivered(pki: Pki, seed: int,
                                                           cid: str) -> None:
    sim = rekeying_net(pki, 100 + seed, drop=0.2, **CID_MODES[cid])
    stream(sim, handshake_limit=60.0)
    lines = []
    for d in ("c2s", "s2c"):
        sent = sim.stream.sent(d)
        linked = [p for p in sent if p.fate == "delivered"]
        lost = sim.stream.lost(d, linked)
        lines.append(f"{d} sent {len(sent)} link-delivered {len(linked)} "
                     f"decrypted {sum(1 for p in sent if sim.stream.received(d)[p.seq])}")
        assert not lost, (f"seed {seed} {cid} {d}: {len(lost)} link-delivered packets lost, first "
                          f"{[(p.seq, p.generation, round(p.sent_at, 3)) for p in lost[:8]]}\n"
                          + "\n".join(sim.stream.per_generation()) + "\n" + sim.format(400))
    n = check_generations(sim)
    assert n >= 2, sim.format()
    retx = sum(a.stats.retransmissions for a in sim.server_assocs)
    report(SECTION, f"20 % loss seed {seed} {cid}: {n} rekeys, {'; '.join(lines)}, "
                    f"server retransmissions {retx}")


def test_no_rekey_interval_arms_no_timer() -> None:
    """Without an interval (and no other timer) there is no deadline at all: an
    infinite one would make an event loop's poll() overflow."""
    from dtlsvpn.dtls.config import DtlsConfig
    cfg = DtlsConfig(is_client=True, psk=b"k" * 16, psk_identity=b"id", rekey_interval=None,
                     heartbeat=False)
    assert RekeyingClient(cfg).get_timer() is None
