"""RFC 9146 connection IDs through real Associations and a ServerEndpoint in the simulator.

Driver: ``harness.Simulator``, whose client address can change mid-run (datagrams
the server sends to an address the client left are lost, as behind a NAT that
rebound), with its stream of numbered inner packets both ways on a fixed period
(``sim.stream``).  Every datagram offered to a link is kept with its direction,
address and fate (``sim.wire``), and every inner packet with the link fate of the
datagram that carried it, so losses can be told from the link's drops.

Path: 20 ms one way, no loss.  Suite: ECDHE-ECDSA-AES128-GCM (record overhead
13 + 8 + 16 bytes).

What is asserted:

* negotiation: by default the client asks for no CID and the server for 8 bytes,
  so client-to-server protected records are ``tls12_cid`` (type 25) and
  server-to-client ones keep their real type (23 for data); with ``cid_length``
  set on both sides both directions are type 25; with ``connection_id=False`` on
  either side no CID is negotiated and no type-25 record is sent;
* roaming (port only, and address and port): traffic continues both ways with no
  epoch-0 handshake record (no ClientHello, no HelloVerifyRequest) after the move,
  one ``PeerAddressChanged``, ``address_changes == 1``, and the server's records go
  to the new address from the moment it learnt it; only the packets the server
  sent before it learnt it are lost (to the old address); it learns it after one
  return-routability check (a HeartbeatRequest to the new address alone, answered);
* return routability: a fresh authenticated record copied from a spoofed source
  (an on-path attacker who wins the race) is delivered but moves nothing; the
  spoofed address gets one challenge per ``CHALLENGE_GAP`` at most and nothing
  else; an answer to a replaced challenge validates nothing; a peer that takes no
  heartbeat requests moves at once, as RFC 9146 has it;
* RFC 9146 §6: a replayed record, or an older (not yet seen) one, from a new
  address moves nothing (a replay is counted, the older one is still delivered);
  a forged record with a known CID from a spoofed address is dropped, counted as
  ``bad_mac`` and moves nothing; an unknown CID is counted as ``unknown_cid``;
* the record overhead (and the PMTU-derived inner MTU) grows by exactly
  ``len(cid) + 1`` (the CID in the header, the real content type inside);
* without CIDs a new client address is a new association: the old one's records
  from the new address are dropped, the client redials and resumes with its ticket.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import CHALLENGE_GAP
from dtlsvpn.dtls.events import (
    HandshakeCompleted,
    PathMtuChanged,
    PeerAddressChanged,
    SessionTicketReceived,
)
from dtlsvpn.dtls.pmtu import PmtuSettings
from dtlsvpn.wire.constants import ContentType, HandshakeType
from tests.pki import Pki
from tests.sim.configs import split_configs, ticket_ring, with_changes
from tests.sim.harness import CLIENT_ADDR, Simulator, link_pair
from tests.sim.records import Address
from tests.sim.stream import PERIOD
from tests.sim.trace import report

pytestmark = pytest.mark.sim

MODE = "ecdhe-ecdsa-aes128"
DELAY = 0.02  # one way
GRACE = 2.0
SECTION = "connection IDs (simulated, 20 ms one way)"
CT_CID = int(ContentType.tls12_cid)
CT_APP = int(ContentType.application_data)


def cid_sim(client_config: DtlsConfig, server_config: DtlsConfig, seed: int = 0) -> Simulator:
    """A plain client and an endpoint over a lossless 20 ms path."""
    c2s, s2c = link_pair(seed, delay=DELAY)
    return Simulator(client_config, server_config, c2s=c2s, s2c=s2c, grace=GRACE)


def make_configs(pki: Pki, seed: int, **kwargs: Any) -> tuple[DtlsConfig, DtlsConfig]:
    return split_configs(MODE, pki, seed, **kwargs)


# --- negotiation ------------------------------------------------------------------------------


def _exchange(sim: Simulator, n: int = 10) -> None:
    sim.start_traffic(n * PERIOD)
    sim.run_for(n * PERIOD + 4 * DELAY)


def _protected_types(sim: Simulator, direction: str) -> Counter[int]:
    return Counter(r.ctype for _w, r in sim.records(direction) if r.epoch > 0)


@pytest.mark.parametrize(("client", "server", "expect"), [
    ({}, {}, (0, 8)),
    ({"cid_length": 4}, {"cid_length": 4}, (4, 4)),
    ({"cid_length": 5}, {"cid_length": 0}, (5, 0)),
    ({"connection_id": False}, {}, None),
    ({}, {"connection_id": False}, None),
    ({"connection_id": False}, {"connection_id": False}, None),
], ids=["default", "both-4", "client-5-server-0", "client-off", "server-off", "both-off"])
def test_cid_negotiation_and_outer_record_types(
        pki: Pki, client: dict[str, Any], server: dict[str, Any],
        expect: tuple[int, int] | None) -> None:
    """``expect``: (CID length on server-to-client records, on client-to-server ones)."""
    sim = cid_sim(*make_configs(pki, 1, client=client, server=server))
    sim.establish()
    _exchange(sim)
    c_ids, s_ids = sim.client.connection_ids, sim.side("server").connection_ids
    c2s, s2c = _protected_types(sim, "c2s"), _protected_types(sim, "s2c")
    if expect is None:
        assert c_ids is None and s_ids is None
        assert CT_CID not in c2s and CT_CID not in s2c, (c2s, s2c)
    else:
        to_client, to_server = expect
        assert c_ids is not None and s_ids is not None
        assert (len(c_ids[0]), len(c_ids[1])) == (to_client, to_server)
        assert s_ids == (c_ids[1], c_ids[0])  # what one sends is what the other expects
        # Every protected record in a direction with a CID is tls12_cid; the others keep
        # their real outer type (application_data for the data).
        for types, cid_len in ((c2s, to_server), (s2c, to_client)):
            if cid_len:
                assert set(types) == {CT_CID}, types
            else:
                assert CT_CID not in types and types[CT_APP] >= 10, types
    assert not sim.stream.lost("c2s") and not sim.stream.lost("s2c")
    report(SECTION, f"negotiation {client or 'default'}/{server or 'default'}: ids "
                    f"{None if c_ids is None else tuple(len(x) for x in c_ids)}, outer types "
                    f"c2s {dict(c2s)} s2c {dict(s2c)}")


# --- record overhead and inner MTU ------------------------------------------------------------


@pytest.mark.parametrize(("cid_length", "to_server", "to_client"),
                         [(None, 8, 0), (4, 4, 4), (16, 16, 16)])
def test_inner_mtu_accounts_for_the_cid(pki: Pki, cid_length: int | None, to_server: int,
                                        to_client: int) -> None:
    pmtu = PmtuSettings()
    results: dict[bool, tuple[Association, Association]] = {}
    for on in (False, True):
        sim = cid_sim(*make_configs(pki, 2, pmtu=pmtu, connection_id=on, cid_length=cid_length))
        sim.establish()
        results[on] = (sim.client, sim.side("server"))
        for side in (sim.client, sim.side("server")):
            # A real record is exactly record_overhead longer than its payload.
            (rec,) = side.protect([b"x" * 100])
            assert len(rec) == 100 + side.record_overhead
        events = [e for _t, e in sim.events_of("client", PathMtuChanged)]
        assert events and events[-1].inner_mtu == sim.client.inner_mtu
    (c_off, s_off), (c_on, s_on) = results[False], results[True]
    assert c_on.record_overhead - c_off.record_overhead == to_server + 1
    assert s_on.record_overhead - s_off.record_overhead == (to_client + 1 if to_client else 0)
    assert c_off.inner_mtu is not None and c_on.inner_mtu is not None
    assert c_off.plpmtu == c_on.plpmtu
    assert c_off.inner_mtu - c_on.inner_mtu == to_server + 1
    assert s_off.inner_mtu is not None and s_on.inner_mtu is not None
    assert s_off.inner_mtu - s_on.inner_mtu == (to_client + 1 if to_client else 0)
    report(SECTION, f"cid_length={cid_length}: client overhead {c_off.record_overhead} -> "
                    f"{c_on.record_overhead}, inner MTU {c_off.inner_mtu} -> {c_on.inner_mtu} "
                    f"at PLPMTU {c_on.plpmtu}; server overhead {s_off.record_overhead} -> "
                    f"{s_on.record_overhead}")


# --- roaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("new_addr", [("198.18.0.2", 50123), ("198.19.7.7", 6001)],
                         ids=["port", "address-and-port"])
def test_client_address_change_needs_no_handshake(pki: Pki, new_addr: Address) -> None:
    sim = cid_sim(*make_configs(pki, 3))
    sim.establish()
    server = sim.side("server")
    sim.start_traffic(4.0)
    sim.run_for(2.0)
    hvr_before = sim.endpoint.stats.hello_verify_sent
    moved_at = sim.now
    sim.client_addr = new_addr  # a NAT rebinding: the old address is gone
    sim.run_for(2.5)
    # No handshake of any kind after the move: no hello, no HelloVerifyRequest.
    assert sim.handshake_records(moved_at) == [], sim.format()
    assert sim.endpoint.stats.hello_verify_sent == hvr_before
    assert sim.server_assocs == [server] and sim.endpoint.associations == {new_addr: server}
    # One move, reported once, and the server's replies follow it.
    moves = sim.server_events_of(PeerAddressChanged)
    assert [(a, e.old, e.new) for _t, a, e in moves] == [(server, CLIENT_ADDR, new_addr)]
    assert sim.endpoint.stats.address_changes == 1
    assert sim.endpoint.address_of(server) == new_addr
    learnt = moves[0][0]
    after = [w for w in sim.wire if w.direction == "s2c" and w.time >= learnt]
    assert after and all(w.addr == new_addr for w in after)
    # The move waited for the return-routability check: the first record from the new
    # address brought one path challenge, sent there alone; the client answered it, and
    # its next record moved the association: within the first packet period and two
    # round trips of the path.
    assert sim.endpoint.stats.path_challenges == 1 and server.stats.path_challenges == 1
    before = [w for w in sim.wire if w.direction == "s2c" and w.time < learnt
              and w.time >= moved_at]
    assert [w.addr for w in before].count(new_addr) == 1, sim.format()
    assert learnt - moved_at <= PERIOD + 4 * DELAY + 1e-9, sim.format()
    # Traffic continued both ways: every client packet arrived; of the server's, only those
    # it sent to the old address before it learnt the move are lost.
    assert not sim.stream.lost("c2s"), sim.stream.lost("c2s")
    lost = sim.stream.lost("s2c")
    assert all(moved_at <= p.sent_at < learnt for p in lost), (lost, sim.format())
    assert sim.misaddressed == len(lost)
    delivered_after = [p for p in sim.stream.sent("s2c") if p.sent_at >= learnt]
    assert len(delivered_after) >= 30 and not sim.stream.lost("s2c", delivered_after)
    assert all(sim.stream.received(d)[p.seq] <= 1 for d in ("c2s", "s2c") for p in sim.stream.sent(d))
    report(SECTION, f"move {CLIENT_ADDR} -> {new_addr} at {moved_at:.2f} s: learnt after "
                    f"{(learnt - moved_at) * 1000:.0f} ms, packets c2s "
                    f"{sum(sim.stream.received('c2s').values())}/{len(sim.stream.sent('c2s'))}, s2c "
                    f"{sum(sim.stream.received('s2c').values())}/{len(sim.stream.sent('s2c'))} "
                    f"({len(lost)} sent to the old address), handshakes after the move 0")


def _established_with_traffic(pki: Pki, seed: int) -> Simulator:
    sim = cid_sim(*make_configs(pki, seed))
    sim.establish()
    _exchange(sim)
    assert not sim.stream.lost("c2s")
    return sim


def _assert_not_moved(sim: Simulator, server: Association) -> None:
    assert sim.endpoint.stats.address_changes == 0
    assert sim.server_events_of(PeerAddressChanged) == []
    assert sim.endpoint.address_of(server) == CLIENT_ADDR
    assert sim.endpoint.associations == {CLIENT_ADDR: server}


def test_replayed_record_from_new_address_moves_nothing(pki: Pki) -> None:
    sim = _established_with_traffic(pki, 4)
    server = sim.side("server")
    old = [w.data for w in sim.wire if w.direction == "c2s" and w.data[0] == CT_CID
           and w.fate == "delivered"]
    replays = server.stats.replay
    spoofed: Address = ("192.0.2.66", 9999)
    newest, oldest = old[-1], old[-10]
    assert sim.deliver_to_server(newest, spoofed) == []
    assert sim.deliver_to_server(oldest, spoofed) == []
    assert server.stats.replay == replays + 2
    _assert_not_moved(sim, server)
    # The association still works from where the client really is.
    assert sim.send_packet("c2s") is not None
    sim.run_for(4 * DELAY)
    assert not sim.stream.lost("c2s")
    _assert_not_moved(sim, server)


def test_older_record_from_new_address_is_delivered_but_moves_nothing(pki: Pki) -> None:
    sim = _established_with_traffic(pki, 5)
    server = sim.side("server")
    client = sim.client
    # Two records the network holds: the newer reaches the server first, from the client's
    # address; the older one, never seen before, then comes from elsewhere.
    older, newer = client.protect([b"older"]), client.protect([b"newer"])
    assert sim.deliver_to_server(newer[0], CLIENT_ADDR) == [b"newer"]
    replays = server.stats.replay
    assert sim.deliver_to_server(older[0], ("192.0.2.77", 4242)) == [b"older"]
    assert server.stats.replay == replays and not server.advanced
    _assert_not_moved(sim, server)


@pytest.mark.parametrize("where", ["ciphertext", "tag", "header-seq"])
def test_forged_record_with_known_cid_from_spoofed_address(pki: Pki, where: str) -> None:
    sim = _established_with_traffic(pki, 6)
    server = sim.side("server")
    (genuine,) = sim.client.protect([b"genuine"])
    assert genuine[0] == CT_CID
    # Header: type(1) version(2) epoch+seq(8) cid(8) length(2); then the GCM fragment
    # (explicit nonce, ciphertext, tag).  "header-seq" adds 256 to the sequence number: a
    # newer record for the replay check, but the header is in the AAD.
    pos = {"ciphertext": 21 + 8 + 3, "tag": len(genuine) - 1, "header-seq": 9}[where]
    forged = genuine[:pos] + bytes([genuine[pos] ^ 0x01]) + genuine[pos + 1:]
    bad_mac = server.stats.bad_mac
    assert sim.deliver_to_server(forged, ("192.0.2.99", 31337)) == []
    assert server.stats.bad_mac == bad_mac + 1
    _assert_not_moved(sim, server)
    # The forgery did not move the replay window: the genuine record still gets in.
    assert sim.deliver_to_server(genuine, CLIENT_ADDR) == [b"genuine"]
    _assert_not_moved(sim, server)


def _to(sim: Simulator, addr: Address) -> list[bytes]:
    return [w.data for w in sim.wire if w.direction == "s2c" and w.addr == addr]


def test_fresh_record_copied_from_spoofed_source_moves_nothing(pki: Pki) -> None:
    """An on-path attacker copies each fresh record and sends the copy from a victim's
    address so that it arrives first: RFC 9146 §6's newest-record test alone would move
    the tunnel's traffic onto the victim."""
    sim = _established_with_traffic(pki, 8)
    server = sim.side("server")
    victim: Address = ("192.0.2.66", 9999)
    (fresh,) = sim.client.protect([b"fresh"])
    assert sim.deliver_to_server(fresh, victim) == [b"fresh"]  # it authenticated
    assert server.advanced
    _assert_not_moved(sim, server)
    (challenge,) = _to(sim, victim)  # one small datagram, and nothing else
    assert challenge[0] == CT_CID or challenge[0] == int(ContentType.heartbeat)
    assert len(challenge) < 100
    assert sim.deliver_to_server(fresh, CLIENT_ADDR) == []  # the original: a replay
    start, sent = sim.now, 0
    for i in range(40):  # one second of copies racing every record
        (rec,) = sim.client.protect([b"copy %d" % i])
        assert sim.deliver_to_server(rec, victim) == [b"copy %d" % i]
        sim.deliver_to_server(rec, CLIENT_ADDR)
        sent += 1
        sim.run_for(0.025)
    _assert_not_moved(sim, server)
    challenges = _to(sim, victim)
    assert 1 < len(challenges) <= 2 + (sim.now - start) / CHALLENGE_GAP, len(challenges)
    assert sim.endpoint.stats.path_challenges == len(challenges)
    # The client never saw a challenge, and the tunnel still works both ways.
    assert server.stats.heartbeat_unexpected == 0
    assert sim.send_packet("s2c") is not None and sim.send_packet("c2s") is not None
    sim.run_for(4 * DELAY)
    assert not sim.stream.lost("c2s") and not sim.stream.lost("s2c")
    report(SECTION, f"{sent} fresh records copied from a spoofed source in "
                    f"{sim.now - start:.2f} s: {len(challenges)} challenges "
                    f"({sum(map(len, challenges))} B) to it, no move")


