"""The run's result document: one JSON-ready dict that the Markdown table and the chart
are both rendered from (so they can never disagree).

Invariants: every figure keeps its per-round values next to its summary; ratios
are computed here, once, against the best peer of this same run and the bare link;
a system that could not start is present with its error and no figures.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

from bench.procs import BenchError, run
from bench.rounds import SystemRun
from bench.stats import METRICS, Summary, best, ratio, summarise
from bench.systems.base import REPO

# Issue 10's goals on dtlsvpn's ratios: (metric, reference, comparison, factor, text)
GOALS: list[tuple[str, str, str, float, str]] = [
    ("c2s_mbit", "best_peer", ">=", 1.5, "single stream c→s ≥ 1.5 × the best peer"),
    ("s2c_mbit", "best_peer", ">=", 1.5, "single stream s→c ≥ 1.5 × the best peer"),
    ("c2s_mbit", "openvpn", ">=", 2.0, "single stream c→s ≥ 2 × OpenVPN"),
    ("s2c_mbit", "openvpn", ">=", 2.0, "single stream s→c ≥ 2 × OpenVPN"),
    ("rtt_idle_ms", "openvpn", "<=", 1.0, "RTT idle no worse than OpenVPN's"),
    ("rtt_load_ms", "openvpn", "<=", 1.0, "RTT under load no worse than OpenVPN's"),
    ("cpu_c2s", "best_peer", "<", 1.0, "CPU per Gbit/s c→s below every peer"),
    ("cpu_s2c", "best_peer", "<", 1.0, "CPU per Gbit/s s→c below every peer"),
]
_COMPARE = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}
IDLE_GOAL = 0.9


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    import cryptography

    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
            "loadavg_at_end": os.getloadavg()[0],
            "python": platform.python_version(), "cryptography": cryptography.__version__,
            "hostname": platform.node()}


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return run(["git", "-C", str(REPO), *args], timeout=10).stdout.strip()
        except BenchError:
            return ""

    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def system_entry(r: SystemRun) -> dict[str, Any]:
    metrics = {}
    for metric in METRICS:
        s = summarise(r.values[metric])
        metrics[metric] = {"values": r.values[metric], "summary": s.as_dict() if s else None}
    return {"name": r.system.name, "label": r.system.label, "is_peer": r.system.is_peer,
            "version": r.version, "error": r.error,
            "note": r.tunnel.note if r.tunnel else "", "start_seconds": r.start_seconds,
            "mtu": r.mtus, "errors": r.errors, "metrics": metrics,
            "others_cores": r.others_cores, "final": r.final}


def _summary(entry: dict[str, Any], metric: str) -> Summary | None:
    s = entry["metrics"].get(metric, {}).get("summary") if entry.get("metrics") else None
    return Summary(s["median"], s["min"], s["max"], s["n"]) if s else None


def comparisons(systems: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best peer per metric, ratios per system and metric)."""
    peers = {e["name"]: _summary_map(e) for e in systems if e["is_peer"]}
    by_name = {e["name"]: _summary_map(e) for e in systems}
    best_peer: dict[str, Any] = {}
    for metric, (_label, _unit, higher) in METRICS.items():
        found = best({n: m[metric] for n, m in peers.items()}, higher)
        best_peer[metric] = {"system": found[0], "median": found[1].median} if found else None
    ratios: dict[str, Any] = {}
    for e in systems:
        mine = by_name[e["name"]]
        out: dict[str, Any] = {}
        for metric in METRICS:
            ref = best_peer[metric]
            ref_s = by_name[ref["system"]][metric] if ref else None
            out[metric] = {
                "best_peer": ratio(mine[metric], ref_s),
                "bare": ratio(mine[metric], by_name.get("bare", {}).get(metric)),
                "openvpn": ratio(mine[metric], by_name.get("openvpn", {}).get(metric)),
            }
        ratios[e["name"]] = out
    return best_peer, ratios


def _summary_map(entry: dict[str, Any]) -> dict[str, Summary | None]:
    return {metric: _summary(entry, metric) for metric in METRICS}


def goals(ratios: dict[str, Any], idle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 10's goals, checked on dtlsvpn's medians of this run."""
    mine = ratios.get("dtlsvpn")
    out = []
    for metric, ref, op, factor, text in GOALS:
        r = mine[metric][ref] if mine else None
        met = None if r is None else bool(_COMPARE[op](float(r), factor))
        out.append({"goal": text, "ratio": r, "met": met})
    idle_ratio = idle.get("ratio") if idle else None
    n = idle.get("established") if idle else None
    out.append({"goal": f"busy peer keeps ≥ 90 % with {n if n is not None else 'N'} idle peers",
                "ratio": idle_ratio,
                "met": None if idle_ratio is None else idle_ratio >= IDLE_GOAL})
    return out


def build(*, started: datetime.datetime, duration: float, settings: dict[str, Any],
          runs: list[SystemRun], extra_versions: dict[str, str],
          idle: dict[str, Any] | None, core: dict[str, Any] | None) -> dict[str, Any]:
    systems = [system_entry(r) for r in runs]
    best_peer, ratios = comparisons(systems)
    versions = {e["name"]: e["version"] for e in systems}
    versions.update(extra_versions)
    return {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "started": started.isoformat(),
            "duration_seconds": duration, "machine": machine(), "git": git_info(),
            "settings": settings, "versions": versions, "systems": systems,
            "best_peer": best_peer, "ratios": ratios, "idle_peers": idle, "core": core,
            "goals": goals(ratios, idle)}
