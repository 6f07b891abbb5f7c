"""daemon/stream.py: two StreamLinks over a real socketpair (non-blocking, no loop)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dtlsvpn.daemon.stream import StreamLink
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.dtls.stream import StreamAssociation
from tests.pki import Pki
from tests.sim.configs import configs_for

WALL = 1_750_000_000.0  # inside the session PKI's validity
MTU = 1400


@pytest.fixture
def pair(pki: Pki) -> Iterator[tuple[StreamLink, StreamLink]]:
    c, s = configs_for("ecdhe-psk-chacha", pki)
    a, b = socket.socketpair()
    client = StreamLink(a, StreamAssociation(c), max_message=MTU, queue_limit=64_000,
                        name="server")
    server = StreamLink(b, StreamAssociation(s), max_message=MTU, queue_limit=64_000,
                        name="client")
    server.assoc.accept(0.0)
    client.assoc.connect(0.0, WALL)
    yield client, server
    a.close()
    b.close()


def pump(links: tuple[StreamLink, ...], rounds: int = 20) -> tuple[list[bytes], list[bytes],
                                                                  list[Event]]:
    got: list[list[bytes]] = [[] for _ in links]
    events: list[Event] = []
    for _ in range(rounds):
        for i, link in enumerate(links):
            events += link.service(1.0)
            got[i] += link.on_readable(1.0, WALL)
    return got[0], got[1], events


def test_packets_cross_both_ways_after_the_sp_headers(pair: tuple[StreamLink, StreamLink]
                                                      ) -> None:
    client, server = pair
    _, _, events = pump(pair)
    assert sum(isinstance(e, HandshakeCompleted) for e in events) == 2
    assert client.ready and server.ready
    packets = [bytes([0x45]) + bytes([i]) * (i * 13 % MTU) for i in range(1, 60)]
    assert client.send_packets(packets) == len(packets)
    assert server.send_packets(packets[:3]) == 3
    to_client, to_server, _ = pump(pair)
    assert to_server == packets and to_client == packets[:3]


def test_a_stalled_peer_keeps_memory_bounded(pair: tuple[StreamLink, StreamLink]) -> None:
    client, server = pair
    pump(pair)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes([0x45]) + bytes(MTU - 1)
    accepted = sum(client.send_packets([big]) for _ in range(2000))  # the server never reads
    assert client.queue.size <= client.queue.limit
    assert client.dropped == 2000 - accepted > 0
    # When the peer reads again, everything accepted arrives intact, in order.
    got: list[bytes] = []
    for _ in range(400):
        client.flush()
        got += server.on_readable(2.0, WALL)
    assert got == [big] * accepted and not server.closed


def test_bad_sp_header_closes_naming_the_bytes(pki: Pki) -> None:
    c, s = configs_for("ecdhe-psk-chacha", pki)
    a, b = socket.socketpair()
    # The client speaks another SP protocol (0x0010, an NNG pair socket).
    client = StreamLink(a, StreamAssociation(c), max_message=MTU, protocol=0x0010)
    server = StreamLink(b, StreamAssociation(s), max_message=MTU, name="client")
    server.assoc.accept(0.0)
    client.assoc.connect(0.0, WALL)
    _, _, events = pump((client, server))
    # Whichever header is checked first ends it: here the client's check of ours
    # (the server's is sent as soon as its handshake completes).
    assert client.closed and not client.ready and server.closed
    assert client.close_reason is not None and "SP protocol 0x4456" in client.close_reason
    assert "0053500044560000" in client.close_reason and "expected 0x0010" in client.close_reason
    assert sum(isinstance(e, AssociationClosed) for e in events) == 2
    a.close()
    b.close()


def test_oversized_frame_closes_and_later_packets_are_refused(
        pair: tuple[StreamLink, StreamLink]) -> None:
    client, server = pair
    pump(pair)
    client.assoc.send([(MTU + 1).to_bytes(8, "big")])
    client.queue.push(client.assoc.data_to_send(), force=True)
    client.flush()
    pump(pair, rounds=3)
    assert server.closed and server.close_reason is not None
    assert "1401 bytes" in server.close_reason
    assert server.send_packets([b"\x45"]) == 0  # closed: refused, counted
    assert server.dropped == 1


def test_eof_without_close_notify(pki: Pki) -> None:
    _c, s = configs_for("psk-aes128", pki)
    a, b = socket.socketpair()
    server = StreamLink(b, StreamAssociation(s), max_message=MTU)
    server.assoc.accept(0.0)
    a.close()
    server.on_readable(0.5, WALL)
    assert server.closed and server.close_reason == "connection closed by peer"
    b.close()
