"""dtlsvpn.dtls.hbfast: a peer's HeartbeatRequest answered at the record header.

Differential: two pairs built from the same seeds receive the same request datagrams,
one through ``HeartbeatIn`` and one with it switched off (the slow path: parse, record,
dispatch); the answers must be the same bytes and every counter, the timer and the
last-received time the same.  Replays, forgeries and responses are not taken at the
header and end up counted by the slow path as before.
"""

from __future__ import annotations

import random

import pytest

import dtlsvpn.dtls.association as association_module
from bench.micro_core import CLIENT_ADDR, WALL, established_pair
from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.epoch import ReadState, WriteEpoch
from dtlsvpn.dtls.fastpath import FastOpen, FastSeal
from dtlsvpn.dtls.hbfast import HeartbeatIn
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.wire.constants import ContentType
from tests.support.records import AEAD_SUITES
from tests.support.records import protection as _prot

CT_HEARTBEAT = int(ContentType.heartbeat)


def _requests(client: Association, server: Association, n: int) -> list[tuple[float, bytes]]:
    """The client's keepalive requests for ``n`` idle intervals, answered each time by
    ``server`` (the slow path: it only feeds the client)."""
    out = []
    for _ in range(n):
        t = client.get_timer()
        assert t is not None
        client.handle_timer(t)
        (req,) = client.datagrams_to_send(t)
        out.append((t, req))
        server._hb_in = None  # (this one is only the client's peer)
        server.receive_datagram(req, t, WALL)
        for d in server.datagrams_to_send(t):
            client.receive_datagram(d, t, WALL)
    return out


def _state(a: Association) -> tuple[object, ...]:
    return (a.stats, a.get_timer(), a.needs_service, a.advanced, a.pop_events())


