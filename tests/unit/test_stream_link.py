"""daemon/stream.py: two StreamLinks over a real socketpair (non-blocking, no loop)."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
from collections.abc import Iterator

import pytest

from dtlsvpn.daemon.stream import MIN_INNER_MTU, StreamLink
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.vpn.sp import CONTROL_LIMIT_FACTOR
from dtlsvpn.wire.constants import ContentType
from dtlsvpn.wire.heartbeat import encode_heartbeat
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


def test_inner_mtu_fits_one_outer_segment(pki: Pki) -> None:
    """TCP_MAXSEG of the outer connection less the SP length and the TLS record overhead,
    at most max_message; a socket without TCP_MAXSEG (a socketpair) gives max_message."""
    c, s = configs_for("ecdhe-psk-chacha", pki)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 900)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 900)
    a.connect(lsock.getsockname())
    b, _ = lsock.accept()
    lsock.close()
    try:
        client = StreamLink(a, StreamAssociation(c), max_message=MTU)
        server = StreamLink(b, StreamAssociation(s), max_message=MTU)
        server.assoc.accept(0.0)
        client.assoc.connect(0.0, WALL)
        pump((client, server))
        assert client.ready
        mss = a.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        assert mss <= 900
        overhead = client.assoc.record_overhead
        assert overhead >= 5 + 16
        assert client.inner_mtu == mss - 8 - overhead < MTU
        big = StreamLink(socket.socket(), StreamAssociation(c), max_message=600)
        assert big.inner_mtu == MIN_INNER_MTU  # (unconnected: MSS 536, the floor applies)
        big.sock.close()
    finally:
        a.close()
        b.close()
    x, y = socket.socketpair()
    assert StreamLink(x, StreamAssociation(c), max_message=MTU).inner_mtu == MTU
    x.close()
    y.close()


def test_the_mss_clamp_follows_the_tcp_carrier() -> None:
    """tunmtu.follow: a peer that a TCP link carries counts with the link's inner MTU
    (not with its DTLS PMTU), and never towards the TUN MTU."""
    from types import SimpleNamespace

    from dtlsvpn.daemon.tunmtu import TunnelMtu

    iface = SimpleNamespace(mtu=None, addresses=(), mss_clamp=True)
    t = TunnelMtu("dv0", iface)  # type: ignore[arg-type]
    t.mtu, t.policy = 1400, "auto"
    clamp = SimpleNamespace(mss4=0, mss6=0)
    t.clamp_to = clamp  # type: ignore[assignment]
    link = SimpleNamespace(ready=True, inner_mtu=1100)
    peer = SimpleNamespace(mtu=SimpleNamespace(applied=1300), established=True, stream=None,
                           limit=0)
    t.follow([peer])  # type: ignore[list-item]
    assert (clamp.mss4, clamp.mss6) == (1260, 1240) and t.policy == "pmtu"
    peer.stream = link
    t.follow([peer])  # type: ignore[list-item]
    assert (clamp.mss4, clamp.mss6) == (1060, 1040)
    link.inner_mtu = 1500  # a roomy outer path: the TUN MTU still bounds the clamp
    t.follow([peer])  # type: ignore[list-item]
    assert (clamp.mss4, clamp.mss6) == (1400 - 40, 1400 - 60)  # t.mtu, not the DTLS 1300
    peer.stream = None  # back on UDP: the DTLS value again
    link.inner_mtu = 1100
    t.follow([peer])  # type: ignore[list-item]
    assert (clamp.mss4, clamp.mss6) == (1260, 1240)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs root (CAP_NET_ADMIN): run `sudo make test`")
def test_tcp_connect_marks_the_socket_of_a_full_tunnel() -> None:
    """The client's TCP dial carries the full tunnel's fwmark (else the connection to
    the server would be routed into the tunnel itself); refused at once: OSError."""
    from dtlsvpn.daemon.devices import Devices

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    devices = Devices()
    sock = devices.tcp_connect(socket.AF_INET, lsock.getsockname(), mark=0x5A)
    try:
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x5A
    finally:
        sock.close()
    port = lsock.getsockname()[1]
    lsock.close()
    try:
        refused = devices.tcp_connect(socket.AF_INET, ("127.0.0.1", port))
    except OSError:
        return  # refused at once
    try:  # or in progress: SO_ERROR says so once it is writable
        select.select([], [refused], [], 2.0)
        assert refused.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    finally:
        refused.close()


def test_refused_packets_are_counted_by_reason(pair: tuple[StreamLink, StreamLink]) -> None:
    """Not ready, the queue's hard limit and spent keys are three reasons, each counted
    through the caller's ``drop`` (the peer's counters), never all as stream_queue_full."""
    client, server = pair
    drops: dict[str, int] = {}

    def drop(reason: str, n: int) -> None:
        drops[reason] = drops.get(reason, 0) + n

    assert client.send_packets([b"\x45early"] * 3, drop) == 0  # no handshake yet
    assert drops == {"stream_not_ready": 3}
    pump(pair)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes([0x45]) + bytes(MTU - 1)
    accepted = sum(client.send_packets([big] * 10, drop) for _ in range(20))  # never read
    assert drops["stream_queue_full"] == 200 - accepted > 0
    for _ in range(400):  # the server reads again: the queue drains
        client.flush()
        server.on_readable(2.0, WALL)
    assert not client.queue
    limit = client.assoc.record_limit
    assert limit is not None
    client.assoc.config = dataclasses.replace(client.assoc.config, rekey_records=50)
    sent = client.send_packets([b"\x45" * 40] * 200, drop)  # past 2 x 50 records
    assert client.assoc.close_cause == "record_limit"
    assert drops["stream_keys_spent"] == 200 - sent > 0
    assert client.dropped == sum(drops.values())


def test_control_bytes_for_a_peer_that_never_reads_are_capped(
        pair: tuple[StreamLink, StreamLink]) -> None:
    """Heartbeat answers (and alerts, flights) are queued past ``queue_limit``: a peer
    that keeps asking and never reads grew the queue without end; at
    ``CONTROL_LIMIT_FACTOR`` x the limit the link is given up (``control_overflow``)."""
    client, server = pair
    pump(pair)
    assert client.ready and server.ready
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    request = encode_heartbeat(1, bytes(16_000), bytes(16))
    cap = CONTROL_LIMIT_FACTOR * server.queue.limit
    most = 0
    for second in range(40):  # (answers are rate-limited per second: one a second here)
        now = 2.0 + second
        client.assoc._seal(int(ContentType.heartbeat), request)
        client.sock.sendall(client.assoc.data_to_send())
        server.on_readable(now, WALL)
        server.service(now)
        most = max(most, server.queue.size)
        if server.closed:
            break
    assert server.closed and server.cause == "control_overflow", server.queue.size
    assert server.close_reason is not None and "does not read" in server.close_reason
    assert server.assoc.stats.heartbeat_answered * 16_000 > server.queue.limit  # it answered
    assert most <= cap
    server.close(40.0)  # nothing more is written
    assert server.queue.size == most
