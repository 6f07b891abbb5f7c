"""Keepalive cost of many idle peers, in datagrams and instructions (deterministic).

A real daemon server (the ``tests/fakes`` world: fake TUN and UDP, fake clock, the real
loop, datapath, server role and core) with N PSK peers, and N idle clients in the same
process: sans-I/O client ``Association`` objects configured as ``bench/idle_clients.py``
configures them (PSK, no PMTU discovery, connection IDs as negotiated by default), each
at its own source port of the fake underlay, ``--delay`` seconds one way.  Once every
association is up and the server's PMTU searches are over (``WARMUP`` fake seconds),
the pairs sit idle for ``--seconds`` fake seconds with their keepalives running; the
figures are over that window:

* datagrams per idle pair per second, client→server and server→client;
* with ``--profile``: a cProfile of the window, split into the server's share (its
  loop: ``Loop.run_once``) and the idle clients' (``_Clients.readable`` / ``due``);
* with ``--callgrind``: the window's instructions per keepalive exchange (server and
  clients together, the two processes that share the bench's 2 cores; the window
  run at two lengths, so the set-up cancels out), and the server's and clients'
  shares from cProfile's split.

    python -m bench.micro_idle [--peers 1000] [--seconds 20] [--profile]
    python -m bench.micro_idle --callgrind [--peers 100]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import pstats
import random
import tempfile
import time
from pathlib import Path

from bench.callgrind import instructions
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import AssociationClosed, HandshakeCompleted, PeerUnresponsive
from tests.fakes.world import Host, World

SERVER = ("198.18.0.1", 4434)
CLIENT_HOST = "198.18.0.2"
FIRST_PORT = 50000
PSK = bytes(range(32))
WARMUP = 30.0  # fake seconds after the last handshake: PMTU searches settle
CONCURRENCY = 16  # handshakes in flight (bench/idle_clients.py's default)
BUSY_HOST = "198.18.0.3"  # the busy peer's underlay address (the idle ones: CLIENT_HOST)
BUSY_ADDR = "100.65.255.254"  # its tunnel address, inside the server's 100.65.0.1/16
BUSY_TARGET = "100.65.0.1"
BUSY_BATCH = 64  # inner packets per TUN batch of the busy peer (1400 bytes each)


def server_conf(work: Path, n: int, *, busy: bool = False) -> Path:
    psk = work / "idle.psk"
    psk.write_text(PSK.hex() + "\n")
    psk.chmod(0o600)
    peers = "".join(
        f"\n[Peer]\nName = idle-{i + 1:05d}\nPSKIdentity = idle-{i + 1:05d}\n"
        f"PSKFile = {psk}\nAllowedIPs = 100.65.{(i + 2) // 256}.{(i + 2) % 256}/32\n"
        for i in range(n))
    if busy:  # (the bench's busy peer, here a PSK daemon client: busy_conf)
        peers += f"\n[Peer]\nName = busy\nPSKIdentity = busy\nPSKFile = {psk}\n" \
                 f"AllowedIPs = {BUSY_ADDR}/32\n"
    conf = work / "server.conf"
    conf.write_text(
        "[Interface]\nRole = server\n"
        f"ListenAddress = {SERVER[0]}:{SERVER[1]}\nDevice = dvs0\n"
        "Address = 100.65.0.1/16\nMTU = auto\n"
        f"StatusSocket = {work}/server.sock\nTicketStore = {work}/server-state\n"
        "LogLevel = warning\n" + peers)
    return conf


def busy_conf(work: Path) -> Path:
    """The busy peer: a real daemon client (its own underlay host) of the same server."""
    conf = work / "busy.conf"
    conf.write_text(
        "[Interface]\nRole = client\nDevice = dvc0\n"
        f"Address = {BUSY_ADDR}/16\nMTU = auto\n"
        f"StatusSocket = {work}/busy.sock\nTicketStore = {work}/busy-tickets\n"
        "LogLevel = warning\n"
        f"\n[Peer]\nName = server\nEndpoint = {SERVER[0]}:{SERVER[1]}\n"
        f"PSKIdentity = busy\nPSKFile = {work / 'idle.psk'}\nAllowedIPs = 100.65.0.0/16\n")
    return conf


class _Inbox:
    """The fake net's port at one client address: datagrams queue with the delay."""

    def __init__(self, clients: _Clients, i: int) -> None:
        self.clients, self.i = clients, i

    def arrive(self, data: bytes, src: tuple[str, int], gso: int = 0) -> bool:
        c = self.clients
        c.s2c += 1
        heapq.heappush(c.wire, (c.now + c.delay, c.seq(), self.i, bytes(data)))
        return True