def test_answer_to_a_replaced_challenge_validates_nothing(pki: Pki) -> None:
    sim = _established_with_traffic(pki, 9)
    server = sim.side("server")
    first: Address = ("192.0.2.70", 7000)
    second: Address = ("192.0.2.71", 7001)
    (a,) = sim.client.protect([b"a"])
    sim.deliver_to_server(a, first)
    (to_first,) = _to(sim, first)
    sim.run_for(CHALLENGE_GAP)
    (b,) = sim.client.protect([b"b"])
    sim.deliver_to_server(b, second)
    assert len(_to(sim, second)) == 1  # its own challenge replaced the first one
    # The first challenge reaches the client after all (someone relays it); the client
    # answers it, and its next record comes from the first address.
    unexpected = server.stats.heartbeat_unexpected
    sim.deliver_to_client(to_first)
    sim.run_for(4 * DELAY)
    assert server.stats.heartbeat_unexpected == unexpected + 1
    (c,) = sim.client.protect([b"c"])
    assert sim.deliver_to_server(c, first) == [b"c"]
    _assert_not_moved(sim, server)


def test_peer_without_heartbeats_moves_at_once(pki: Pki) -> None:
    sim = cid_sim(*make_configs(pki, 10, client={"heartbeat": False}))
    sim.establish()
    _exchange(sim)
    server = sim.side("server")
    new_addr: Address = ("198.18.0.2", 50124)
    sim.client_addr = new_addr
    _exchange(sim, 4)
    assert sim.endpoint.address_of(server) == new_addr
    assert sim.endpoint.stats.address_changes == 1
    assert sim.endpoint.stats.path_challenges == 0