@pytest.mark.parametrize("cid", [False, True], ids=["no-cid", "cid"])
def test_fast_answer_equals_slow_answer(cid: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _e, feeder = established_pair(cid)
    # What reaches the two twins: data (the peer uses the keys: the fast paths open),
    # three keepalive requests, a replay, a forgery.
    (data,) = client.protect([b"\x45" * 40])
    feeder.receive_datagram(data, 0.5, WALL)
    *reqs, (t_last, last) = _requests(client, feeder, 4)
    t, first = reqs[0]
    forged = last[:-1] + bytes([last[-1] ^ 1])  # a fresh sequence number, a bad tag
    stream = [(0.5, data), *reqs, (t_last, first), (t_last + 0.1, forged)]
    parses = 0
    real_parse = association_module.parse_datagram

    def counting_parse(*args: object) -> object:
        nonlocal parses
        parses += 1
        return real_parse(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(association_module, "parse_datagram", counting_parse)
    answers: dict[bool, list[tuple[list[bytes], tuple[object, ...]]]] = {}
    parse_counts = {}
    for fast in (True, False):
        _c, endpoint, server = established_pair(cid)
        parses = 0
        rows = []
        for when, d in stream:
            if not fast:
                server._hb_in = None
            elif d is first and when == t:
                assert server._hb_in is not None
            assoc, inner = endpoint.receive(d, CLIENT_ADDR, when, WALL)
            assert assoc is server and inner == ([b"\x45" * 40] if d is data else [])
            rows.append((server.datagrams_to_send(when), _state(server)))
        answers[fast] = rows
        parse_counts[fast] = parses
    assert answers[True] == answers[False]
    assert [len(out) for out, _ in answers[True]] == [0, 1, 1, 1, 0, 0]  # replay, forgery: none
    stats = answers[True][-1][1][0]
    assert stats.heartbeat_answered == 3  # type: ignore[attr-defined]
    assert stats.replay == 1 and stats.bad_mac == 1  # type: ignore[attr-defined]
    # Parsed: the first data, and without a CID the replay and the forgery (a tls12_cid
    # record's replay and bad tag are counted by FastOpen before the heartbeat check).
    assert parse_counts[True] == (1 if cid else 3)
    assert parse_counts[False] == len(stream) - (2 if cid else 0)


@pytest.mark.parametrize("cid", [False, True], ids=["no-cid", "cid"])
def test_fast_response_equals_slow_response(cid: bool) -> None:
    """The answer to our own request, taken at the header: the same events (with the
    round trip), counters and timer as through the slow path."""
    rows = []
    for fast in (True, False):
        client, endpoint, server = established_pair(cid)
        (data,) = client.protect([b"\x45" * 40])
        endpoint.receive(data, CLIENT_ADDR, 0.5, WALL)  # the peer used the keys
        server.pop_events()
        assert server._keepalive is not None
        server._keepalive.probe_now(1.0)
        (req,) = server.datagrams_to_send(1.0)
        client.receive_datagram(req, 1.0, WALL)
        (resp,) = client.datagrams_to_send(1.0)
        if not fast:
            server._hb_in = None
        else:
            assert server._hb_in is not None
        endpoint.receive(resp, CLIENT_ADDR, 1.25, WALL)
        rows.append((req, resp, server.datagrams_to_send(1.25), _state(server)))
    assert rows[0] == rows[1]
    events = rows[0][3][4]
    assert [type(e).__name__ for e in events] == ["HeartbeatAnswered"]  # type: ignore[union-attr]


@pytest.mark.parametrize("cid", [False, True], ids=["no-cid", "cid"])
def test_data_is_not_taken_at_the_heartbeat_header(cid: bool) -> None:
    client, endpoint, server = established_pair(cid)
    (first,) = client.protect([b"\x45" * 40])
    endpoint.receive(first, CLIENT_ADDR, 0.5, WALL)  # the peer used the keys: fast paths open
    (data,) = client.protect([b"\x45" * 40])
    hb = server._hb_in
    assert hb is not None
    before = (server.stats.rx_records, hb.window.top)
    assert hb.take(data, server.stats) is None
    assert (server.stats.rx_records, hb.window.top) == before
    assert endpoint.receive(data, CLIENT_ADDR, 1.1, WALL)[1] == [b"\x45" * 40]


class _CountingAead:
    """An AEAD object that counts its decrypt calls (the record opens)."""

    def __init__(self, aead: object) -> None:
        self.aead, self.decrypts = aead, 0

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        self.decrypts += 1
        return self.aead.decrypt(nonce, data, aad)  # type: ignore[attr-defined, no-any-return]

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self.aead.encrypt(nonce, data, aad)  # type: ignore[attr-defined, no-any-return]


def _count_opens(a: Association) -> _CountingAead:
    """Count ``a``'s record opens from now on (its fast parts rebuilt around the counter)."""
    prot = a._read.protection
    assert prot is not None
    counter = _CountingAead(prot.aead)
    prot.aead = counter  # type: ignore[assignment]
    a.fast_open = FastOpen(a._read, a._fast_type)
    a._hb_in = HeartbeatIn.build(a._read, a.fast_open, a._keepalive)
    return counter


@pytest.mark.parametrize("cid", [False, True], ids=["no-cid", "cid"])
def test_keepalive_is_opened_once(cid: bool) -> None:
    """A keepalive request is opened once on the server (with a CID FastOpen's plaintext
    goes on to HeartbeatIn) and its response once on the client; requests, answers,
    counters and timers are byte for byte those of the slow path."""
    rows = []
    for fast in (True, False):
        client, endpoint, server = established_pair(cid)
        (data,) = client.protect([b"\x45" * 40])
        endpoint.receive(data, CLIENT_ADDR, 0.5, WALL)  # the peer used the keys
        server.pop_events()
        (back,) = server.protect([b"\x45" * 40])
        client.receive_datagram(back, 0.5, WALL)
        client.pop_events()
        s_count, c_count = _count_opens(server), _count_opens(client)
        trips = []
        for _ in range(3):
            t = client.get_timer()
            assert t is not None
            client.handle_timer(t)
            (req,) = client.datagrams_to_send(t)
            if not fast:
                server._hb_in = client._hb_in = None  # the slow path: parse, dispatch
            endpoint.receive(req, CLIENT_ADDR, t, WALL)
            (resp,) = server.datagrams_to_send(t)
            if not fast:
                client._hb_in = None
            client.receive_datagram(resp, t + 0.001, WALL)
            trips.append((req, resp, _state(server), _state(client)))
        if fast:
            assert (s_count.decrypts, c_count.decrypts) == (3, 3)
        rows.append(trips)
    assert rows[0] == rows[1]
    assert rows[0][-1][2][0].heartbeat_answered == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("cid", [b"", b"\x01\x02\x03\x04\x05\x06\x07\x08"])
def test_heartbeat_seal_equals_slow_seal(suite: SuiteInfo, cid: bytes) -> None:
    """Our heartbeats from FastSeal(heartbeat) are the bytes WriteEpoch.seal writes, and
    HeartbeatIn opens them (without a CID from its own parts) as RecordProtection does."""
    rng = random.Random(5)
    messages = [b"\x01\x00\x10" + rng.randbytes(16 + 16), b"\x02\x00\x00" + bytes(16),
                b"\x01\x05\x14" + rng.randbytes(1300 + 16)]  # type, payload_length, ...
    slow = WriteEpoch(_prot(suite, 9), 77)
    state = WriteEpoch(_prot(suite, 9), 77)
    seal = FastSeal(state, 3, cid, CT_HEARTBEAT)
    sealed = [seal.seal_one(m) for m in messages] + seal.seal(messages)
    assert sealed == [slow.seal(CT_HEARTBEAT, 3, m, cid) for m in messages * 2]
    assert state.next_seq == slow.next_seq == 77 + 6
    if cid:
        return  # (a CID record is opened by FastOpen: tests/unit/test_fastpath.py)
    read = ReadState(epoch=3, protection=_prot(suite, 9))
    hb = HeartbeatIn(read, object())  # type: ignore[arg-type]
    stats = Stats()
    for i, (m, d) in enumerate(zip(messages * 2, sealed, strict=True)):
        assert read.protection is not None
        assert read.protection.open(3 << 48 | 77 + i, CT_HEARTBEAT, d[13:]) == m
        assert hb.take(d, stats) == m
    assert stats.rx_records == 6 and read.window.top == 77 + 5
    assert hb.take(sealed[0], stats) is None  # a replay: not taken, nothing counted
    forged = slow.seal(CT_HEARTBEAT, 3, messages[0], cid)
    forged = forged[:-1] + bytes([forged[-1] ^ 1])
    assert hb.take(forged, stats) is None  # a bad tag: left to the slow path to count
    short = slow.seal(CT_HEARTBEAT, 3, b"\x01\x00\x20" + bytes(40), cid)  # RFC 6520 §4
    assert hb.take(short, stats) is None
    assert stats.rx_records == 6 and read.window.top == 77 + 5



def test_nothing_is_held_after_take_heartbeat() -> None:
    """With a CID, FastOpen opens a keepalive before it sees it is not data and holds its
    plaintext for HeartbeatIn (a GRO run stops there).  Once ``_take_heartbeat`` has
    run, whether it took that datagram or left another to the slow path, nothing is held
    any more: no plaintext outlives the datagram it came from."""
    client, endpoint, server = established_pair(True)
    (data,) = client.protect([b"\x45" * 40])
    endpoint.receive(data, CLIENT_ADDR, 0.5, WALL)  # the peer used the keys: fast paths open
    fast = server.fast_open
    assert fast is not None
    answered = server.stats.heartbeat_answered
    for taken in (True, False):
        t = client.get_timer()
        assert t is not None
        client.handle_timer(t)
        (req,) = client.datagrams_to_send(t)
        assert server.receive_fast([req], 0, [], t) == 0  # not data: the run stops there
        assert fast.held is not None and fast.held[0] is req
        other = req if taken else client.protect([b"\x45" * 40])[0]
        assert server._take_heartbeat(other, t) is taken
        assert fast.held is None
        if taken:
            server.datagrams_to_send(t)
    assert server.stats.heartbeat_answered == answered + 1


@pytest.mark.parametrize("cid", [False, True], ids=["no-cid", "cid"])
def test_a_keepalive_inside_a_data_run_is_opened_once(cid: bool) -> None:
    """A run of datagrams (a GRO buffer: data, a keepalive request, data), read as the
    batch lanes do (``receive_fast`` for the run, ``receive_datagram`` for the one it
    stops at): three records, three opens; with a CID ``FastOpen`` already opened the
    keepalive when it stopped there, and that plaintext is the one answered."""
    client, endpoint, server = established_pair(cid)
    (data,) = client.protect([b"\x45" * 40])
    endpoint.receive(data, CLIENT_ADDR, 0.5, WALL)
    server.pop_events()
    t = client.get_timer()
    assert t is not None
    first = client.protect([b"\x45" * 40])
    client.handle_timer(t)
    (request,) = client.datagrams_to_send(t)
    run = [*first, request, *client.protect([b"\x46" * 40])]
    count = _count_opens(server)
    out: list[bytes] = []
    i = server.receive_fast(run, 0, out, t)
    assert i == 1
    out += server.receive_datagram(run[1], t, WALL)
    assert server.receive_fast(run, 2, out, t) == 3
    assert out == [b"\x45" * 40, b"\x46" * 40]
    assert count.decrypts == 3
    assert server.stats.heartbeat_answered == 1 and len(server.datagrams_to_send(t)) == 1
