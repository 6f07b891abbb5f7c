"""A deterministic workload for instruction counts of the core's data path.

Wall-clock micro-benchmarks are noisy on a shared machine; instruction counts are not.
This pushes N records of one kind through the core, in memory, with a fixed clock and
seeded randomness, so that ``valgrind --tool=callgrind`` (or ``perf stat -e
instructions``) gives the same count in every run:

    python -m bench.micro_count MODE N [--cid] [--size BYTES]

MODE is one of:

``protect``   N ``Association.protect([packet])`` calls on the client
``assoc``     N protects on the client, then N ``receive_datagram`` on the server's
              association (subtract ``protect`` for the receive alone)
``endpoint``  the same through ``ServerEndpoint.receive`` (routing by address or CID)
``rekeying``  N protects on the server's association, then N receives on a client
              ``RekeyingClient`` (the daemon client's receive path)

``python -m bench.micro_count --callgrind`` runs every mode under callgrind at two
values of N and prints instructions per packet (the difference divided by the
difference in N, so the set-up and the handshake cancel out).
"""

from __future__ import annotations

import argparse
import random

from bench.callgrind import instructions
from bench.micro_core import CLIENT_ADDR, WALL, _configs, established_pair
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.rekey import RekeyingClient

MODES = ("protect", "assoc", "endpoint", "rekeying")


def _rekeying_pair(cid: bool) -> tuple[RekeyingClient, Association]:
    """A RekeyingClient and its server association, established."""
    client_cfg, server_cfg = _configs(cid)
    from dtlsvpn.dtls.endpoint import ServerEndpoint

    client = RekeyingClient(client_cfg)
    endpoint = ServerEndpoint(server_cfg)
    now = 0.0
    client.connect(now, WALL)
    for _ in range(20):
        for d in client.datagrams_to_send(now):
            _assoc, replies = endpoint.receive(d, CLIENT_ADDR, now, WALL)
            for r in replies:
                client.receive_datagram(r, now, WALL)
        server = endpoint.associations.get(CLIENT_ADDR)
        if server is not None:
            for d in server.datagrams_to_send(now):
                client.receive_datagram(d, now, WALL)
        if client.is_established and server is not None and server.is_established:
            client.datagrams_to_send(now)
            return client, server
    raise RuntimeError("handshake did not complete")


def run(mode: str, n: int, cid: bool, size: int) -> None:
    packet = random.Random("packet").randbytes(size)
    batch = [packet]
    now = 1.0
    if mode == "rekeying":
        rclient, server = _rekeying_pair(cid)
        datagrams = [server.protect(batch)[0] for _ in range(n)]
        for d in datagrams:
            if rclient.receive_datagram(d, now, WALL) != batch:
                raise RuntimeError("record did not open")
        return
    client, endpoint, server_assoc = established_pair(cid)
    datagrams = [client.protect(batch)[0] for _ in range(n)]
    if mode == "assoc":
        for d in datagrams:
            if server_assoc.receive_datagram(d, now, WALL) != batch:
                raise RuntimeError("record did not open")
    elif mode == "endpoint":
        for d in datagrams:
            if endpoint.receive(d, CLIENT_ADDR, now, WALL)[1] != batch:
                raise RuntimeError("record did not open")


def _instructions(mode: str, n: int, cid: bool, size: int) -> int:
    return instructions("bench.micro_count", mode, str(n), "--size", str(size),
                        *(["--cid"] if cid else []))


def callgrind(size: int, low: int, high: int, cids: tuple[bool, ...]) -> None:
    print(f"instructions per packet ({size}-byte packets, N={low} vs N={high}, callgrind)")
    for cid in cids:
        base: dict[str, float] = {}
        for mode in MODES:
            a = _instructions(mode, low, cid, size)
            b = _instructions(mode, high, cid, size)
            base[mode] = (b - a) / (high - low)
        label = "cid   " if cid else "no cid"
        print(f"{label}  protect                 {base['protect']:10.0f}")
        print(f"{label}  assoc receive_datagram  {base['assoc'] - base['protect']:10.0f}")
        print(f"{label}  endpoint receive        {base['endpoint'] - base['protect']:10.0f}")
        print(f"{label}  RekeyingClient receive  {base['rekeying'] - base['protect']:10.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", choices=MODES)
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--cid", action="store_true")
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--callgrind", action="store_true", help="count every mode")
    ap.add_argument("--low", type=int, default=200)
    ap.add_argument("--high", type=int, default=1000)
    ap.add_argument("--only", choices=("cid", "nocid"), help="with --callgrind: one of the two")
    args = ap.parse_args()
    if args.callgrind:
        cids = {"cid": (True,), "nocid": (False,)}.get(args.only or "", (False, True))
        callgrind(args.size, args.low, args.high, cids)
    elif args.mode is None:
        ap.error("a MODE or --callgrind")
    else:
        run(args.mode, args.n, args.cid, args.size)


if __name__ == "__main__":
    main()
