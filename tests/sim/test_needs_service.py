"""``needs_service`` (architecture.md, "The hot loop"): the flag the shell reads to skip
the slow-path service after a wake-up.  Its truth table, through real associations
(a client Association or RekeyingClient and a ServerEndpoint, pumped by hand here so
that nothing services them behind the test's back):

* false after a service (events popped, datagrams taken, timer read);
* false after data records of the current epoch arrive (the fast path), after a
  replayed or forged one, and after ``protect``;
* true when the peer's heartbeat request arrived (a response is queued), when a
  timer ran, on a path hint, on an alert or a close, and after the handshake's records.
"""

from __future__ import annotations

import pytest

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import AssociationClosed
from dtlsvpn.dtls.rekey import RekeyingClient
from tests.pki import Pki
from tests.sim.configs import configs_for

pytestmark = pytest.mark.sim

ADDR = ("192.0.2.7", 4433)
Side = Association | RekeyingClient


def service(side: Side, now: float) -> list[bytes]:
    """What the shell's service does: events, datagrams, then the timer."""
    side.pop_events()
    out = side.datagrams_to_send(now)
    side.get_timer()
    return out


class Pair:
    def __init__(self, pki: Pki, rekeying: bool) -> None:
        c, s = configs_for("psk-aes128", pki, cookie_exchange=False)
        self.client: Side = RekeyingClient(c) if rekeying else Association(c)
        self.endpoint = ServerEndpoint(s)
        self.now = 1.0
        self.client.connect(self.now, self.now)
        self.pump()
        self.server = self.endpoint.associations[ADDR]
        assert self.client.is_established and self.server.is_established
        # The first data each way opens the fast path (the peer used the keys).
        self.c2s(self.client.protect([b"hello"]))
        self.s2c(self.server.protect([b"hello"]))
        self.service_both()

    def service_both(self) -> None:
        assert not service(self.client, self.now)
        assert not service(self.server, self.now)

    def c2s(self, datagrams: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for d in datagrams:
            assoc, got = self.endpoint.receive(d, ADDR, self.now, self.now)
            assert assoc is not None
            out += got
        return out

    def s2c(self, datagrams: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for d in datagrams:
            out += self.client.receive_datagram(d, self.now, self.now)
        return out

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            out = service(self.client, self.now)
            moved |= bool(out)
            self.c2s(out)
            for assoc in list(self.endpoint.associations.values()):
                out = service(assoc, self.now)
                moved |= bool(out)
                self.s2c(out)
            if not moved:
                return
            self.now += 0.001


@pytest.mark.parametrize("rekeying", [False, True], ids=["association", "rekeying"])
def test_fast_path_leaves_it_alone(pki: Pki, rekeying: bool) -> None:
    p = Pair(pki, rekeying)
    assert not p.client.needs_service and not p.server.needs_service
    sealed = p.client.protect([b"a" * 100, b"b" * 100])
    assert not p.client.needs_service  # protect
    assert p.c2s(sealed) == [b"a" * 100, b"b" * 100]
    assert not p.server.needs_service  # data in the current epoch
    assert p.c2s(sealed) == []  # replays
    forged = bytearray(p.client.protect([b"d" * 100])[0])
    forged[-1] ^= 1  # a fresh sequence number, a bad tag
    assert p.c2s([bytes(forged)]) == []
    assert not p.server.needs_service
    assert p.server.stats.bad_mac == 1
    back = p.server.protect([b"c" * 50])
    assert not p.server.needs_service
    assert p.s2c(back) == [b"c" * 50]
    assert not p.client.needs_service


@pytest.mark.parametrize("rekeying", [False, True], ids=["association", "rekeying"])
def test_slow_path_sets_it(pki: Pki, rekeying: bool) -> None:
    p = Pair(pki, rekeying)
    client = p.client.current if isinstance(p.client, RekeyingClient) else p.client
    # A heartbeat request from the peer: the response is queued.
    p.now += 3.0  # past the keepalive interval
    due = p.server.get_timer()
    assert due is not None and p.now >= due
    p.server.handle_timer(p.now)
    assert p.server.needs_service  # a timer ran (and queued the request)
    request = service(p.server, p.now)
    assert request and not p.server.needs_service
    assert p.s2c(request) == []
    assert p.client.needs_service and client.needs_service
    response = service(p.client, p.now)
    assert response and not p.client.needs_service
    p.c2s(response)
    assert p.server.needs_service  # the answer to our request: the machines move
    assert not service(p.server, p.now)
    assert not p.server.needs_service
    # A timer run with nothing due still asks for one service (the timer is re-read).
    p.server.handle_timer(p.now)
    assert p.server.needs_service
    service(p.server, p.now)
    # A path hint.
    p.server.path_hint(1280, p.now)
    assert p.server.needs_service
    service(p.server, p.now)
    assert not p.server.needs_service
    # A close: close_notify queued on one side, the alert arrives on the other.
    p.client.close(p.now)
    assert p.client.needs_service
    alert = p.client.datagrams_to_send(p.now)
    p.c2s(alert)
    assert p.server.needs_service
    events = p.server.pop_events()
    assert any(isinstance(e, AssociationClosed) for e in events)
    p.server.datagrams_to_send(p.now)
    p.server.get_timer()
    assert not p.server.needs_service  # closed and drained: nothing more to do