class _Clients:
    """N idle client associations, driven on the world's clock (as bench/idle_clients.py)."""

    def __init__(self, world: World, n: int, delay: float) -> None:
        self.world, self.n, self.delay = world, n, delay
        self.assocs: list[Association] = []
        self.addrs: list[tuple[str, int]] = []
        self.timers: list[tuple[float, int]] = []
        self.wire: list[tuple[float, int, int, bytes]] = []  # s2c: (arrive, seq, i, data)
        self.out: list[tuple[float, int, int, bytes]] = []  # c2s
        self.established = self.handshaking = self.failed = self.unresponsive = 0
        self.c2s = self.s2c = 0
        self._seq = 0

    @property
    def now(self) -> float:
        return self.world.clock.now

    def seq(self) -> int:
        self._seq += 1
        return self._seq

    def start_one(self) -> None:
        i = len(self.assocs)
        addr = (CLIENT_HOST, FIRST_PORT + i)
        self.world.net.ports[addr] = _Inbox(self, i)  # type: ignore[assignment]
        identity = f"idle-{i + 1:05d}".encode()
        assoc = Association(DtlsConfig(
            is_client=True, psk=PSK, psk_identity=identity, pmtu=None, rekey_interval=None,
            random_bytes=random.Random(f"idle-{i}").randbytes))
        self.assocs.append(assoc)
        self.addrs.append(addr)
        self.handshaking += 1
        assoc.connect(self.now, self.world.clock.wall)
        self.service(i)

    def service(self, i: int) -> None:
        assoc = self.assocs[i]
        now = self.now
        for d in assoc.datagrams_to_send(now):
            self.c2s += 1
            heapq.heappush(self.out, (now + self.delay, self.seq(), i, d))
        for ev in assoc.pop_events():
            if isinstance(ev, HandshakeCompleted):
                self.established += 1
                self.handshaking -= 1
            elif isinstance(ev, AssociationClosed):
                self.handshaking -= 0 if assoc.is_established else 1
                self.failed += 1
            elif isinstance(ev, PeerUnresponsive):
                self.unresponsive += 1
        t = assoc.get_timer()
        if t is not None:
            heapq.heappush(self.timers, (t, i))

    def readable(self, i: int, data: bytes) -> None:
        self.assocs[i].receive_datagram(data, self.now, self.world.clock.wall)
        self.service(i)

    def due(self) -> bool:
        now, timers, ran = self.now, self.timers, False
        while timers and timers[0][0] <= now:
            _t, i = heapq.heappop(timers)
            current = self.assocs[i].get_timer()
            if current is None or current > now:
                continue  # stale
            self.assocs[i].handle_timer(now)
            self.service(i)
            ran = True
        return ran

    def move(self) -> bool:
        """Datagrams whose delay ran out, both ways."""
        now, ran = self.now, False
        while self.wire and self.wire[0][0] <= now:
            _t, _s, i, data = heapq.heappop(self.wire)
            self.readable(i, data)
            ran = True
        net = self.world.net
        while self.out and self.out[0][0] <= now:
            _t, _s, i, data = heapq.heappop(self.out)
            net.deliver(data, self.addrs[i], SERVER)
            ran = True
        return ran

    def next_event(self) -> float | None:
        heads = [q[0][0] for q in (self.wire, self.out, self.timers) if q]
        return min(heads, default=None)


class _Busy:
    """The busy peer's traffic: a batch of 64 inner packets into its TUN at each of the
    given fake times; the server's TUN drained after every pass (counted, checked)."""

    def __init__(self, client: Host, server: Host, times: list[float]) -> None:
        from bench.micro_datapath import tcp_packet
        self.client, self.server, self.times = client, server, times
        self.batch = [tcp_packet(BUSY_ADDR, BUSY_TARGET, j) for j in range(BUSY_BATCH)]
        self.sent = self.delivered = 0
        self._pending: list[bytes] = []

    def tick(self, now: float) -> bool:
        ran = False
        while self.times and self.times[0] <= now:
            self.times.pop(0)
            self.client.tun.inject(self.batch)
            self.sent += len(self.batch)
            ran = True
        got = self.server.tun.drain()
        if got:
            pending = self._pending
            pending += got
            while len(pending) >= BUSY_BATCH:
                if pending[:BUSY_BATCH] != self.batch:
                    raise RuntimeError("the busy peer's packets arrived changed or out of order")
                del pending[:BUSY_BATCH]
                self.delivered += BUSY_BATCH
        return ran

    def next_event(self) -> float | None:
        return self.times[0] if self.times else None


