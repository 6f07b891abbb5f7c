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
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats

from bench.callgrind import instructions
from bench.micro_datapath import C4, S4, world_pair
from tests.fakes.packets import udp
from tests.fakes.world import Host


def _wake(host: Host) -> None:
    ran = host.loop.run_once(max_wait=0)
    if ran != 1:
        raise RuntimeError(f"a wake-up ran {ran} handlers, timers and deferred calls, not 1")


def pings(n: int, *, profile: bool = False, exact: bool = False) -> None:
    world, client, server = world_pair(settle=0.0)
    out = [udp(C4, S4, seq=i, size=56) for i in range(n + 20)]
    back = [udp(S4, C4, seq=i, size=56) for i in range(n + 20)]

    def round_trip(i: int, exact: bool = exact) -> None:
        client.tun.inject([out[i]])
        if exact:
            _wake(client)
            _wake(server)
        else:
            world.settle()
        if server.tun.drain() != [out[i]]:
            raise RuntimeError("lost on the way out")
        server.tun.inject([back[i]])
        if exact:
            _wake(server)
            _wake(client)
        else:
            world.settle()
        if client.tun.drain() != [back[i]]:
            raise RuntimeError("lost on the way back")

    for i in range(20):
        round_trip(i, exact=False)
    world.settle()
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
    world.close()


def _instructions(n: int, exact: bool) -> int:
    return instructions("bench.micro_wakeup", str(n), *(["--exact"] if exact else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--exact", action="store_true",
                    help="one run_once per wake-up, no idle iterations")
    ap.add_argument("--low", type=int, default=50)
    ap.add_argument("--high", type=int, default=250)
    args = ap.parse_args()
    if args.callgrind:
        a, b = _instructions(args.low, args.exact), _instructions(args.high, args.exact)
        per = (b - a) / (args.high - args.low)
        how = "one run_once each" if args.exact else "the world settling"
        print(f"instructions per lone round trip (4 wake-ups, {how}): {per:.0f}"
              f" (N={args.low} vs N={args.high}, callgrind)")
    else:
        pings(args.n, profile=args.profile, exact=args.exact)


if __name__ == "__main__":
    main()
