"""Micro-benchmark of the DTLS core's data path, without any I/O.

Times, with ``time.perf_counter_ns`` over many iterations, the per-packet cost of
``Association.protect([packet])``, ``Association.receive_datagram`` and
``ServerEndpoint.receive`` for an established AES-128-GCM (PSK) pair, with and
without RFC 9146 connection IDs, and prints the median of several runs in
nanoseconds per packet.  The pair is built in memory: a client Association and a
ServerEndpoint exchange their handshake datagrams directly, with a fixed clock
and seeded randomness.

    python -m bench.micro_core [--iterations N] [--runs R] [--size BYTES]

Run it from the repository root with ``-m`` (or with ``PYTHONPATH=.``) so that
the tree being measured is the one imported; the first line names it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import dtlsvpn
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.wire.constants import CipherSuite

CLIENT_ADDR = ("198.18.0.2", 40001)
PSK = bytes(range(32))
IDENTITY = b"bench"
WALL = 1_800_000_000.0


def _configs(cid: bool) -> tuple[DtlsConfig, DtlsConfig]:
    common = dict(cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_GCM_SHA256,),
                  connection_id=cid, pmtu=None, rekey_interval=None)
    client = DtlsConfig(is_client=True, psk=PSK, psk_identity=IDENTITY,
                        random_bytes=random.Random("client").randbytes, **common)
    server = DtlsConfig(is_client=False, psk_lookup={IDENTITY: PSK}.get,
                        random_bytes=random.Random("server").randbytes, **common)
    return client, server


def established_pair(cid: bool) -> tuple[Association, ServerEndpoint, Association]:
    """(client, endpoint, server association) after a completed handshake."""
    client_cfg, server_cfg = _configs(cid)
    client = Association(client_cfg)
    endpoint = ServerEndpoint(server_cfg)
    now = 0.0
    client.connect(now, WALL)
    for _ in range(20):
        server: Association | None = None
        for d in client.datagrams_to_send(now):
            assoc, replies = endpoint.receive(d, CLIENT_ADDR, now, WALL)
            if assoc is not None:
                server = assoc
            for r in replies:
                client.receive_datagram(r, now, WALL)
        server = server or endpoint.associations.get(CLIENT_ADDR)
        if server is not None:
            for d in server.datagrams_to_send(now):
                client.receive_datagram(d, now, WALL)
        if client.is_established and server is not None and server.is_established:
            client.datagrams_to_send(now)
            assert (client.connection_ids is not None) == cid
            return client, endpoint, server
    raise RuntimeError("handshake did not complete")


def _median_ns(run: Callable[[], int], iterations: int, runs: int) -> float:
    """Median over ``runs`` of the nanoseconds per iteration ``run`` reports."""
    return statistics.median(run() / iterations for _ in range(runs))


def bench_protect(cid: bool, packet: bytes, iterations: int, runs: int) -> float:
    client, _endpoint, _server = established_pair(cid)
    protect = client.protect
    batch = [packet]

    def run() -> int:
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            protect(batch)
        return time.perf_counter_ns() - t0

    return _median_ns(run, iterations, runs)


def bench_receive(cid: bool, packet: bytes, iterations: int, runs: int,
                  *, via_endpoint: bool) -> float:
    client, endpoint, server = established_pair(cid)
    batch = [packet]

    def run() -> int:
        datagrams = [client.protect(batch)[0] for _ in range(iterations)]
        now = 1.0
        if via_endpoint:
            receive = endpoint.receive
            t0 = time.perf_counter_ns()
            for d in datagrams:
                receive(d, CLIENT_ADDR, now, WALL)
            elapsed = time.perf_counter_ns() - t0
        else:
            receive_datagram = server.receive_datagram
            t0 = time.perf_counter_ns()
            for d in datagrams:
                receive_datagram(d, now, WALL)
            elapsed = time.perf_counter_ns() - t0
        assert server.stats.bad_mac == 0 and server.stats.replay == 0
        return elapsed

    return _median_ns(run, iterations, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--size", type=int, default=1400)
    args = ap.parse_args()
    packet = bytes(random.Random("packet").randbytes(args.size))
    n, r = args.iterations, args.runs
    print(f"dtlsvpn from {dtlsvpn.__path__[0]}")
    print(f"AES-128-GCM, {args.size}-byte packets, median of {r} runs of {n} (ns/packet)")
    for cid in (False, True):
        label = "cid   " if cid else "no cid"
        figures = (
            ("protect", bench_protect(cid, packet, n, r)),
            ("receive_datagram", bench_receive(cid, packet, n, r, via_endpoint=False)),
            ("ServerEndpoint.receive", bench_receive(cid, packet, n, r, via_endpoint=True)),
        )
        for name, ns in figures:
            print(f"{label}  {name:24s} {ns:9.0f}")


if __name__ == "__main__":
    main()