def _run(world: World, clients: _Clients, until: float, busy: _Busy | None = None) -> None:
    solo = world.hosts[0] if len(world.hosts) == 1 else None
    while True:
        while True:
            if solo is not None:  # (the server alone: no cost of the harness beyond it)
                ran = solo.loop.run_once(max_wait=0) > 0
            else:
                ran = world.step() > 0
            if busy is not None:
                ran |= busy.tick(world.clock.now)
            ran |= clients.move()
            ran |= clients.due()
            while (clients.handshaking < CONCURRENCY
                   and len(clients.assocs) < clients.n):
                clients.start_one()
                ran = True
            if not ran:
                break
        if solo is not None and busy is None:
            nxt = [t for t in (solo.next_deadline(), clients.next_event()) if t is not None]
        else:
            nxt = [t for t in (world.next_deadline(), clients.next_event(),
                               busy.next_event() if busy is not None else None)
                   if t is not None]
        t = min(nxt, default=until)
        if t > until:
            world.clock.advance_to(until)
            return
        world.clock.advance_to(t)


def workload(n: int, seconds: float, delay: float, *, profile: bool = False,
             quiet: bool = False) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="dtlsvpn-idle-"))
    world = World(start=1000.0)
    world.start(server_conf(work, n), SERVER[0])
    clients = _Clients(world, n, delay)
    t0 = world.clock.now
    while clients.established + clients.failed < n:
        _run(world, clients, world.clock.now + 1.0)
        if world.clock.now - t0 > 600:
            raise RuntimeError(f"only {clients.established} of {n} established")
    _run(world, clients, world.clock.now + WARMUP)
    c2s, s2c, t_start = clients.c2s, clients.s2c, world.clock.now
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    _run(world, clients, t_start + seconds)
    if prof is not None:
        prof.disable()
    pairs = clients.established
    out = {"pairs": pairs, "seconds": seconds,
           "c2s_per_pair_s": (clients.c2s - c2s) / pairs / seconds,
           "s2c_per_pair_s": (clients.s2c - s2c) / pairs / seconds,
           "unresponsive": clients.unresponsive}
    snap = world.hosts[0].snapshot()
    out["server_established"] = sum(1 for p in snap["peers"] if p.get("state") == "established")
    if prof is not None:
        stats = pstats.Stats(prof)
        out.update(_split(stats))
        if not quiet:
            stats.sort_stats("tottime").print_stats(25)
    if not quiet:
        for k, v in out.items():
            print(f"{k:22} {v:.4g}" if isinstance(v, float) else f"{k:22} {v}")
    return out


