"""Figures of the sans-I/O core alone, in this process: no sockets, no TUN.

- Handshakes per second on one server core: full ECDSA (ECDHE-ECDSA, AES-128-GCM),
  full PSK (ECDHE-PSK, the daemon's PSK default), plain PSK, and resumed with a
  session ticket; each through the cookie exchange as a real server does it.  Only
  the server's calls are timed (thread CPU time); the client's cost is shown beside.
- Memory per idle association: established server-side associations held by one
  ServerEndpoint, measured with tracemalloc (the Python heap) and, in a second pass
  without tracemalloc, as growth of the resident set (which also sees OpenSSL's
  allocations).  The clients are dropped before the server side is measured.
- Bulk transfer through the core: 1400-byte packets client→server sealed with
  ``protect`` and opened by ``ServerEndpoint.receive``, a 52-byte "ack" back every
  second packet, the timer polled once per batch as the shell does; packets per
  second on one core, then the same loop under cProfile, whose top functions by
  cumulative and by own time are written beside the table.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pairs import Credentials, Pairing, configs, resuming

PACKET = 1400
ACK = 52
BATCH = 32
WARMUP = 3

HANDSHAKE_MODES = {
    "ecdsa": "full ECDSA (ECDHE-ECDSA AES-128-GCM)",
    "psk": "full PSK (ECDHE-PSK ChaCha20-Poly1305)",
    "psk-plain": "full PSK without ECDHE (PSK AES-128-GCM)",
    "resumed": "resumed with a ticket (AES-128-GCM)",
}


@dataclass
class HandshakeRate:
    mode: str
    label: str
    count: int
    server_seconds: float
    client_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.server_seconds if self.server_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "label": self.label, "count": self.count,
                "server_cpu_seconds": self.server_seconds,
                "client_cpu_seconds": self.client_seconds,
                "per_second_one_core": self.per_second,
                "server_ms_each": 1000 * self.server_seconds / max(1, self.count),
                "client_ms_each": 1000 * self.client_seconds / max(1, self.count)}


def handshake_rate(mode: str, creds: Credentials, budget: float) -> HandshakeRate:
    """Handshakes of fresh clients for about ``budget`` seconds of wall time."""
    client, server = configs("ecdsa" if mode == "resumed" else mode, creds)
    pairing = Pairing(server)
    if mode == "resumed":
        first = pairing.handshake(client)
        assert first.session is not None, "the server issued no ticket"
        client = resuming(client, first.session)
    for _ in range(WARMUP):
        pairing.drop(pairing.handshake(client).server)
    count, server_s, client_s = 0, 0.0, 0.0
    deadline = time.monotonic() + budget
    while count < 10 or time.monotonic() < deadline:
        hs = pairing.handshake(client)
        if mode == "resumed" and not hs.resumed:
            raise RuntimeError("a ticket resumption fell back to a full handshake")
        server_s += hs.server_seconds
        client_s += hs.client_seconds
        count += 1
        pairing.drop(hs.server)
    return HandshakeRate(mode, HANDSHAKE_MODES[mode], count, server_s, client_s)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_per_association(creds: Credentials, count: int) -> dict[str, Any]:
    """Bytes per established, idle server-side association (and per client).

    RSS pass first (each client is dropped right after its handshake, so its memory
    is reused by the next and the growth is the server side's), then the tracemalloc
    pass, which keeps the clients to weigh them too.
    """
    client, server = configs("ecdsa", creds)

    def build(measure: Callable[[], int], keep_clients: bool) -> tuple[float, float]:
        pairing = Pairing(server)
        for _ in range(WARMUP):
            pairing.drop(pairing.handshake(client).server)
        gc.collect()
        base = measure()
        clients = []
        for _ in range(count):
            hs = pairing.handshake(client)
            if keep_clients:
                clients.append(hs.client)
            del hs
        gc.collect()
        both = measure()
        del clients
        gc.collect()
        servers_only = measure()
        assert len(pairing.endpoint.associations) == count
        return (servers_only - base) / count, (both - servers_only) / count

    rss_server, _ = build(_rss_bytes, keep_clients=False)
    gc.collect()
    tracemalloc.start()
    try:
        heap_server, heap_client = build(lambda: tracemalloc.get_traced_memory()[0], True)
    finally:
        tracemalloc.stop()
    return {"associations": count, "suite": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "server_heap_bytes": heap_server, "client_heap_bytes": heap_client,
            "server_rss_bytes": rss_server}


class Bulk:
    """An established ECDSA/AES-128-GCM pair (CIDs on, as the daemon negotiates)."""

    def __init__(self, creds: Credentials) -> None:
        client, server = configs("ecdsa", creds)
        self.pairing = Pairing(server)
        hs = self.pairing.handshake(client)
        self.client, self.server = hs.client, hs.server
        self.addr = next(iter(self.pairing.endpoint.associations))
        self.payload = bytes(PACKET)
        self.ack = bytes(ACK)

    def run(self, packets: int) -> int:
        """Carry ``packets`` data packets; returns how many arrived."""
        client, server, endpoint = self.client, self.server, self.pairing.endpoint
        addr, batch, acks = self.addr, [self.payload] * BATCH, [self.ack] * (BATCH // 2)
        now, wall = time.monotonic(), time.time()
        arrived = 0
        for _ in range(packets // BATCH):
            for d in client.protect(batch):
                _assoc, out = endpoint.receive(d, addr, now, wall)
                arrived += len(out)
            for d in server.protect(acks):
                client.receive_datagram(d, now, wall)
            for side in (client, endpoint):
                timer = side.get_timer()
                if timer is not None and timer <= now:
                    side.handle_timer(now)
            client.datagrams_to_send(now)
            server.datagrams_to_send(now)
        return arrived


def bulk_throughput(creds: Credentials, packets: int) -> dict[str, Any]:
    bulk = Bulk(creds)
    bulk.run(BATCH * 10)
    t0 = time.thread_time()
    arrived = bulk.run(packets)
    seconds = time.thread_time() - t0
    if arrived != packets // BATCH * BATCH:
        raise RuntimeError(f"bulk transfer lost packets in memory: {arrived} of {packets}")
    return {"packets": arrived, "packet_bytes": PACKET, "acks_per_packet": 0.5,
            "cpu_seconds": seconds, "packets_per_second": arrived / seconds,
            "mbit_s_one_core": arrived * PACKET * 8 / seconds / 1e6,
            "us_per_packet": 1e6 * seconds / arrived}


def profile_bulk(creds: Credentials, packets: int, out: Path, top: int = 25) -> dict[str, Any]:
    """cProfile of :class:`Bulk`; the two top lists go to ``out`` (text)."""
    bulk = Bulk(creds)
    bulk.run(BATCH * 10)
    prof = cProfile.Profile()
    prof.enable()
    bulk.run(packets)
    prof.disable()
    text = io.StringIO()
    text.write(f"cProfile of the sans-I/O core over a bulk transfer: {packets} packets of "
               f"{PACKET} bytes client→server (protect → ServerEndpoint.receive), one {ACK}-byte "
               f"packet back per two, batches of {BATCH}, timers polled per batch.\n\n")
    stats = pstats.Stats(prof, stream=text)
    for key, title in (("cumulative", "by cumulative time"), ("tottime", "by own (total) time")):
        text.write(f"=== top {top} {title} ===\n")
        stats.sort_stats(key).print_stats(top)
    # Paths relative to the checkout, so that a saved profile names no machine's directories.
    repo = str(Path(__file__).resolve().parent.parent) + "/"
    out.write_text(text.getvalue().replace(repo, ""))
    rows = []
    raw: Any = stats
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.stats.items():
        rows.append({"function": f"{Path(filename).name}:{line}({func})", "calls": calls,
                     "tottime": tottime, "cumtime": cumtime})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return {"file": out.name, "packets": packets, "top_tottime": rows[:10]}


def main(argv: list[str]) -> int:
    """``python -m bench.core memory CA CERT KEY N``: the memory figure in a fresh process
    (an interpreter that has not run other benches yet), printed as JSON."""
    import json

    if len(argv) != 5 or argv[0] != "memory":
        print("usage: python -m bench.core memory CA CERT KEY COUNT")
        return 2
    creds = Credentials.load(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    print(json.dumps(memory_per_association(creds, int(argv[4]))))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
