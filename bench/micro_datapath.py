"""Bulk data-path cost of the whole daemon, in instructions per packet and direction.

Two real daemons (the ``tests/fakes`` world: fake TUN, fake UDP with the kernel's GSO
and GRO, fake clock, the real loop, datapath, roles and core), established with the
namespace tests' PSK configuration (``MTU = auto``, MSS clamping on); then N batches of
64 inner TCP-like packets of 1400 bytes (IPv4, ACK set, no SYN: the bulk of a transfer)
into one TUN, the loops run until idle, and the other TUN must have received exactly
those packets.  ``--direction up`` sends client → server, ``down`` server → client.
Deterministic, so under callgrind

    python -m bench.micro_datapath --callgrind     # instructions per packet, both ways

gives the same figure on a busy machine: the difference of two N, so start-up, handshake
and the building of the test's packets (a pool of ``POOL`` batches, used in turn; until
2026-12-02 they were built per batch, some 84 000 instructions a packet that the figure
included) cancel (``PYTHONHASHSEED=0``; ``gc.freeze()`` after the set-up, so that the
collector's passes do not depend on how many objects the imports left).  The fakes' own
share (``FakeSocket`` sendmsg, the underlay's copy, recvmsg; ``FakeTun`` inject and
drain: what a kernel would do) is measured the same way with ``--fakes`` (the same
calls, no daemon) and subtracted, so the daemon's part is printed on its own.
``--profile`` prints a cProfile of N batches; ``--stage NAME`` runs one stage of the
path alone (``--callgrind --stage any``: every stage, instructions per packet).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import ipaddress
import pstats
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

from bench.callgrind import instructions
from dtlsvpn.daemon.udp import SOL_UDP, UDP_SEGMENT, gso_runs
from dtlsvpn.vpn.vnet import VNET_HDR_LEN
from tests.fakes.devices import FakeNet, FakeTun, FakeUdp
from tests.fakes.packets import tcp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair

C4, S4 = "100.64.0.2", "100.64.0.1"
BATCH = 64
POOL = 8  # distinct batches, used in turn
SIZE = 1400
RECORD = SIZE + 13 + 8 + 17  # ChaCha20 record with an 8-byte CID: header, tag, type


def tcp_packet(src: str, dst: str, seq: int, size: int = SIZE) -> bytes:
    """An IPv4 TCP segment (ACK|PSH, 20-byte headers, TCP checksum left 0) of ``size``
    bytes, the ``seq``-th of its flow."""
    return tcp(src, dst, seq * (size - 40), bytes(size - 40), flags=0x18, ack=1,
               options=b"", ident=seq, csum=False)


def bulk_segment(src: str, dst: str, seq: int, *, last: bool = False,
                 size: int = SIZE) -> bytes:
    """A segment of a bulk TCP transfer as a kernel sends it (ACK, timestamps, valid
    checksums, PSH only on the ``last`` of a write) of ``size`` bytes, the ``seq``-th of
    its flow: what the coalescer toward the TUN merges."""
    payload = size - 52
    return tcp(src, dst, seq * payload, bytes(payload), flags=0x18 if last else 0x10,
               ack=1, ident=seq)


def _established(host: Host) -> bool:
    return all(p["state"] == "established" for p in host.snapshot()["peers"])


def world_pair(settle: float = 1.0) -> tuple[World, Host, Host]:
    """Two daemons on the fake world (the namespace tests' PSK pair, log level info),
    established, then ``settle`` fake seconds (the first PMTU search: limits, clamps)."""
    tmp = Path(tempfile.mkdtemp(prefix="dtlsvpn-micro-"))
    world = World()
    server_conf, client_conf = psk_pair(tmp, mtu="auto")
    for conf in (server_conf, client_conf):  # the daemons' default log level, not debug
        conf.write_text(conf.read_text().replace("debug", "info"))
    server = world.start(server_conf, "198.18.0.1")
    client = world.start(client_conf, "198.18.0.2")
    if not world.run_until(lambda: _established(client) and _established(server)):
        raise RuntimeError("the pair did not come up")
    if settle:
        world.run_for(settle)
    return world, client, server


def bulk(n: int, direction: str, *, profile: bool = False) -> None:
    world, client, server = world_pair()
    src, dst = (client, server) if direction == "up" else (server, client)
    a, b = (C4, S4) if direction == "up" else (S4, C4)
    # A pool made before the batches and used in turn: building a packet through
    # packets.tcp costs some 84 000 instructions, which would count in every N otherwise.
    batches = [[bulk_segment(a, b, i * BATCH + j, last=j == BATCH - 1) for j in range(BATCH)]
               for i in range(POOL)]

    payload = sum(len(p) - 52 for p in batches[0])

    def one(i: int) -> None:
        batch = batches[i % POOL]
        src.tun.inject(batch)
        world.settle()
        if i < 5:  # segmented and compared byte for byte
            if dst.tun.drain() != batch:
                raise RuntimeError(f"batch {i} not delivered intact ({direction})")
            return
        # The measured batches: frames as written (segmenting them back would count the
        # fake kernel's checksums), their TCP payload counted (IPv4, 32-byte TCP header).
        got = sum(len(f) - VNET_HDR_LEN - 52 for f in dst.tun.drain_frames())
        if got != payload:
            raise RuntimeError(f"batch {i}: {got} payload bytes of {payload} ({direction})")

    for i in range(5):
        one(i)
    gc.freeze()  # the set-up's objects out of the collector's way: its cost repeats
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    for i in range(5, n + 5):
        one(i)
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
    world.close()


def fakes(n: int) -> None:
    """The fakes' own work for N batches, no daemon: inject, the TUN end's reads
    (``os.read`` per packet, as ``Tun.read_batch``), a GSO ``sendmsg`` of 64 records,
    the underlay's copy, GRO ``recvmsg``, TUN writes and drain."""
    net = FakeNet()
    tx = FakeUdp(net, socket.AF_INET, ("198.18.0.2", 40001), ("198.18.0.1", 4433))
    rx = FakeUdp(net, socket.AF_INET, ("198.18.0.1", 4433), None, offload=True)
    tun_in, tun_out = FakeTun("a"), FakeTun("b")
    packets = [tcp_packet(C4, S4, j) for j in range(BATCH)]
    records = [p + bytes(RECORD - SIZE) for p in packets]
    anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", RECORD))]
    runs = gso_runs([RECORD] * BATCH)
    gc.freeze()
    for _ in range(n):
        tun_in.inject(packets)
        tun_in.read_batch(BATCH + 1)
        for start, end in runs:  # (45 + 19: GSO's 64 KiB limit)
            tx.fake.sendmsg(records[start:end], anc)
        got = 0
        while True:
            try:
                rx.fake.recvmsg(65535, 64)
            except BlockingIOError:
                break
            got += 1
        tun_out.write_batch(packets)
        if len(tun_out.drain()) != BATCH or got != len(runs):
            raise RuntimeError("fakes lost something")


STAGES = ("route_client", "route_server", "clamp", "protect", "receive_server",
          "receive_client", "admit")


def stage(name: str, n: int) -> None:
    """N batches through one stage alone, as the datapath calls it (the whole daemon's
    per-packet cost, split).  With an older tree (no batch lanes) the one-at-a-time
    calls of that tree are used, so the same command measures before and after."""
    from bench.micro_core import CLIENT_ADDR, WALL, established_pair
    from dtlsvpn.vpn.mss import clamp_batch
    from dtlsvpn.vpn.router import Router
    client, endpoint, server = established_pair(True)
    endpoint.receive(client.protect([b"x"])[0], CLIENT_ADDR, 1.0, WALL)  # keys in use
    client.receive_datagram(server.protect([b"y"])[0], 1.0, WALL)
    router: Router[str] = Router(single="server")
    router.add_peer("server", [ipaddress.ip_network("100.64.0.0/24")])
    packets = [tcp_packet(C4, S4, j) for j in range(BATCH)]
    lanes = hasattr(router, "route_single")
    sender, receiver = (client, server) if name == "receive_server" else (server, client)
    records = sender.protect(packets) if name.startswith("receive") else []
    window = receiver._read.window  # reset per batch: the same records are new again
    gc.freeze()
    for _ in range(n):
        batch = list(packets)
        if name == "route_client":
            router.route_single(batch) if lanes else router.route(batch).get("server")
        elif name == "route_server":
            router.single = None
            router.route(batch)
        elif name == "clamp":
            clamp_batch(batch, 1403, 1383)
        elif name == "protect":
            client.protect(batch)
        elif name == "admit":
            router.admit("server", batch)
        elif name == "receive_server":
            window.top, window.bits = -1, 0
            _receive_server(endpoint, server, records, lanes)
        else:
            window.top, window.bits = -1, 0
            _receive_client(client, records, lanes)


def _receive_server(endpoint: Any, assoc: Any, run: list[bytes], lanes: bool) -> None:
    from bench.micro_core import CLIENT_ADDR, WALL
    out: list[bytes] = []
    if not lanes:  # the old datapath: the endpoint, datagram by datagram
        for data in run:
            out += endpoint.receive(data, CLIENT_ADDR, 1.0, WALL)[1]
        return
    out += endpoint.receive(run[0], CLIENT_ADDR, 1.0, WALL)[1]
    if endpoint.fast_lane(assoc, CLIENT_ADDR):
        assoc.receive_fast(run, 1, out, 1.0)


def _receive_client(assoc: Any, run: list[bytes], lanes: bool) -> None:
    from bench.micro_core import WALL
    out: list[bytes] = []
    if not lanes:
        for data in run:
            out += assoc.receive_datagram(data, 1.0, WALL)
        return
    assoc.receive_fast(run, 0, out, 1.0)


def _instructions(*args: str) -> int:
    return instructions("bench.micro_datapath", *args)


def _per_packet(low: int, high: int, *args: str) -> float:
    a = _instructions(str(low), *args)
    b = _instructions(str(high), *args)
    return (b - a) / ((high - low) * BATCH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=40, help="batches of 64 packets")
    ap.add_argument("--direction", choices=("up", "down"), default="up")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fakes", action="store_true", help="the fakes' work alone")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--stage", choices=STAGES, help="one stage alone (with --callgrind: all)")
    ap.add_argument("--low", type=int, default=10)
    ap.add_argument("--high", type=int, default=40)
    args = ap.parse_args()
    if args.callgrind and args.stage:
        for name in STAGES:
            per = _per_packet(args.low, args.high, "--stage", name)
            print(f"stage {name}: {per:.0f} instructions per packet (callgrind)")
    elif args.stage:
        stage(args.stage, args.n)
    elif args.callgrind:
        fake = _per_packet(args.low, args.high, "--fakes")
        print(f"fakes alone: {fake:.0f} instructions per packet")
        for direction, name in (("up", "client → server"), ("down", "server → client")):
            total = _per_packet(args.low, args.high, "--direction", direction)
            print(f"{name}: {total:.0f} instructions per packet, daemon's share "
                  f"{total - fake:.0f} (batches of {BATCH} × {SIZE} B, N={args.low} vs "
                  f"N={args.high}, callgrind)")
    elif args.fakes:
        fakes(args.n)
    else:
        bulk(args.n, args.direction, profile=args.profile)


if __name__ == "__main__":
    main()