def busy_workload(n: int, batches: int, seconds: float, delay: float, *,
                  quiet: bool = False) -> dict[str, float]:
    """N idle pairs up (none with ``n`` = 0) and the busy peer established, then
    ``seconds`` fake seconds with the idle keepalives running and ``batches`` batches of
    64 inner packets from the busy peer spread evenly over them.  The window is the same
    length whatever ``batches`` is, so under callgrind the difference of two ``batches``
    is the busy packets' own cost with the idle peers around (their keepalives cancel)."""
    work = Path(tempfile.mkdtemp(prefix="dtlsvpn-idle-"))
    world = World(start=1000.0)
    server = world.start(server_conf(work, n, busy=True), SERVER[0])
    client = world.start(busy_conf(work), BUSY_HOST)
    clients = _Clients(world, n, delay)
    t0 = world.clock.now
    while clients.established + clients.failed < n or not _busy_up(client):
        _run(world, clients, world.clock.now + 1.0)
        if world.clock.now - t0 > 600:
            raise RuntimeError(f"only {clients.established} of {n} established")
    _run(world, clients, world.clock.now + WARMUP)
    start = world.clock.now
    step = seconds / max(batches, 1)
    busy = _Busy(client, server, [start + (k + 0.5) * step for k in range(batches)])
    collections: list[tuple[int, float]] = []
    timing: dict[int, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            timing[info["generation"]] = time.perf_counter()
        elif info["generation"] == 2:
            collections.append((info["collected"], time.perf_counter() - timing[2]))

    gc.callbacks.append(on_gc)
    _run(world, clients, start + seconds, busy)
    gc.callbacks.remove(on_gc)
    world.settle()
    busy.tick(world.clock.now)
    if busy.delivered != busy.sent:
        raise RuntimeError(f"busy peer: {busy.delivered} of {busy.sent} packets delivered")
    out = {"idle_pairs": clients.established, "busy_packets": busy.sent,
           "full_collections": len(collections),
           "full_collection_ms": 1000 * sum(t for _c, t in collections)}
    if not quiet:
        for k, v in out.items():
            print(f"{k:22} {v:.4g}" if isinstance(v, float) else f"{k:22} {v}")
    return out


def _busy_up(client: Host) -> bool:
    return all(p["state"] == "established" for p in client.snapshot()["peers"])


def busy_callgrind(n: int, low: int, high: int, seconds: float, delay: float) -> None:
    """Instructions per busy-peer packet with no idle peers and with ``n``."""
    rows = []
    for peers in (0, n):
        a, b = (instructions("bench.micro_idle", "--busy", "--peers", str(peers),
                             "--batches", str(k), "--busy-seconds", str(seconds),
                             "--delay", str(delay), "--quiet") for k in (low, high))
        per = (b - a) / ((high - low) * BUSY_BATCH)
        rows.append(per)
        print(f"  {peers} idle peers: {per:,.0f} instructions per busy packet "
              f"({low} vs {high} batches of {BUSY_BATCH} × 1400 B in {seconds:g} fake s)",
              flush=True)
    print(f"{n} idle peers against none: {rows[1] / rows[0]:.3f}× the instructions per "
          "busy packet (callgrind, the whole fake world; the keepalives cancel)")


def _split(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of the server's loop and of the idle clients' entry points."""
    server = clients = 0.0
    for (path, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        cum = row[3]
        if name == "run_once" and path.endswith("daemon/loop.py"):
            server += cum
        elif path.endswith("micro_idle.py") and name in ("readable", "due"):
            clients += cum
    total = server + clients
    return {"server_share": server / total if total else 0.0,
            "clients_share": clients / total if total else 0.0}


def _instructions(n: int, seconds: float, delay: float) -> int:
    return instructions("bench.micro_idle", "--peers", str(n), "--seconds", str(seconds),
                        "--delay", str(delay), "--quiet")


def callgrind(n: int, low: float, high: float, delay: float) -> None:
    a = _instructions(n, low, delay)
    b = _instructions(n, high, delay)
    native = workload(n, high, delay, profile=True, quiet=True)
    exchanges = n * (high - low) / 2.0  # one keepalive interval (2 s) per pair
    per_pair_s = (b - a) / (n * (high - low))
    print(f"{n} idle pairs, window {low:g} s vs {high:g} s (fake time), callgrind:")
    print(f"  datagrams per pair per second: c→s {native['c2s_per_pair_s']:.3f}, "
          f"s→c {native['s2c_per_pair_s']:.3f}")
    print(f"  instructions per pair per second (server + clients): {per_pair_s:,.0f}")
    print(f"  instructions per keepalive interval (2 s) per pair: {(b - a) / exchanges:,.0f}"
          f"  (server {native['server_share']:.0%}, clients {native['clients_share']:.0%}"
          " by cProfile)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--delay", type=float, default=0.0002, help="one way, seconds")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--busy", action="store_true",
                    help="a busy peer beside the idle ones: instructions per busy packet")
    ap.add_argument("--batches", type=int, default=20, help="--busy: batches of 64 packets")
    ap.add_argument("--low", type=float, default=10.0)
    ap.add_argument("--high", type=float, default=30.0)
    ap.add_argument("--low-batches", type=int, default=10)
    ap.add_argument("--high-batches", type=int, default=40)
    ap.add_argument("--busy-seconds", type=float, default=2.0,
                    help="--busy: the window, fake seconds (a keepalive interval)")
    args = ap.parse_args()
    if args.busy and args.callgrind:
        busy_callgrind(1000 if args.peers is None else args.peers, args.low_batches,
                       args.high_batches, args.busy_seconds, args.delay)
    elif args.busy:
        busy_workload(1000 if args.peers is None else args.peers, args.batches,
                      args.busy_seconds, args.delay, quiet=args.quiet)
    elif args.callgrind:
        callgrind(args.peers or 100, args.low, args.high, args.delay)
    else:
        workload(args.peers or 1000, args.seconds, args.delay, profile=args.profile,
                 quiet=args.quiet)


if __name__ == "__main__":
    main()
