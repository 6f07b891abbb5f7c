"""The lone-packet lanes of the data path against the batch lanes they stand in for.

A batch of one (a TUN read or a UDP receive that found one packet: the idle round trip
of issue 10) skips the lists, dicts and runs of the batch lanes (``Datapath.lone``);
it must do exactly what a batch of one would:

* ``Router.route_one`` / ``admit_one`` = ``route`` / ``admit`` of ``[pkt]``, same counters;
* ``Tun.write_one`` = ``write_batch([pkt])``: the same frame, the same refusal count;
* end to end (two daemons on the fakes): lone packets of every kind both ways (data,
  IPv6, SYNs to clamp, spoofed sources, multicast, no route, the tunnel's own underlay,
  too big with and without DF, not IP, replayed records) give the same TUN bytes and
  counters with the lone lanes on and off, and each run used only its own lanes;
* ``records_exhausted`` without a limit, which skips the suite's budget lookup below the
  least budget, still answers each suite's budget.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import pytest

from bench.micro_datapath import C4, S4, world_pair
from dtlsvpn.vpn.router import Router
from tests.fakes.devices import FakeNet, FakeTun
from tests.fakes.packets import ACK, SYN, tcp, udp

C6, S6 = "fd00::2", "fd00::1"
MSS_1460 = b"\x02\x04\x05\xb4"


def _router(single: str | None = None) -> Router[str]:
    r: Router[str] = Router(single=single)
    r.add_peer("alice", [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")])
    if single is None:
        r.add_peer("bob", [ipaddress.ip_network("10.0.1.0/24")])
    r.set_underlay("alice", bytes([10, 0, 0, 99]))
    return r


PACKETS = [
    udp("10.0.0.5", "10.0.0.7"), udp("10.0.0.5", "10.0.1.7"), udp("fd00::5", "fd00::7"),
    udp("10.0.0.5", "224.0.0.1"), udp("fd00::5", "ff02::1"), udp("10.0.0.5", "10.0.0.99"),
    udp("10.0.0.5", "192.0.2.1"), udp("10.0.1.5", "10.0.0.7"), udp("fd00:1::5", "fd00::7"),
    b"\x10junk", b"", b"\x45" * 19, b"\x60" * 39,
]


@pytest.mark.parametrize("single", [None, "alice"], ids=["server", "client"])
def test_route_one_equals_the_per_packet_loop(single: str | None) -> None:
    for pkt in PACKETS:
        lone, batch = _router(single), _router(single)
        peer = lone.route_one(pkt)
        assert batch.route([pkt]) == ({} if peer is None else {peer: [pkt]}), pkt[:20]
        assert lone.stats == batch.stats
    assert sum(_router(single).route_one(p) is None for p in PACKETS) >= 7


def test_admit_one_equals_admit() -> None:
    for peer in ("alice", "bob"):
        for pkt in PACKETS:
            lone, batch = _router(), _router()
            assert lone.admit_one(peer, pkt) == (batch.admit(peer, [pkt]) == [pkt])
            assert lone.peer_stats == batch.peer_stats
    r = _router()
    assert not r.admit_one("alice", PACKETS[7])  # 10.0.1.5 is bob's
    assert r.peer_stats["alice"].spoofed_source == 1


def _far(tun: FakeTun) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(tun.far.recv(70000))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("offload", ["off", "on"])
def test_tun_write_one_equals_write_batch(offload: str) -> None:
    seg = tcp(C4, S4, 1000, bytes(1000))  # a TCP segment the coalescer could take
    for pkt in (udp(C4, S4), seg, tcp(C4, S4, 1, b"x", flags=ACK | 0x08), b"\x10junk"):
        lone, batch = FakeTun("a", offload), FakeTun("b", offload)
        assert lone.write_one(pkt) == batch.write_batch([pkt]) == 0
        assert _far(lone) == _far(batch) and len(_far(batch)) == 0
        lone.close()
        batch.close()
    # A refused write: the same count (the far end full: EAGAIN on the pair).
    lone, batch = FakeTun("a", offload), FakeTun("b", offload)
    for t in (lone, batch):
        os.close(t.fd)
        t.fd = os.open("/dev/null", os.O_RDONLY)  # every write fails with EBADF
    assert lone.write_one(seg) == batch.write_batch([seg]) == 1
    assert lone.counters.as_dict() == batch.counters.as_dict()
    lone.close()
    batch.close()


# --- end to end ---------------------------------------------------------------------


def _counters(snap: dict[str, Any]) -> tuple[Any, ...]:
    iface = {k: v for k, v in snap["interface"].items() if k not in ("pid", "uptime", "config")}
    peers = [{k: p[k] for k in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets", "drops",
                                 "dtls")} for p in snap["peers"]]
    return iface, peers


SYN_OUT = tcp(C4, S4, 5, b"", flags=SYN, options=MSS_1460)
# (side whose TUN it enters, packet): each injected alone, the world settled between.
STEPS = [
    ("c", udp(C4, S4, 1)),
    ("c", udp(C6, S6, 2)),
    ("c", SYN_OUT),  # clamped on the way out
    ("c", tcp(C6, S6, 5, b"", flags=SYN, options=MSS_1460)),
    ("c", udp("100.64.0.77", S4, 3)),  # spoofed: the server's admit drops it
    ("c", udp(C4, "224.0.0.251", 4)),  # multicast: not routed
    ("c", udp(C4, "198.18.0.1", 5)),  # the server's underlay address: recursive
    ("c", b"\x10junk"),
    ("c", udp(C4, S4, 6, size=1480)),  # too big, DF: ICMP back into the client's TUN
    ("c", udp(C4, S4, 7, size=1480, df=False)),  # too big, no DF: fragmented
    ("s", udp(S4, C4, 8)),
    ("s", udp(S6, C6, 9)),
    ("s", tcp(S4, C4, 9, b"", flags=SYN | ACK, options=MSS_1460)),  # clamped there
    ("s", udp("10.9.9.9", C4, 10)),  # spoofed for the client
    ("s", udp(S4, "100.64.0.99", 11)),  # no route on the server
    ("s", udp(S6, "ff02::1", 12)),
    ("s", b"\x60junk"),
    ("s", udp(S4, C4, 13, size=1480, df=False)),
    ("s", udp(S4, C4, 14, size=1200)),
]


def _run(lone: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    world, client, server = world_pair()
    for host in (client, server):
        assert host.daemon.datapath is not None
        host.daemon.datapath.lone = lone
    calls = _spy(monkeypatch)
    sent = _record(world.net)
    out = []
    for side, pkt in STEPS:
        (client if side == "c" else server).tun.inject([pkt])
        world.settle()
        out.append((server.tun.drain(), client.tun.drain()))
    for data, src, dst in list(sent):  # every record again: replays, dropped and counted
        world.net.deliver(data, src, dst)
        world.settle()
        out.append((server.tun.drain(), client.tun.drain()))
    result = (out, _counters(server.snapshot()), _counters(client.snapshot()))
    world.close()
    if lone:  # the lone lanes were taken (a batch came only of the two fragments)
        assert calls["route_one"] >= 10 and calls["admit_one"] >= 10, calls
        assert calls["route"] + calls["route_single"] == 0 and calls["admit"] <= 2, calls
    else:
        assert calls["route_one"] == calls["admit_one"] == 0, calls
    return result


LANES = ("route_one", "admit_one", "route", "route_single", "admit")


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the calls of the router's lone and batch lanes made by the shell (not
    the router's own: ``route`` takes a mixed batch's packets one by one through
    ``route_one``)."""
    calls = dict.fromkeys(LANES, 0)
    inside = [0]  # calls of a lane under way

    def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            if not inside[0]:
                calls[name] += 1
            inside[0] += 1
            try:
                return fn(*args)
            finally:
                inside[0] -= 1
        return wrapper

    for name in LANES:
        monkeypatch.setattr(Router, name, counting(name, getattr(Router, name)))
    return calls