def test_unknown_cid_is_counted(pki: Pki) -> None:
    sim = _established_with_traffic(pki, 7)
    server = sim.side("server")
    ids = server.connection_ids
    assert ids is not None
    unknown = bytes(b ^ 0x5A for b in ids[0])
    (genuine,) = sim.client.protect([b"x"])
    forged = genuine[:11] + unknown + genuine[19:]
    before = dataclasses.replace(sim.endpoint.stats)
    assoc, out = sim.endpoint.receive(forged, ("192.0.2.5", 1000), sim.now, sim.clock.wall)
    assert (assoc, out) == (None, [])
    assoc, out = sim.endpoint.receive(forged, CLIENT_ADDR, sim.now, sim.clock.wall)
    assert (assoc, out) == (None, [])
    assert sim.endpoint.stats.unknown_cid == before.unknown_cid + 2
    assert sim.endpoint.stats.hello_verify_sent == before.hello_verify_sent
    assert server.stats.bad_mac == 0 and server.stats.replay == 0
    _assert_not_moved(sim, server)


# --- without connection IDs -------------------------------------------------------------------


def test_without_cid_new_address_means_a_new_association_resumed_with_ticket(pki: Pki) -> None:
    ring = ticket_ring("cid-ring", 8)
    c, s = make_configs(pki, 8, connection_id=False, ticket_keys=ring)
    sim = cid_sim(c, s)
    sim.establish()
    _exchange(sim)
    old_server = sim.side("server")
    ((_t, ticket),) = sim.events_of("client", SessionTicketReceived)
    new_addr: Address = ("198.18.0.2", 50555)
    sim.client_addr = new_addr
    # The old association's records from the new address reach no association.
    before = sim.endpoint.stats.not_client_hello
    sent = sim.send_packet("c2s")
    sim.run_for(4 * DELAY)
    assert sent is not None and sim.stream.received("c2s")[sent.seq] == 0
    assert sim.endpoint.stats.not_client_hello == before + 1
    assert old_server.stats.rx_records > 0 and sim.endpoint.stats.address_changes == 0
    # The client redials from there with its ticket and resumes.
    redial_at = sim.now
    sim.redial(with_changes(c, resume_session=ticket.session))
    assert sim.run_until(sim.both_established, 5.0).satisfied, sim.format()
    new_server = sim.side("server")
    assert new_server is not old_server
    assert sim.endpoint.associations == {CLIENT_ADDR: old_server, new_addr: new_server}
    done = [e for _t, e in sim.events_of("client", HandshakeCompleted)]
    assert done[-1].resumed
    assert [e.resumed for _t, a, e in sim.server_events_of(HandshakeCompleted)
            if a is new_server] == [True]
    kinds = [r.msg_type for r in sim.handshake_records(redial_at)]
    assert kinds.count(HandshakeType.hello_verify_request) == 1  # the cookie, as always
    assert HandshakeType.certificate not in kinds
    took = sim.now - redial_at
    first = len(sim.stream.sent("c2s"))
    _exchange(sim)
    assert not sim.stream.lost("c2s", sim.stream.sent("c2s")[first:])
    report(SECTION, f"without CID: new address -> redial, resumed in {took * 1000:.0f} ms "
                    f"(cookie + abbreviated handshake)")
