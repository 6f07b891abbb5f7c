"""cli/dtls/stream_tool.py: the TLS debug tool's connection against a peer that never reads."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from dtlsvpn.cli.dtls import stream_tool
from dtlsvpn.cli.dtls.stream_tool import StreamPeer
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.vpn.sp import CONTROL_LIMIT_FACTOR
from tests.pki import Pki
from tests.sim.configs import configs_for

WALL = 1_750_000_000.0  # inside the session PKI's validity
LIMIT = 64_000


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop(clock=lambda: 1.0, wall_clock=lambda: WALL)
    yield lp
    lp.close()


def test_echo_to_a_client_that_never_reads_is_capped(
        pki: Pki, loop: Loop, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``server --echo`` answers every record; a client that sends and never reads made
    the tool's send queue grow without end (everything sealed was pushed with
    ``force``).  Like the daemon's carrier (``control_overflow``), the tool gives the
    connection up once the queue would pass ``CONTROL_LIMIT_FACTOR`` x its limit."""
    monkeypatch.setattr(stream_tool, "SEND_QUEUE", LIMIT)
    c, s = configs_for("ecdhe-psk-chacha", pki)
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    events: list[Event] = []
    sassoc = StreamAssociation(s)
    sassoc.accept(1.0)
    server = StreamPeer(loop, b, sassoc, "client", sp=False,
                        on_message=lambda p, data: p.send(data),
                        on_event=lambda _p, ev: events.append(ev),
                        after=lambda _n, _w: None)
    client = StreamAssociation(c)
    client.connect(1.0, WALL)
    a.setblocking(False)
    for _ in range(20):  # the handshake
        a.sendall(client.data_to_send())
        loop.run_once(max_wait=0)
        with contextlib.suppress(BlockingIOError):
            client.receive_data(a.recv(65536), 1.0, WALL)
    assert client.is_established and server.established
    cap = CONTROL_LIMIT_FACTOR * LIMIT
    most = 0
    for _ in range(200):  # 200 x 16 000 bytes echoed, never read: 50 x the limit
        client.send([bytes(16_000)])
        a.sendall(client.data_to_send())
        loop.run_once(max_wait=0)
        most = max(most, server.queue.size)
        if server.done:
            break
    assert server.done and server.eof, server.queue.size
    assert most <= cap
    assert any(isinstance(ev, AssociationClosed) for ev in events)
    assert sum(isinstance(ev, HandshakeCompleted) for ev in events) == 1
    err = capsys.readouterr().err
    assert f"error: client does not read what it makes us send: over {cap} bytes" in err
    a.close()
