"""The data path's batch fast lanes against their one-at-a-time (slow) forms.

* ``FastOpen.open_batch`` = ``open`` datagram by datagram (data, stats, window,
  ``advanced``), stopping untouched at the first datagram that is not a fast one;
* ``FastSeal.seal`` of a batch = one payload at a time, and fails at the same payload
  when sequence numbers run out;
* ``Router.route_single``, ``route`` of a one-destination batch and ``admit`` = the
  per-packet loops, with the same drop counters (``spoofed_source``, ``multicast``, ...);
* ``clamp_batch`` = ``clamp_one`` on every packet;
* ``ServerEndpoint.fast_lane`` says no where ``receive`` would do more than open;
* end to end (two daemons on the fakes): bulk batches both ways, with a spoofed packet
  inside a GRO run, give the same TUN bytes and counters with the fast path on and off.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import socket
import struct
from typing import Any

import pytest

from bench.micro_core import CLIENT_ADDR, WALL, established_pair
from bench.micro_datapath import C4, S4, tcp_packet, world_pair
from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.dtls import fastpath
from dtlsvpn.dtls.epoch import ReadState, WriteEpoch
from dtlsvpn.dtls.fastpath import FastOpen, FastSeal
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import UsageError
from dtlsvpn.vpn.mss import clamp_batch, clamp_one
from dtlsvpn.vpn.router import Router
from dtlsvpn.wire.constants import MAX_SEQ
from tests.support.records import AEAD_SUITES, CT_APP, CT_CID
from tests.support.records import protection as _prot


def _state(fast: FastOpen, read: ReadState, stats: Stats) -> tuple[Any, ...]:
    return (dataclasses.asdict(stats), read.window.top, read.window.bits, fast.advanced)


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("cid", [b"", b"\xaa\xbb\xcc\xdd"])
def test_open_batch_equals_open_one_by_one(suite: SuiteInfo, cid: bytes) -> None:
    rng = random.Random(3)
    records = FastSeal(WriteEpoch(_prot(suite, 9), 0), 1, cid).seal(
        [rng.randbytes(rng.randrange(0, 1500)) for _ in range(120)])
    stream = records[:100]
    stream += records[10:20]  # replays
    stream += [r[:-1] + bytes([r[-1] ^ 1]) for r in records[100:105]]  # forgeries
    stream += records[105:]
    stream += [records[0] + records[1], b"\x16" + records[2][1:]]  # not fast ones
    rng.shuffle(stream)
    results = []
    for batch in (False, True):
        read = ReadState(epoch=1, protection=_prot(suite, 9), cid=cid)
        fast = FastOpen(read, CT_CID if cid else CT_APP)
        stats = Stats()
        out: list[bytes] = []
        slow: list[int] = []  # the datagrams left to the slow path
        if batch:
            i = 0
            while i < len(stream):
                i = fast.open_batch(stream, i, stats, out)
                if i < len(stream):
                    slow.append(i)
                    i += 1
        else:
            for i, d in enumerate(stream):
                got = fast.open(d, stats)
                if got is None:
                    slow.append(i)
                else:
                    out += got
        results.append((out, slow, _state(fast, read, stats)))
    assert results[0] == results[1]
    out, slow, (stats, *_) = results[0]
    assert len(slow) == 2 and stats["replay"] >= 10 and stats["bad_mac"] == 5
    assert len(out) == 115


def test_open_batch_stops_untouched_and_reports_opened() -> None:
    suite = AEAD_SUITES[0]
    read = ReadState(epoch=1, protection=_prot(suite, 2), cid=b"")
    fast = FastOpen(read, CT_APP)
    a, b = FastSeal(WriteEpoch(_prot(suite, 2), 0), 1, b"").seal([b"a", b"b"])
    stats = Stats()
    out: list[bytes] = []
    assert fast.open_batch([a, b"junk", b], 0, stats, out) == 1
    assert out == [b"a"] and fast.opened and stats.rx_records == 1
    assert fast.open_batch([a], 0, stats, out) == 1 and not fast.opened  # a replay
    assert stats.replay == 1 and stats.rx_records == 2 and not fast.advanced


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("cid", [b"", b"\x01\x02\x03\x04\x05\x06\x07\x08"])
def test_seal_batch_equals_one_at_a_time(suite: SuiteInfo, cid: bytes) -> None:
    payloads = [bytes([i]) * (i * 37) for i in range(50)]
    batch_state, one_state = WriteEpoch(_prot(suite, 5), 77), WriteEpoch(_prot(suite, 5), 77)
    one = FastSeal(one_state, 3, cid)
    assert FastSeal(batch_state, 3, cid).seal(payloads) == [
        r for p in payloads for r in one.seal(iter([p]))]
    assert batch_state.next_seq == one_state.next_seq == 127


def test_seal_batch_fails_where_the_numbers_run_out() -> None:
    suite = AEAD_SUITES[0]
    state = WriteEpoch(_prot(suite, 5), MAX_SEQ - 1)
    seal = FastSeal(state, 1, b"")
    with pytest.raises(UsageError, match="exhausted"):
        seal.seal([b"a", b"b", b"c"])
    assert state.next_seq == MAX_SEQ + 1  # two were numbered, the third refused
    with pytest.raises(UsageError, match="exceeds"):
        FastSeal(WriteEpoch(_prot(suite, 5), 0), 1, b"").seal([b"a", bytes(16385)])


def _pkt4(src: str, dst: str, proto: int = 6, flags: int = 0x10, ihl: int = 5,
          size: int = 60) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, size, 0, 0x4000, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst)) + bytes(4 * (ihl - 5))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 6 << 4, flags, 0, 0, 0) + bytes(
        [2, 4, 0x05, 0xB4])  # MSS 1460
    return (ip + tcp).ljust(size, b"\x00")


def _pkt6(src: str, dst: str, flags: int = 0x10) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 6 << 4, flags, 0, 0, 0) + bytes(
        [2, 4, 0x05, 0xB4])
    return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
                       ) + tcp


def _router(single: str | None = None) -> Router[str]:
    r: Router[str] = Router(single=single)
    r.add_peer("alice", [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")])
    r.add_peer("bob", [ipaddress.ip_network("10.0.1.0/24")])
    r.set_underlay("alice", bytes([10, 0, 0, 99]))
    return r


MIXED = [
    _pkt4("10.0.0.5", "10.0.0.7"), _pkt4("10.0.0.5", "10.0.1.7"), _pkt6("fd00::5", "fd00::7"),
    _pkt4("10.0.0.5", "224.0.0.1"), _pkt6("fd00::5", "ff02::1"), _pkt4("10.0.0.5", "10.0.0.99"),
    _pkt4("10.0.0.5", "192.0.2.1"), b"\x10junk", b"", _pkt4("10.0.9.5", "10.0.0.7"),
]


def test_route_single_and_one_destination_route_equal_the_per_packet_loop() -> None:
    for batch in (MIXED, MIXED[:3], [MIXED[0]] * 5, [MIXED[3]] * 3, [MIXED[5]] * 2,
                  [MIXED[6]] * 4, [MIXED[4]] * 2):
        fast, slow = _router("alice"), _router("alice")
        assert fast.route_single(list(batch)) == slow._route_each(list(batch)).get("alice", [])
        assert fast.stats == slow.stats
        fast, slow = _router(), _router()
        assert fast.route(list(batch)) == slow._route_each(list(batch))
        assert fast.stats == slow.stats
    clean = [MIXED[0], MIXED[2]]
    assert _router("alice").route_single(clean) is clean  # nothing to drop: no new list


def test_admit_equals_the_per_packet_loop() -> None:
    spoof = _pkt4("10.0.1.5", "10.0.0.7")
    for batch in (MIXED, [MIXED[0]] * 4, [MIXED[0], spoof, MIXED[0]], [MIXED[2]] * 3,
                  [spoof], [b"\x45"]):
        fast, slow = _router(), _router()
        assert fast.admit("alice", list(batch)) == slow._admit_each("alice", list(batch))
        assert fast.peer_stats == slow.peer_stats
    r = _router()
    assert r.admit("alice", [MIXED[0], spoof, MIXED[0]]) == [MIXED[0], MIXED[0]]
    assert r.peer_stats["alice"].spoofed_source == 1


def test_clamp_batch_equals_clamp_one_on_every_packet() -> None:
    syn, synack = 0x02, 0x12
    batch = [
        _pkt4("10.0.0.1", "10.0.0.2", flags=syn), _pkt4("10.0.0.1", "10.0.0.2"),
        _pkt4("10.0.0.1", "10.0.0.2", flags=synack, ihl=6, size=64),
        _pkt4("10.0.0.1", "10.0.0.2", proto=17, flags=syn),
        _pkt6("fd00::1", "fd00::2", flags=syn), _pkt6("fd00::1", "fd00::2"),
        _pkt4("10.0.0.1", "10.0.0.2", flags=syn)[:39], b"", b"\x60" * 50,
    ]
    expected = [clamp_one(p, 1300, 1280) or p for p in batch]
    assert sum(e != p for e, p in zip(expected, batch, strict=True)) == 3
    got = list(batch)
    assert clamp_batch(got, 1300, 1280) == 3 and got == expected


def test_fast_lane_only_where_receive_would_just_open() -> None:
    for cid in (False, True):
        client, endpoint, server = established_pair(cid)
        assert not endpoint.fast_lane(server, CLIENT_ADDR)  # the peer used no keys yet
        endpoint.receive(client.protect([b"x"])[0], CLIENT_ADDR, 1.0, WALL)
        assert endpoint.fast_lane(server, CLIENT_ADDR)
        assert not endpoint.fast_lane(server, ("198.18.0.9", 1))  # a move is due there


def _counters(snap: dict[str, Any]) -> tuple[Any, ...]:
    iface = {k: v for k, v in snap["interface"].items()
             if k not in ("pid", "uptime", "config")}
    peers = [{k: p[k] for k in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets", "drops",
                                 "dtls")} for p in snap["peers"]]
    return iface, peers


def _bulk_run() -> tuple[Any, ...]:
    world, client, server = world_pair()
    out = []
    for i in range(3):
        up = [tcp_packet(C4, S4, i * 64 + j) for j in range(64)]
        up[7] = tcp_packet("100.64.0.77", S4, 9999)  # not the client's address: spoofed
        client.tun.inject(up)
        world.settle()
        down = [tcp_packet(S4, C4, i * 64 + j) for j in range(64)]
        server.tun.inject(down)
        world.settle()
        out.append((server.tun.drain(), client.tun.drain(), up, down))
    result = (out, _counters(server.snapshot()), _counters(client.snapshot()))
    world.close()
    return result


def test_daemons_give_the_same_bytes_and_counters_with_the_fast_path_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _bulk_run()
    with monkeypatch.context() as m:
        m.setattr(fastpath.FastOpen, "open_batch",
                  lambda self, datagrams, start, stats, out: start)
        slow = _bulk_run()
    assert fast == slow
    for got_up, got_down, up, down in fast[0]:
        assert got_up == up[:7] + up[8:] and got_down == down
    server_peer = fast[1][1][0]
    assert server_peer["drops"].get("spoofed_source") == 3
    assert fast[1][0]["udp_gro_receives"] > 0  # the runs came as GRO buffers
