"""Many idle peers: one busy peer's throughput with and without N idle associations.

A dtlsvpn server is configured with the bench's certificate client (the busy peer,
as in the side-by-side rounds) plus N PSK peers ``idle-00001`` … whose AllowedIPs
(100.65.0.2 onwards, one /32 each) lie inside a second address of the server
(100.65.0.1/16), so no per-peer routes are installed.  First the busy peer alone
runs ``rounds`` single-stream iperf3 tests client→server; then
:mod:`bench.idle_clients` (one process in the client namespace, a UDP socket per
peer) brings the N associations up and keeps their keepalives running, and the same
tests run again.  The ratio of the medians is the figure; the server's CPU while
only the idle peers talk, and the idle process's own CPU (it shares this machine),
are reported beside it.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from bench.load import Loads
from bench.netns import CLIENT_UNDERLAY, SERVER_UNDERLAY
from bench.procs import BenchError, cpu_seconds, cpu_used
from bench.stats import summarise
from bench.systems.base import Context, write
from bench.systems.ours import SUBNET, find_key, start_pair, status

PORT = 4434
FIRST_IDLE = ipaddress.IPv4Address("100.65.0.2")
IDLE_NET = "100.65.0.1/16"
MAX_IDLE = 65_000
SETTLE = 3.0  # seconds of pure keepalive traffic before the busy runs
STALL = 30.0  # give up the set-up after this long without a new association


def peer_sections(n: int, psk_file: str) -> str:
    out = []
    for i in range(n):
        name = f"idle-{i + 1:05d}"
        out.append(f"[Peer]\nName = {name}\nPSKIdentity = {name}\nPSKFile = {psk_file}\n"
                   f"AllowedIPs = {FIRST_IDLE + i}/32\n")
    return "\n".join(out)


def _busy_runs(loads: Loads, rounds: int, seconds: float, pids: list[int], tag: str,
               say: Callable[[str], None]) -> tuple[list[float | None], list[float | None]]:
    mbit: list[float | None] = []
    cpu: list[float | None] = []
    for r in range(1, rounds + 1):
        say(f"idle peers: busy peer iperf3 c→s {seconds:g} s, {tag}, {r}/{rounds}")
        try:
            tput, _ = loads.iperf(f"{SUBNET}.1", seconds, cpu_pids=pids)
            mbit.append(tput.mbit_s)
            cpu.append(tput.cores_per_gbit)
            say(f"  {tput.mbit_s:.0f} Mbit/s")
        except BenchError as exc:
            mbit.append(None)
            cpu.append(None)
            say(f"  failed: {exc}")
    return mbit, cpu


def _read_progress(path: Any) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _server_established(ctx: Context, daemon: Any) -> int | None:
    """How many peers the server's status shows established (None if it cannot tell)."""
    try:
        doc = status(ctx, daemon)
    except (BenchError, ValueError):
        return None
    peers = find_key(doc, "peers")
    if not isinstance(peers, list):
        return None
    return sum(1 for p in peers if isinstance(p, dict) and p.get("state") == "established")


def run_idle(ctx: Context, loads: Loads, n: int, rounds: int, seconds: float,
             setup_budget: float, say: Callable[[str], None]) -> dict[str, Any]:
    if not 0 < n <= MAX_IDLE:
        raise BenchError(f"BENCH_IDLE_PEERS={n}: expected 1..{MAX_IDLE}")
    psk = write(ctx.work / "idle.psk", secrets.token_hex(32) + "\n", 0o600)
    result: dict[str, Any] = {"requested": n, "rounds": rounds, "seconds": seconds}
    say(f"idle peers: dtlsvpn server with {n} PSK peers + the busy certificate peer")
    t0 = time.monotonic()
    server, client = start_pair(ctx, "idle", port=PORT,
                                server_addresses=f"{SUBNET}.1/24, {IDLE_NET}",
                                peers=peer_sections(n, str(psk)))
    result["server_start_seconds"] = time.monotonic() - t0
    say(f"  server and busy client up in {result['server_start_seconds']:.1f} s")
    if not loads.reachable(f"{SUBNET}.1"):
        raise BenchError("idle-peers server: no ping through the busy peer's tunnel")
    pids = [server.proc.pid, client.proc.pid]
    result["without"], result["cpu_without"] = _busy_runs(loads, rounds, seconds, pids,
                                                          "no idle peers", say)
    progress_file = ctx.work / "idle-progress.json"
    idle = ctx.procs.start(
        "idle-clients",
        [ctx.python, "-m", "bench.idle_clients", "--server", f"{SERVER_UNDERLAY}:{PORT}",
         "--bind", CLIENT_UNDERLAY, "--count", str(n), "--psk-file", str(psk),
         "--status", str(progress_file), "--limit", f"{ctx.limit:.0f}"],
        limit=ctx.limit, ns=ctx.topo.client, log=ctx.work / "idle-clients.log", env=ctx.env())
    result.update(_bring_up(idle, progress_file, n, setup_budget, say))
    result["server_view_established"] = _server_established(ctx, server)
    before = cpu_seconds([server.proc.pid]), cpu_seconds([idle.pid])
    time.sleep(SETTLE)
    after = cpu_seconds([server.proc.pid]), cpu_seconds([idle.pid])
    result["server_idle_cores"] = cpu_used(before[0], after[0]) / SETTLE
    result["idle_clients_cores"] = cpu_used(before[1], after[1]) / SETTLE
    say(f"  {result['established']} idle associations; server CPU with them and no data: "
        f"{100 * result['server_idle_cores']:.0f} % of a core")
    result["with"], result["cpu_with"] = _busy_runs(
        loads, rounds, seconds, pids, f"{result['established']} idle peers", say)
    result["final_progress"] = _read_progress(progress_file)
    ctx.procs.stop(idle)
    for daemon in (client, server):
        ctx.procs.stop(daemon.proc)
    without, with_ = summarise(result["without"]), summarise(result["with"])
    result["without_summary"] = without.as_dict() if without else None
    result["with_summary"] = with_.as_dict() if with_ else None
    result["ratio"] = with_.median / without.median if with_ and without else None
    return result


def _bring_up(idle: Any, progress_file: Any, n: int, budget: float,
              say: Callable[[str], None]) -> dict[str, Any]:
    """Wait until the N idle associations are up (or the budget or progress runs out)."""
    t0 = time.monotonic()
    last_count, last_change, last_say = -1, t0, 0.0
    progress: dict[str, int] = {}
    while True:
        now = time.monotonic()
        progress = _read_progress(progress_file)
        done = progress.get("established", 0)
        if done != last_count:
            last_count, last_change = done, now
        if done >= n or progress.get("established", 0) + progress.get("failed", 0) >= n:
            break
        if not idle.alive():
            raise BenchError(f"idle clients exited: {idle.log_tail()}")
        if now - t0 > budget or now - last_change > STALL:
            say(f"  set-up stopped after {now - t0:.0f} s: {done} of {n} established")
            break
        if now - last_say >= 5:
            last_say = now
            say(f"  idle peers: {done}/{n} established, {progress.get('failed', 0)} failed")
        time.sleep(0.25)
    seconds = time.monotonic() - t0
    say(f"  {progress.get('established', 0)}/{n} idle peers established in {seconds:.1f} s")
    return {"established": progress.get("established", 0), "setup_seconds": seconds,
            "setup_progress": progress}