def _record(net: FakeNet) -> list[tuple[bytes, Any, Any]]:
    """Every data datagram the fake underlay carries (to deliver them again)."""
    sent: list[tuple[bytes, Any, Any]] = []
    deliver = net.deliver

    def recording(data: bytes, src: Any, dst: Any, gso: int = 0) -> None:
        if len(data) > 60 and not gso:
            sent.append((data, src, dst))
        deliver(data, src, dst, gso)

    net.deliver = recording  # type: ignore[method-assign]
    return sent


def test_lone_lanes_equal_the_batch_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        lone = _run(True, m)
    with monkeypatch.context() as m:
        batch = _run(False, m)
    assert lone == batch
    out, server, client = lone
    assert [len(got) for got, _ in out[:4]] == [1, 1, 1, 1]  # data and SYNs got through
    assert out[2][0][0] != SYN_OUT and len(out[2][0][0]) == len(SYN_OUT)  # MSS lowered
    server_peer, client_peer = server[1][0], client[1][0]
    assert server_peer["drops"].get("spoofed_source") == 1
    assert client_peer["drops"].get("spoofed_source") == 1
    assert client_peer["drops"].get("too_big") == 1
    assert server_peer["dtls"]["replay"] > 0 and client_peer["dtls"]["replay"] > 0
    assert all(got == ([], []) for got in out[len(STEPS):])  # no replay got through


def test_the_wakeup_bench_and_its_floor_carry_every_ping() -> None:
    """``bench.micro_wakeup`` (the figure of the lone lanes) and its ``--floor`` run
    their trips (each checks every ping arrived, one handler per wake-up)."""
    from bench.micro_wakeup import floor_pings, pings
    pings(3, exact=True)
    floor_pings(3)
    floor_pings(3, drain=True)


def test_records_exhausted_without_a_limit_is_the_suites_budget() -> None:
    """Below the least budget the Enum-keyed lookup is skipped; at and above it each
    suite's own budget decides (AES-GCM 2^23, ChaCha20-Poly1305 2^36)."""
    from dtlsvpn.crypto.aead import RecordProtection
    from dtlsvpn.crypto.suites import SUITES, AeadKind
    from dtlsvpn.dtls.epoch import REKEY_RECORDS, ReadState, WriteState, records_exhausted
    for aead in (AeadKind.AES_GCM, AeadKind.CHACHA20_POLY1305):
        suite = next(s for s in SUITES.values() if s.aead is aead)
        budget = REKEY_RECORDS[aead]
        for sent, received, due in ((0, -1, False), (2**23 - 1, 2**23 - 1, False),
                                    (budget, -1, True), (0, budget, True),
                                    (budget - 1, budget - 1, False), (2**23, 0, budget == 2**23)):
            writer = WriteState.initial(0)
            writer.current.next_seq = sent
            reader = ReadState(protection=RecordProtection(suite, bytes(suite.key_len),
                                                           bytes(suite.fixed_iv_len)))
            reader.window.top = received
            assert records_exhausted(writer, reader, None) is due, (aead, sent, received)
