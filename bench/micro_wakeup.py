"""Per-wake-up cost of the whole daemon on one lone packet, in instructions.

Two real daemons (the ``tests/fakes`` world: fake TUN, fake UDP, fake clock, the real
loop, datapath, roles and core), established with the namespace tests' PSK
configuration; then N lone "pings": one 84-byte packet into the client's TUN, the
loops run until idle, one answer into the server's TUN, until idle again.  Each round
trip is four wake-ups (client TUN, server UDP, server TUN, client UDP), the path
issue 10 measured with strace.  Deterministic, so under callgrind

    python -m bench.micro_wakeup --callgrind        # instructions per round trip

gives the same figure on a busy machine (the fakes' own cost is included and is the
same before and after a change).  ``--profile`` prints a cProfile of N round trips.

``--exact`` drives the four wake-ups one ``run_once`` each (client, server, server,
client; each must run exactly one handler) instead of letting the world settle, which
adds idle iterations of both loops that a real daemon, blocked in ``epoll_wait``, never
makes: the figure is then the daemons' four wake-ups plus the fakes' I/O only.

The garbage collector is off during the measured round trips (frozen after the
set-up), so that the figure does not move with where a collection happened to fall.
The pings are a pool of ``POOL`` packets made before the trips and used in turn, so the
test's own packet building (some 58 000 instructions a packet through ``packets.udp``,
two per trip, which the figure included until 2026-12-02) is the same at every N and
cancels out.

``--floor`` runs the same trips through the least a Python forwarder can do, on the
same fakes: two ends of ``bench/floor.py``'s shape (per wake-up one ``epoll`` poll, one
TUN read or UDP ``recv``, one AEAD call of the daemons' suite, ChaCha20-Poly1305, one
``send`` or TUN write; no protocol, no loop object); ``--drain`` makes each end read on
to EAGAIN as ``floor.py`` does.  ``--callgrind`` minus ``--callgrind --floor`` is what
dtlsvpn's own code costs a lone round trip beyond the language and the fakes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import select
import socket
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.callgrind import instructions
from bench.micro_datapath import C4, S4, world_pair
from tests.fakes.devices import FakeNet, FakeTun, FakeUdp
from tests.fakes.packets import udp
from tests.fakes.world import Host

POOL = 16  # distinct pings, made before the trips and used in turn


def _wake(host: Host) -> None:
    ran = host.loop.run_once(max_wait=0)
    if ran != 1:
        raise RuntimeError(f"a wake-up ran {ran} handlers, timers and deferred calls, not 1")


def _pool() -> tuple[list[bytes], list[bytes]]:
    return ([udp(C4, S4, seq=i, size=56) for i in range(POOL)],
            [udp(S4, C4, seq=i, size=56) for i in range(POOL)])


def _measured(n: int, round_trip: Callable[[int], None], profile: bool) -> None:
    """N round trips with the collector off (after 20 to warm up, the same for all N)."""
    # No collection inside the measured trips: one full collection more or less in one
    # of the two callgrind runs moved the per-trip figure by some 20 000 instructions.
    gc.collect()
    gc.freeze()
    gc.disable()
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    for i in range(20, n + 20):
        round_trip(i)
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def pings(n: int, *, profile: bool = False, exact: bool = False) -> None:
    world, client, server = world_pair(settle=0.0)
    pool_out, pool_back = _pool()

    def round_trip(i: int, exact: bool = exact) -> None:
        out, back = pool_out[i % POOL], pool_back[i % POOL]
        client.tun.inject([out])
        if exact:
            _wake(client)
            _wake(server)
        else:
            world.settle()
        if server.tun.drain() != [out]:
            raise RuntimeError("lost on the way out")
        server.tun.inject([back])
        if exact:
            _wake(server)
            _wake(client)
        else:
            world.settle()
        if client.tun.drain() != [back]:
            raise RuntimeError("lost on the way back")

    for i in range(20):
        round_trip(i, exact=False)
    world.settle()
    _measured(n, round_trip, profile)
    world.close()


class FloorEnd:
    """One end of the floor forwarder (``bench/floor.py``'s loop) on the fakes: a plain
    TUN, a connected UDP socket, an epoll of both, one AEAD, no protocol."""

    def __init__(self, net: FakeNet, name: str, local: tuple[str, int],
                 remote: tuple[str, int], key: bytes, *, drain: bool) -> None:
        self.tun = FakeTun(name)
        self.port = FakeUdp(net, socket.AF_INET, local, remote)
        self.drain = drain
        self.ep = select.epoll()
        self.ep.register(self.tun.fd, select.EPOLLIN)
        self.ep.register(self.port.fileno(), select.EPOLLIN)
        self.aead = ChaCha20Poly1305(key)
        self.seq = 0

    def wake(self) -> None:
        """One wake-up: what is ready is forwarded (exactly one descriptor must be)."""
        ready = self.ep.poll(0)
        if len(ready) != 1:
            raise RuntimeError(f"a floor wake-up found {len(ready)} ready descriptors")
        tun, sock, drain = self.tun.fd, self.port.fake, self.drain
        salt, pack = b"\0floor\0"[:4], struct.Struct("!Q").pack
        if ready[0][0] == tun:
            while True:
                try:
                    pkt = os.read(tun, 65535)
                except BlockingIOError:
                    break
                self.seq += 1
                explicit = pack(self.seq)
                sock.send(explicit + self.aead.encrypt(salt + explicit, pkt, None))
                if not drain:
                    break
        else:
            while True:
                try:
                    dgram = sock.recv(65535)
                except BlockingIOError:
                    break
                os.write(tun, self.aead.decrypt(salt + dgram[:8], dgram[8:], None))
                if not drain:
                    break

    def close(self) -> None:
        self.ep.close()
        self.port.close()
        self.tun.close()


def floor_pings(n: int, *, profile: bool = False, drain: bool = False) -> None:
    """``pings(n, exact=True)`` through two floor ends instead of two daemons."""
    net = FakeNet()
    key = bytes(range(32))
    c_addr, s_addr = ("198.18.0.2", 40001), ("198.18.0.1", 4433)
    client = FloorEnd(net, "floorc", c_addr, s_addr, key, drain=drain)
    server = FloorEnd(net, "floors", s_addr, c_addr, key, drain=drain)
    pool_out, pool_back = _pool()

    def round_trip(i: int) -> None:
        out, back = pool_out[i % POOL], pool_back[i % POOL]
        client.tun.inject([out])
        client.wake()
        server.wake()
        if server.tun.drain() != [out]:
            raise RuntimeError("lost on the way out")
        server.tun.inject([back])
        server.wake()
        client.wake()
        if client.tun.drain() != [back]:
            raise RuntimeError("lost on the way back")

    for i in range(20):
        round_trip(i)
    _measured(n, round_trip, profile)
    client.close()
    server.close()


def _flags(args: argparse.Namespace) -> list[str]:
    return [flag for flag, on in (("--exact", args.exact), ("--floor", args.floor),
                                  ("--drain", args.drain)) if on]


def _instructions(n: int, flags: list[str]) -> int:
    return instructions("bench.micro_wakeup", str(n), *flags)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--exact", action="store_true",
                    help="one run_once per wake-up, no idle iterations")
    ap.add_argument("--floor", action="store_true",
                    help="the same trips through a minimal forwarder (bench/floor.py's shape)")
    ap.add_argument("--drain", action="store_true",
                    help="with --floor: each end reads on to EAGAIN, as bench/floor.py")
    ap.add_argument("--low", type=int, default=50)
    ap.add_argument("--high", type=int, default=250)
    args = ap.parse_args()
    if args.callgrind:
        flags = _flags(args)
        a, b = _instructions(args.low, flags), _instructions(args.high, flags)
        per = (b - a) / (args.high - args.low)
        if args.floor:
            how = "the floor forwarder" + (", reading to EAGAIN" if args.drain else "")
        else:
            how = "one run_once each" if args.exact else "the world settling"
        print(f"instructions per lone round trip (4 wake-ups, {how}): {per:.0f}"
              f" (N={args.low} vs N={args.high}, callgrind)")
    elif args.floor:
        floor_pings(args.n, profile=args.profile, drain=args.drain)
    else:
        pings(args.n, profile=args.profile, exact=args.exact)


if __name__ == "__main__":
    main()
