"""Why a handshake failed, as the core reports it (dtls/failures.py): a wrong PSK is named
on both sides, a silent peer after our Finished is named too, and the server says who."""

from __future__ import annotations

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import AssociationClosed
from dtlsvpn.dtls.failures import WrongKey
from dtlsvpn.errors import AlertDescription
from dtlsvpn.wire.record import parse_datagram
from tests.pki import Pki
from tests.sim.configs import configs_for, with_changes
from tests.sim.harness import Simulator

WALL = 1_800_000_000.0
CLIENT = ("198.18.0.2", 40001)


def _closed(events: list[object]) -> AssociationClosed:
    (ev,) = [e for e in events if isinstance(e, AssociationClosed)]
    return ev


def test_wrong_psk_named_on_both_sides(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    sim = Simulator(with_changes(c, psk=b"\x01" * 32), s)
    sim.connect()
    sim.run_until(lambda: sim.client.is_closed, limit_seconds=30)
    ((_, client_ev),) = sim.events_of("client", AssociationClosed)
    ((_, _, server_ev),) = sim.server_events_of(AssociationClosed)
    print(f"wrong PSK: the server refused after {sim.now:.2f} s (simulated): "
          f"{server_ev.reason!r}; the client: {client_ev.reason!r}")
    assert server_ev.failure == "wrong_key" and server_ev.handshake
    assert server_ev.alert == AlertDescription.bad_record_mac
    assert server_ev.peer_identity == "PSK identity " + c.psk_identity.decode()
    assert client_ev.failure == "wrong_key" and "wrong PSK or key?" in client_ev.reason


def test_silent_peer_after_our_finished(pki: Pki) -> None:
    """A peer that answers the hellos and then drops our Finished (as OpenSSL and GnuTLS do
    with a wrong PSK): when we give up, the reason says what we were waiting for."""
    c, s = configs_for("psk-aes128", pki, connection_id=False)  # plain epoch-1 records
    endpoint = ServerEndpoint(s)
    client = Association(c)
    client.connect(0.0, WALL)
    for step in range(10):
        now = step * 0.1
        replies: list[bytes] = []
        for datagram in client.datagrams_to_send(now):
            if any(r.epoch > 0 for r in parse_datagram(datagram)[0]):
                continue  # our Finished never arrives (or is dropped unauthenticated)
            assoc, stateless = endpoint.receive(datagram, CLIENT, now, WALL)
            replies += stateless + (assoc.datagrams_to_send(now) if assoc else [])
        for datagram in replies:
            client.receive_datagram(datagram, now, WALL)
    client.close(1.0)
    ev = _closed(client.pop_events())
    print(ev.reason)
    assert ev.failure == "finished_unanswered" and "wrong PSK or key?" in ev.reason


def test_established_close_carries_no_failure(pki: Pki) -> None:
    sim = Simulator(*configs_for("psk-aes128", pki))
    sim.establish()
    sim.client.close(sim.now)
    ev = _closed(sim.client.pop_events())
    assert (ev.handshake, ev.failure, ev.peer_identity) == (False, None, None)


def test_wrong_key_needs_failures_spread_over_retransmissions() -> None:
    """Forged or damaged records all at once (or one duplicated) are not a wrong key; the
    peer's Finished failing again a retransmission timeout later is."""
    wk = WrongKey()
    assert not any(wk.failed(n, seq, False, 10.0) for n, seq in ((1, 0), (2, 1), (3, 2)))
    assert not wk.failed(4, 2, False, 10.2)  # a duplicate, soon after
    assert wk.failed(5, 3, False, 11.0)  # the peer retransmitted: its keys differ
    assert not wk.failed(6, 4, False, 12.0)  # said once
    assert not WrongKey().failed(1, 0, True, 0.0)  # established: never
    fresh = WrongKey()
    assert not fresh.failed(0, 0, False, 1.0)  # refused for another reason (replay, CID)
