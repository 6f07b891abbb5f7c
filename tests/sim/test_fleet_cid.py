"""Fleet CIDs through real Associations and ServerEndpoints in the simulator.

Two servers of one fleet (ids 1 and 2, one fleet secret, obfuscated and plain CIDs):
the CID that server 1 hands out in its ServerHello names server 1 for anyone holding
the secret (server 2 and the balancer's map); server 2 drops that client's records and
counts them as ``cid_foreign``; a record with a made-up CID is ``cid_forged``; the
association itself keeps working through all of it.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from dtlsvpn.crypto.tickets import TicketKeyRing, parse_keys
from dtlsvpn.dtls.cid import CidLayout, CidMode, prefix_owners
from dtlsvpn.dtls.endpoint import ServerEndpoint
from tests.pki import Pki
from tests.sim.configs import split_configs, ticket_ring, with_changes
from tests.sim.harness import CLIENT_ADDR, Simulator, link_pair
from tests.sim.sessions import check_resumed, connect, full

pytestmark = pytest.mark.sim

SECRET = b"fleet secret for the simulator!!"


@pytest.mark.parametrize("mode", list(CidMode))
def test_fleet_cids_route_to_their_server_and_others_drop_them(pki: Pki, mode: CidMode) -> None:
    one, two = CidLayout(1, mode, SECRET), CidLayout(2, mode, SECRET)
    c, s = split_configs("ecdhe-ecdsa-aes128", pki, 11)
    c2s, s2c = link_pair(11, delay=0.01)
    sim = Simulator(c, with_changes(s, cid_layout=one), c2s=c2s, s2c=s2c, grace=2.0)
    sim.establish()
    ids = sim.side("server").connection_ids
    assert ids is not None
    cid = ids[0]
    assert one.server_of(cid) == 1 and two.server_of(cid) == 1
    assert prefix_owners(mode, SECRET)[int.from_bytes(cid[:2], "big")] == 1

    other = ServerEndpoint(with_changes(s, cid_layout=two))
    (record,) = sim.client.protect([b"to the wrong server"])
    assert record[0] == 25 and record[11:19] == cid
    assert other.receive(record, CLIENT_ADDR, sim.now, sim.clock.wall) == (None, [])
    forged = record[:11] + bytes(b ^ 0xA5 for b in cid) + record[19:]
    assert other.receive(forged, CLIENT_ADDR, sim.now, sim.clock.wall) == (None, [])
    assert (other.stats.unknown_cid, other.stats.cid_foreign, other.stats.cid_forged) == (2, 1, 1)

    before = dataclasses.replace(sim.endpoint.stats)
    assert sim.endpoint.receive(forged, CLIENT_ADDR, sim.now, sim.clock.wall) == (None, [])
    assert sim.endpoint.stats.cid_forged == before.cid_forged + 1
    assert sim.deliver_to_server(record, CLIENT_ADDR) == [b"to the wrong server"]


def test_a_client_resumes_on_another_server_with_the_fleets_ticket_keys(pki: Pki) -> None:
    """Server 1 issues the ticket; server 2, whose ring only holds the keys read from
    server 1's (a reader's ``rotate_every=0``), resumes it: an abbreviated handshake, no
    certificate work, and the new association's CID names server 2."""
    one, two = CidLayout(1, CidMode.OBFUSCATED, SECRET), CidLayout(2, CidMode.OBFUSCATED, SECRET)
    writer = ticket_ring("fleet-writer", 5)
    first = full(pki, "ecdhe-ecdsa-aes128", writer, server={"cid_layout": one})
    ids = first.sim.side("server").connection_ids
    assert ids is not None and one.server_of(ids[0]) == 1
    reader = TicketKeyRing(random.Random("fleet-reader").randbytes, rotate_every=0,
                           keys=parse_keys(writer.dumps().encode()))
    second = connect(pki, "ecdhe-ecdsa-aes128", reader, session=first.ticket, at=30.0,
                     server={"cid_layout": two})
    check_resumed(second, first.ticket)
    ids = second.sim.side("server").connection_ids
    assert ids is not None and two.server_of(ids[0]) == 2
    assert reader.keys == writer.keys  # the reader sealed its new ticket with the fleet's key
    assert writer.open(second.ticket.ticket, second.sim.clock.wall) is not None
