"""The side-by-side comparison: every system up at once, measured round by round.

Each system gets its own tunnel subnet and port, so all tunnels are brought up
first and stay up; then round 1 measures every system in turn, round 2 again, and
so on, so slow drift of the shared machine hits every system alike.  Per system and
round: the tunnel MTU (both ends), ping idle, one TCP stream client→server with a
ping running through the tunnel meanwhile (RTT under load), one stream
server→client, four streams client→server; CPU seconds of the system's processes
over each iperf3 run.  A failure costs that one figure (recorded with its reason),
never the run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.load import Loads, Throughput
from bench.procs import BenchError
from bench.stats import METRICS
from bench.systems.base import Context, System, Tunnel

IDLE_PINGS = 50  # (20 left the idle RTT of one round to a handful of slow wake-ups)
IDLE_PING_INTERVAL = 0.05


@dataclass
class SystemRun:
    """One system's tunnel and everything measured through it."""

    system: System
    version: str
    tunnel: Tunnel | None = None
    error: str | None = None  # why it could not start
    values: dict[str, list[float | None]] = field(
        default_factory=lambda: {m: [] for m in METRICS})
    mtus: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    start_seconds: float | None = None
    final: dict[str, Any] = field(default_factory=dict)  # System.finish after the rounds
    others_cores: list[float] = field(default_factory=list)  # per iperf3 run


def start_all(ctx: Context, systems: list[System], loads: Loads,
              say: Callable[[str], None]) -> list[SystemRun]:
    runs = []
    for system in systems:
        run = SystemRun(system, system.version())
        say(f"start {system.label} ({run.version})")
        t0 = time.monotonic()
        already = set(map(id, ctx.procs.procs))
        try:
            absent = [p for p in system.programs if shutil.which(p) is None]
            if absent:
                raise BenchError(f"not installed: {', '.join(absent)}")
            run.tunnel = system.start(ctx)
            if not loads.reachable(run.tunnel.server_ip):
                raise BenchError(f"no ping reply through the tunnel to {run.tunnel.server_ip}")
            run.start_seconds = time.monotonic() - t0
            note = f", {run.tunnel.note}" if run.tunnel.note else ""
            say(f"  {system.label} up in {run.start_seconds:.1f} s{note}")
        except BenchError as exc:
            run.error = str(exc)
            run.tunnel = None
            say(f"  {system.label} MISSING: {exc}")
            for proc in [p for p in ctx.procs.procs if id(p) not in already]:
                ctx.procs.stop(proc)
        runs.append(run)
    return runs


def mtu_text(ctx: Context, tunnel: Tunnel) -> str:
    client = ctx.topo.link_mtu(ctx.topo.client, tunnel.client_dev)
    server = ctx.topo.link_mtu(ctx.topo.server, tunnel.server_dev)
    if client == server:
        return str(client)
    return f"{client}/{server}"


def _record(run: SystemRun, metric: str, value: float | None) -> None:
    run.values[metric].append(value)


def measure_round(ctx: Context, loads: Loads, run: SystemRun, round_no: int, seconds: float,
                  say: Callable[[str], None]) -> None:
    """One round of every load through one system's tunnel."""
    tunnel = run.tunnel
    assert tunnel is not None
    label = run.system.label
    dead = tunnel.dead()
    if dead:
        run.errors.append(f"round {round_no}: {'; '.join(dead)}")
        say(f"  {label}: process died: {'; '.join(dead)}")
        for metric in METRICS:
            _record(run, metric, None)
        return
    run.mtus.append(mtu_text(ctx, tunnel))
    pids = tunnel.pids()

    def step(what: str, action: Callable[[], str]) -> None:
        say(f"round {round_no} {label}: {what}")
        try:
            say(f"  {action()}")
        except BenchError as exc:
            run.errors.append(f"round {round_no} {what}: {exc}")
            say(f"  failed: {exc}")

    def idle_ping() -> str:
        rtt = loads.ping(tunnel.server_ip, IDLE_PINGS, IDLE_PING_INTERVAL)
        run.values["rtt_idle_ms"][-1] = rtt.median_ms
        return f"RTT median {rtt.median_ms:.3f} ms, p90 {rtt.p90_ms:.3f} ms, mtu {run.mtus[-1]}"

    def single(reverse: bool) -> str:
        metric, cpu = ("s2c_mbit", "cpu_s2c") if reverse else ("c2s_mbit", "cpu_c2s")
        tput, rtt = loads.iperf(tunnel.server_ip, seconds, reverse=reverse, cpu_pids=pids,
                                ping_during=not reverse)
        run.others_cores.append(tput.others_cores)
        run.values[metric][-1] = tput.mbit_s
        run.values[cpu][-1] = tput.cores_per_gbit
        text = f"{tput.mbit_s:.0f} Mbit/s, {_cores(tput)}"
        if not reverse:
            run.values["rtt_load_ms"][-1] = rtt.median_ms if rtt else None
            text += f", RTT under load {rtt.median_ms:.3f} ms" if rtt else ", no ping reply"
        return text

    def four() -> str:
        tput, _ = loads.iperf(tunnel.server_ip, seconds, streams=4, cpu_pids=pids)
        run.others_cores.append(tput.others_cores)
        run.values["p4_mbit"][-1] = tput.mbit_s
        run.values["cpu_p4"][-1] = tput.cores_per_gbit
        return f"{tput.mbit_s:.0f} Mbit/s, {_cores(tput)}"

    for metric in METRICS:
        _record(run, metric, None)
    step("ping idle", idle_ping)
    step(f"iperf3 c→s 1 stream {seconds:g} s + ping", lambda: single(False))
    step(f"iperf3 s→c 1 stream {seconds:g} s", lambda: single(True))
    step(f"iperf3 c→s 4 streams {seconds:g} s", four)


def _cores(tput: Throughput) -> str:
    per = tput.cores_per_gbit
    return "CPU –" if per is None else f"CPU {per:.2f} cores per Gbit/s"


def run_rounds(ctx: Context, loads: Loads, runs: list[SystemRun], rounds: int, seconds: float,
               say: Callable[[str], None]) -> None:
    for round_no in range(1, rounds + 1):
        for run in runs:
            if run.tunnel is not None:
                measure_round(ctx, loads, run, round_no, seconds, say)
    for run in runs:
        if run.tunnel is not None:
            try:
                run.final = run.system.finish(ctx)
            except BenchError as exc:
                run.final = {"error": str(exc)}
