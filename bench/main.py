"""``python -m bench`` (``make bench``): the whole run, from installing to the chart.

Order: install what is missing (Debian), build the namespaces, bring every system's
tunnel up, the rounds (all systems per round), stop them; the many-idle-peers case;
the core alone; then the result document, written as Markdown, JSON and PNG (plus
the profile) under ``bench/results/`` and printed.  Knobs (environment):

    BENCH_ROUNDS      rounds over all systems (default 3)
    BENCH_SECONDS     seconds per iperf3 test (default 5)
    BENCH_SYSTEMS     comma list of bare, dtlsvpn, openvpn, wireguard, ocserv, floor, idle, core
                      (default: all of them)
    BENCH_IDLE_PEERS  idle peers of the many-idle-peers case (default 1000)
    BENCH_IDLE_ROUNDS rounds of the many-idle-peers case (default 5: its pairs take
                      about 17 s each, and its ratio is the figure most moved by drift)
    BENCH_IDLE_SETUP  seconds allowed to bring the idle peers up (default 120)
    BENCH_OUT         where results go (default bench/results)
    BENCH_KEEP=1      keep the work directory (configurations and logs)

Exit status: 0 when the harness worked, whatever the systems did (a system that
cannot start is a row with its error); non-zero when the harness itself failed.
Cleanup (processes by PID, then the namespaces) runs on every exit, also on
Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import document, install, report
from bench.core import HANDSHAKE_MODES, bulk_throughput, handshake_rate, profile_bulk
from bench.idle import run_idle
from bench.load import Loads, iperf_version
from bench.netns import Topology
from bench.pairs import Credentials
from bench.procs import BenchError, Processes, run
from bench.rounds import run_rounds, start_all
from bench.systems.bare import Bare
from bench.systems.base import REPO, Context, System
from bench.systems.floor import Floor
from bench.systems.ocserv import Ocserv
from bench.systems.openvpn import OpenVpn
from bench.systems.ours import Dtlsvpn
from bench.systems.wireguard import WireguardGo

SYSTEMS: list[type[System]] = [Bare, Dtlsvpn, OpenVpn, WireguardGo, Ocserv, Floor]
PARTS = ("idle", "core")
CORE_MEMORY_ASSOCIATIONS = 500
CORE_BULK_PACKETS = 40_000


def _whole(env: dict[str, str], key: str, default: int) -> int:
    """A count knob: a whole number, at least 1 (the message names the knob)."""
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BenchError(f"{key}={raw!r}: expected a whole number of at least 1") from None
    if value < 1:
        raise BenchError(f"{key}={raw!r}: must be at least 1")
    return value


def _seconds(env: dict[str, str], key: str, default: float) -> float:
    """A duration knob in seconds: finite, at least 1."""
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BenchError(f"{key}={raw!r}: expected seconds (a number of at least 1)") from None
    if not math.isfinite(value) or value < 1:
        raise BenchError(f"{key}={raw!r}: must be a finite number of seconds, at least 1")
    return value


@dataclass
class Settings:
    rounds: int = 3
    seconds: float = 5.0
    systems: list[str] = field(default_factory=lambda: [s.name for s in SYSTEMS] + list(PARTS))
    idle_peers: int = 1000
    idle_rounds: int = 5
    idle_setup: float = 120.0
    out: Path = REPO / "bench" / "results"
    keep: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        s = cls()
        s.rounds = _whole(env, "BENCH_ROUNDS", s.rounds)
        s.seconds = _seconds(env, "BENCH_SECONDS", s.seconds)
        s.idle_peers = _whole(env, "BENCH_IDLE_PEERS", s.idle_peers)
        s.idle_rounds = _whole(env, "BENCH_IDLE_ROUNDS", s.idle_rounds)
        s.idle_setup = _seconds(env, "BENCH_IDLE_SETUP", s.idle_setup)
        if env.get("BENCH_SYSTEMS"):
            s.systems = [x.strip() for x in env["BENCH_SYSTEMS"].split(",") if x.strip()]
        known = {c.name for c in SYSTEMS} | set(PARTS)
        unknown = [x for x in s.systems if x not in known]
        if unknown:
            raise BenchError(f"BENCH_SYSTEMS: unknown {', '.join(unknown)}; expected some of "
                             f"{', '.join(sorted(known))}")
        if env.get("BENCH_OUT"):
            s.out = Path(env["BENCH_OUT"])
        s.keep = env.get("BENCH_KEEP") == "1"
        return s

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "seconds": self.seconds, "systems": self.systems,
                "idle_peers": self.idle_peers, "idle_rounds": self.idle_rounds,
                "idle_setup": self.idle_setup}


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        m, s = divmod(time.monotonic() - self.t0, 60)
        print(f"[bench {int(m):2d}:{s:04.1f}] {text}", flush=True)


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def process_limit(s: Settings) -> float:
    """An upper bound on the run, for ``timeout`` around every process."""
    tunnels = len([x for x in s.systems if x not in PARTS])
    return 900 + s.rounds * tunnels * (3 * s.seconds + 20) \
        + s.idle_rounds * (2 * s.seconds + 30 + s.idle_setup)


def run_core(ctx: Context, out_dir: Path, stamp: str, say: Progress) -> dict[str, Any]:
    pki = ctx.pki()
    creds = Credentials.load(pki.ca, pki.cert("server"), pki.key("server"))
    rates = []
    for mode in HANDSHAKE_MODES:
        say(f"core: handshakes, {HANDSHAKE_MODES[mode]}")
        rate = handshake_rate(mode, creds, budget=2.0)
        say(f"  {rate.per_second:,.0f} per second on one server core ({rate.count} done)")
        rates.append(rate.as_dict())
    say(f"core: memory per idle association ({CORE_MEMORY_ASSOCIATIONS}, fresh process)")
    res = subprocess.run(
        [ctx.python, "-m", "bench.core", "memory", str(pki.ca), str(pki.cert("server")),
         str(pki.key("server")), str(CORE_MEMORY_ASSOCIATIONS)],
        capture_output=True, text=True, timeout=300, env=ctx.env(), check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {res.stderr.strip()[-300:]}")
    memory = json.loads(res.stdout)
    say(f"  server {memory['server_heap_bytes'] / 1024:.1f} KiB heap, "
        f"{memory['server_rss_bytes'] / 1024:.1f} KiB RSS per association")
    say(f"core: bulk transfer, {CORE_BULK_PACKETS} packets")
    bulk = bulk_throughput(creds, CORE_BULK_PACKETS)
    say(f"  {bulk['packets_per_second']:,.0f} packets/s, {bulk['mbit_s_one_core']:,.0f} Mbit/s")
    say("core: cProfile of the same transfer")
    profile = profile_bulk(creds, CORE_BULK_PACKETS, out_dir / f"{stamp}-profile.txt")
    say("openssl speed -evp aes-128-gcm, 1400-byte blocks, 1 s (the crypto ceiling)")
    ceiling = aead_ceiling()
    if ceiling is not None:
        say(f"  {ceiling:,.0f} Mbit/s on one core")
    return {"handshakes": rates, "memory": memory, "bulk": bulk, "profile": profile,
            "openssl_aes128gcm_mbit_s": ceiling}


def aead_ceiling() -> float | None:
    """AES-128-GCM Mbit/s on one core per ``openssl speed`` (1400-byte blocks), or None."""
    try:
        out = run(["openssl", "speed", "-seconds", "1", "-bytes", "1400", "-evp",
                   "aes-128-gcm", "-mr"], timeout=60).stdout
    except BenchError:
        return None
    for line in out.splitlines():
        if line.startswith("+F:"):
            return float(line.rsplit(":", 1)[1]) * 8 / 1e6
    return None


def measure(s: Settings, ctx: Context, say: Progress, out_dir: Path, stamp: str
            ) -> tuple[list[Any], dict[str, Any] | None, dict[str, Any] | None]:
    loads = Loads(ctx.topo, ctx.procs, ctx.work)
    chosen = [cls() for cls in SYSTEMS if cls.name in s.systems]
    runs = start_all(ctx, chosen, loads, say)
    run_rounds(ctx, loads, runs, s.rounds, s.seconds, say)
    for r in runs:
        for proc in r.tunnel.procs if r.tunnel else []:
            ctx.procs.stop(proc)
    idle = None
    if "idle" in s.systems:
        try:
            idle = run_idle(ctx, loads, s.idle_peers, s.idle_rounds, s.seconds, s.idle_setup,
                            say)
        except BenchError as exc:
            say(f"idle peers: FAILED: {exc}")
            idle = {"requested": s.idle_peers, "error": str(exc)}
        ctx.procs.stop_all()
    core = None
    if "core" in s.systems:
        try:
            core = run_core(ctx, out_dir, stamp, say)
        except (BenchError, RuntimeError, AssertionError) as exc:
            say(f"core: FAILED: {exc}")
            core = {"error": str(exc)}
    return runs, idle, core


def write_results(doc: dict[str, Any], out_dir: Path, stamp: str, say: Progress) -> int:
    md_path, json_path, png_path = (out_dir / f"{stamp}{ext}" for ext in (".md", ".json", ".png"))
    text = report.render(doc)
    md_path.write_text(text)
    json_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print("\n" + text, flush=True)
    try:
        from bench import chart
    except ImportError as exc:
        say(f"no chart: {exc} (make bench installs matplotlib into .venv)")
        return 1
    chart.render(doc, png_path)
    say(f"wrote {md_path}, {json_path.name}, {png_path.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if args:  # every knob is an environment variable: refuse before anything starts
        print(f"bench: no arguments (got {' '.join(args)}); the knobs are BENCH_* "
              "environment variables, see python -m bench --help", file=sys.stderr)
        return 2
    say = Progress()
    try:
        s = Settings.from_env(dict(os.environ))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench: run as root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y-%m-%dT%H%MZ")
    chosen = [c for c in SYSTEMS if c.name in s.systems]
    needed = list(install.COMMON) + [p for c in chosen for p in c.programs]
    problem = install.ensure(needed, say)
    if problem:
        say(f"install: {problem}")
    if install.missing(list(install.COMMON)):
        print(f"bench: cannot measure without {', '.join(install.missing(list(install.COMMON)))}",
              file=sys.stderr)
        return 1
    s.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dtlsvpn-bench."))
    work.chmod(0o755)
    topo, procs = Topology(), Processes()
    ctx = Context(topo, work, procs, process_limit(s), say)
    say(f"{s.rounds} rounds × {s.seconds:g} s, systems {', '.join(s.systems)}; work {work}")
    try:
        say(f"namespaces {topo.server} and {topo.client}")
        topo.create()
        runs, idle, core = measure(s, ctx, say, s.out, stamp)
    except BenchError as exc:
        print(f"bench: the harness failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        topo.delete()
        if s.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    extra = {"iperf3": iperf_version(), "python": sys.version.split()[0]}
    doc = document.build(started=started, duration=time.monotonic() - say.t0,
                         settings=s.as_dict(), runs=runs, extra_versions=extra, idle=idle,
                         core=core)
    return write_results(doc, s.out, stamp, say)
