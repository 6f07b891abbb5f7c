"""Fake-device pipeline throughput: TUN → datapath → UDP → datapath → TUN, both daemons.

``python -m tests.shell.pipeline [--packets N] [--size B]`` starts a PSK server and
client on the fake devices, lets the handshake and the PMTU search settle, then pushes
N packets of B bytes through in batches of the datapath's budget, first client →
server, then server → client, and prints packets per second for each direction (CPU
time of this one process: both daemons, the fakes and the kernel's socketpairs).  The
in-process tests call ``measure`` with a small N to keep it working; nothing asserts a
speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dtlsvpn.daemon.datapath import BUDGET
from tests.fakes.packets import udp
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair

SERVER, CLIENT = "198.18.0.1", "198.18.0.2"


def _push(world: World, src: Host, dst: Host, packets: list[bytes]) -> tuple[int, float]:
    received = 0
    start = time.process_time()
    for i in range(0, len(packets), BUDGET):
        src.tun.inject(packets[i:i + BUDGET])
        while world.step():
            pass
        received += len(dst.tun.drain())
    return received, time.process_time() - start


def _ping_pong(world: World, client: Host, server: Host, size: int,
               rounds: int = 2000) -> float:
    """One packet client → server, one back, each its own wake-ups (the latency case):
    CPU µs per round trip of both daemons."""
    ping = udp("100.64.0.2", "100.64.0.1", seq=0, size=size)
    pong = udp("100.64.0.1", "100.64.0.2", seq=0, size=size)
    got = 0
    start = time.process_time()
    for _ in range(rounds):
        client.tun.inject([ping])
        while world.step():
            pass
        got += len(server.tun.drain())
        server.tun.inject([pong])
        while world.step():
            pass
        got += len(client.tun.drain())
    seconds = time.process_time() - start
    return round(seconds / rounds * 1e6, 1) if got == 2 * rounds else -1.0


def measure(workdir: Path, packets: int = 20_000, size: int = 1400) -> dict[str, float]:
    world = World()
    try:
        server_conf, client_conf = psk_pair(workdir)
        server = world.start(server_conf, SERVER)
        client = world.start(client_conf, CLIENT)
        world.run_for(20.0)  # handshake, then the PMTU search settles
        result: dict[str, float] = {"packets": packets, "size": size}
        for name, src, dst, s, d in (("client_to_server", client, server, "100.64.0.2",
                                      "100.64.0.1"),
                                     ("server_to_client", server, client, "100.64.0.1",
                                      "100.64.0.2")):
            batch = [udp(s, d, seq=i, size=size) for i in range(packets)]
            received, seconds = _push(world, src, dst, batch)
            result[f"{name}_received"] = received
            result[f"{name}_pps"] = round(received / seconds) if seconds else 0.0
        result["pingpong_us"] = _ping_pong(world, client, server, size)
        return result
    finally:
        world.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.shell.pipeline")
    p.add_argument("--packets", type=int, default=20_000)
    p.add_argument("--size", type=int, default=1400)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(measure(Path(d), a.packets, a.size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
