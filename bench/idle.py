"""Many idle peers: one busy peer's throughput with and without N idle associations.

A dtlsvpn server is configured with the bench's certificate client (the busy peer,
as in the side-by-side rounds) plus N PSK peers ``idle-00001`` … whose AllowedIPs
(100.65.0.2 onwards, one /32 each) lie inside a second address of the server
(100.65.0.1/16), so no per-peer routes are installed.  Each round measures the busy
peer twice with one single-stream iperf3 test client→server: first alone, then with
the N idle associations up.  For the second run :mod:`bench.idle_clients` (one process
in the client namespace, a UDP socket per peer, the sockets spread over ``SOURCES``
extra client addresses so that the server's per-source admission limit of 20 new
associations a second does not pace the set-up) brings the N associations up and
keeps their keepalives running; after it the process sends close_notify from every
association and exits, and the server's status is polled until it holds only the
busy peer again.  Odd rounds run "without" first, even rounds "with" first, so drift
within a round favours neither.  The ratio of the medians is the figure; the server's
CPU while only the idle peers talk, and the idle process's own CPU (it shares this
machine's 2 cores: with no data flowing, ``idle_clients_cores``, and during the busy
runs, ``idle_clients_busy_cores``), are reported beside it.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from bench.load import Loads
from bench.netns import SERVER_UNDERLAY
from bench.procs import BenchError, cpu_seconds, cpu_used, poll
from bench.stats import summarise
from bench.systems.base import Context, write
from bench.systems.ours import SUBNET, find_key, start_pair, status

PORT = 4434
FIRST_IDLE = ipaddress.IPv4Address("100.65.0.2")
IDLE_NET = "100.65.0.1/16"
MAX_IDLE = 65_000
SOURCE_NET = "198.18.2.0/24"  # the idle clients' source hosts (testing.md's underlay)
SOURCES = 64
SETTLE = 3.0  # seconds of pure keepalive traffic before the busy runs
STALL = 30.0  # give up the set-up after this long without a new association


def peer_sections(n: int, psk_file: str) -> str:
    out = []
    for i in range(n):
        name = f"idle-{i + 1:05d}"
        out.append(f"[Peer]\nName = {name}\nPSKIdentity = {name}\nPSKFile = {psk_file}\n"
                   f"AllowedIPs = {FIRST_IDLE + i}/32\n")
    return "\n".join(out)


def _busy_run(loads: Loads, seconds: float, pids: list[int], tag: str,
              say: Callable[[str], None], idle_pid: int | None = None
              ) -> tuple[float | None, float | None, float | None]:
    """(Mbit/s, cores per Gbit/s of ``pids``, cores the idle-client process used during
    the run, when ``idle_pid`` is given)."""
    say(f"idle peers: busy peer iperf3 c→s {seconds:g} s, {tag}")
    before = cpu_seconds([idle_pid]) if idle_pid is not None else {}
    t0 = time.monotonic()
    try:
        tput, _ = loads.iperf(f"{SUBNET}.1", seconds, cpu_pids=pids)
    except BenchError as exc:
        say(f"  failed: {exc}")
        return None, None, None
    idle_cores = None
    if idle_pid is not None:
        idle_cores = cpu_used(before, cpu_seconds([idle_pid])) / (time.monotonic() - t0)
    say(f"  {tput.mbit_s:.0f} Mbit/s" + ("" if idle_cores is None else
                                         f", idle clients {100 * idle_cores:.0f} % of a core"))
    return tput.mbit_s, tput.cores_per_gbit, idle_cores


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
    sources = ",".join(ctx.topo.add_client_sources(SOURCE_NET, SOURCES))
    series: dict[str, list[Any]] = {k: [] for k in (
        "without", "cpu_without", "with", "cpu_with", "established_rounds", "setup_rounds",
        "server_view", "server_idle_cores_rounds", "idle_clients_cores_rounds",
        "idle_clients_busy_cores_rounds", "drain_seconds", "setup_progress_rounds",
        "order")}
    for r in range(1, rounds + 1):
        # The order alternates (odd rounds without first, even rounds with first), so a
        # machine that drifts during a round does not favour one side.
        with_first = r % 2 == 0
        series["order"].append("with, without" if with_first else "without, with")
        if with_first:
            _with_idle_peers(ctx, loads, server, pids, psk, sources, n, r, seconds,
                             setup_budget, series, say)
        mbit, cpu, _ = _busy_run(loads, seconds, pids, f"no idle peers, round {r}/{rounds}",
                                 say)
        series["without"].append(mbit)
        series["cpu_without"].append(cpu)
        if not with_first:
            _with_idle_peers(ctx, loads, server, pids, psk, sources, n, r, seconds,
                             setup_budget, series, say)
    for daemon in (client, server):
        ctx.procs.stop(daemon.proc)
    result.update(series)
    return _summarise(result)


def _with_idle_peers(ctx: Context, loads: Loads, server: Any, pids: list[int], psk: Any,
                     sources: str, n: int, r: int, seconds: float, setup_budget: float,
                     series: dict[str, list[Any]], say: Callable[[str], None]) -> None:
    """Bring the idle peers up, measure the busy peer, then close them all again."""
    progress_file = ctx.work / f"idle-progress-{r}.json"
    idle = ctx.procs.start(
        f"idle-clients-{r}",
        [ctx.python, "-m", "bench.idle_clients", "--server", f"{SERVER_UNDERLAY}:{PORT}",
         "--bind", sources, "--count", str(n), "--psk-file", str(psk),
         "--status", str(progress_file), "--limit", f"{ctx.limit:.0f}"],
        limit=ctx.limit, ns=ctx.topo.client, log=ctx.work / f"idle-clients-{r}.log",
        env=ctx.env())
    try:
        up = _bring_up(idle, progress_file, n, setup_budget, say)
        series["established_rounds"].append(up["established"])
        series["setup_rounds"].append(up["setup_seconds"])
        series["setup_progress_rounds"].append(up["setup_progress"])
        series["server_view"].append(_server_established(ctx, server))
        before = cpu_seconds([server.proc.pid]), cpu_seconds([idle.pid])
        time.sleep(SETTLE)
        after = cpu_seconds([server.proc.pid]), cpu_seconds([idle.pid])
        series["server_idle_cores_rounds"].append(cpu_used(before[0], after[0]) / SETTLE)
        series["idle_clients_cores_rounds"].append(cpu_used(before[1], after[1]) / SETTLE)
        say(f"  server CPU with {up['established']} idle peers and no data: "
            f"{100 * series['server_idle_cores_rounds'][-1]:.0f} % of a core")
        mbit, cpu, idle_cores = _busy_run(loads, seconds, pids,
                                          f"{up['established']} idle peers, round {r}", say,
                                          idle_pid=idle.pid)
        series["with"].append(mbit)
        series["cpu_with"].append(cpu)
        series["idle_clients_busy_cores_rounds"].append(idle_cores)
    finally:
        ctx.procs.stop(idle, grace=10)
    t0 = time.monotonic()
    drained = poll(lambda: (_server_established(ctx, server) or 0) <= 1, 20, 0.5)
    series["drain_seconds"].append(time.monotonic() - t0 if drained else None)
    if not drained:
        say("  the server still holds idle associations 20 s after their close_notify")


def _summarise(result: dict[str, Any]) -> dict[str, Any]:
    without, with_ = summarise(result["without"]), summarise(result["with"])
    result["without_summary"] = without.as_dict() if without else None
    result["with_summary"] = with_.as_dict() if with_ else None
    result["ratio"] = with_.median / without.median if with_ and without else None
    # Each round's own pair too: the two runs of a round are seconds apart, the rounds
    # a minute, so the pairs show how much of the spread is the machine's drift.
    result["ratio_rounds"] = [w / wo if w and wo else None
                              for w, wo in zip(result["with"], result["without"], strict=True)]
    result["established"] = min(result["established_rounds"], default=0)
    result["setup_seconds"] = max(result["setup_rounds"], default=0.0)
    result["setup_progress"] = (result["setup_progress_rounds"] or [{}])[0]
    result["server_view_established"] = result["server_view"][0] if result["server_view"] \
        else None
    for key in ("server_idle_cores", "idle_clients_cores", "idle_clients_busy_cores"):
        s = summarise(result[f"{key}_rounds"])
        result[key] = s.median if s else 0.0
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
