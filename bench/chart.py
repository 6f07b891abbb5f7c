"""The PNG chart of one run, from its result document (matplotlib, Agg backend).

Six panels: single- and four-stream throughput (bars = medians, whiskers = min–max
over the rounds; the bare veth is written in the title, its bars would dwarf the
rest), RTT idle and under load, CPU cores per Gbit/s, the tunnel MTU, handshakes per
second on one core, and the busy peer with and without the idle peers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch

COLORS = {"bare": "#9e9e9e", "dtlsvpn": "#d62728", "openvpn": "#1f77b4",
          "wireguard": "#2ca02c", "ocserv": "#9467bd", "floor": "#ff7f0e"}


def _stat(entry: dict[str, Any], metric: str) -> tuple[float, float, float] | None:
    s = entry["metrics"][metric]["summary"]
    return (s["median"], s["median"] - s["min"], s["max"] - s["median"]) if s else None


def _grouped(ax: Axes, systems: list[dict[str, Any]], metrics: list[tuple[str, str]],
             ylabel: str, digits: int) -> None:
    if not systems:
        ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
        ax.set_xticks([])
        return
    width = 0.8 / max(1, len(systems))
    top = 0.0
    for i, e in enumerate(systems):
        xs, ys, lo, hi = [], [], [], []
        for j, (metric, _label) in enumerate(metrics):
            st = _stat(e, metric)
            if st is None:
                continue
            xs.append(j + (i - (len(systems) - 1) / 2) * width)
            ys.append(st[0])
            lo.append(st[1])
            hi.append(st[2])
            top = max(top, st[0] + st[2])
        bars = ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=3,
                      color=COLORS.get(e["name"], "#555555"), label=e["label"])
        for bar, y, h in zip(bars, ys, hi, strict=True):
            ax.annotate(f"{y:.{digits}f}", (bar.get_x() + bar.get_width() / 2, y + h),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_xticks(range(len(metrics)), [label for _m, label in metrics])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, (top or 1) * 1.15)
    ax.grid(axis="y", alpha=0.3)


def _throughput(ax: Axes, doc: dict[str, Any]) -> None:
    tunnels = [e for e in doc["systems"] if not e["error"] and e["name"] != "bare"]
    _grouped(ax, tunnels, [("c2s_mbit", "c→s 1 stream"), ("s2c_mbit", "s→c 1 stream"),
                           ("p4_mbit", "c→s 4 streams")], "Mbit/s (higher is better)", 0)
    bare = next((e for e in doc["systems"] if e["name"] == "bare" and not e["error"]), None)
    title = "TCP throughput through the tunnel"
    if bare is not None:
        st = _stat(bare, "c2s_mbit")
        if st is not None:
            title += f"\n(bare veth: {st[0]:,.0f} Mbit/s c→s)"
    ax.set_title(title, fontsize=10)


def _latency(ax: Axes, doc: dict[str, Any]) -> None:
    systems = [e for e in doc["systems"] if not e["error"]]
    _grouped(ax, systems, [("rtt_idle_ms", "idle"), ("rtt_load_ms", "under load")],
             "ms (lower is better)", 2)
    ax.set_title("ping RTT through the tunnel (median)", fontsize=10)


def _cpu(ax: Axes, doc: dict[str, Any]) -> None:
    tunnels = [e for e in doc["systems"] if not e["error"] and e["name"] != "bare"]
    _grouped(ax, tunnels, [("cpu_c2s", "c→s"), ("cpu_s2c", "s→c"), ("cpu_p4", "4 streams")],
             "cores per Gbit/s (lower is better)", 2)
    ax.set_title("CPU of the VPN processes, both ends", fontsize=10)


def _mtu(ax: Axes, doc: dict[str, Any]) -> None:
    tunnels = [e for e in doc["systems"] if not e["error"] and e["mtu"]]
    if not tunnels:
        ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
        ax.set_yticks([])
    names = [e["label"] for e in tunnels]
    values = [min(int(part) for m in e["mtu"] for part in m.split("/") if part.isdigit())
              for e in tunnels]
    bars = ax.barh(names, values, color=[COLORS.get(e["name"], "#555") for e in tunnels])
    for bar, e in zip(bars, tunnels, strict=True):
        ax.annotate(", ".join(sorted(set(e["mtu"]))), (bar.get_width(), bar.get_y() + 0.4),
                    fontsize=8, xytext=(3, 0), textcoords="offset points", va="center")
    ax.set_xlim(0, 1800)
    ax.set_title("tunnel MTU (client/server)", fontsize=10)
    ax.invert_yaxis()


def _handshakes(ax: Axes, doc: dict[str, Any]) -> None:
    core = doc.get("core") or {}
    rows = core.get("handshakes") or []
    ax.set_title("dtlsvpn handshakes per second, one server core", fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
        return
    labels = [r["label"].split(" (")[0] for r in rows]
    values = [r["per_second_one_core"] for r in rows]
    bars = ax.barh(labels, values, color="#d62728")
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(f"{v:,.0f}/s", (bar.get_width(), bar.get_y() + 0.4), fontsize=8,
                    xytext=(3, 0), textcoords="offset points", va="center")
    ax.set_xlim(0, max(values) * 1.3)
    ax.invert_yaxis()


def _idle(ax: Axes, doc: dict[str, Any]) -> None:
    idle = doc.get("idle_peers") or {}
    n = idle.get("established")
    ax.set_title(f"dtlsvpn busy peer, c→s, with {n if n is not None else 'N'} idle peers",
                 fontsize=10)
    w, wo = idle.get("with_summary"), idle.get("without_summary")
    if not (w and wo):
        ax.text(0.5, 0.5, idle.get("error", "not run"), ha="center", transform=ax.transAxes,
                wrap=True)
        return
    labels = ["no idle peers", f"{n} idle peers"]
    meds = [wo["median"], w["median"]]
    err = [[wo["median"] - wo["min"], w["median"] - w["min"]],
           [wo["max"] - wo["median"], w["max"] - w["median"]]]
    ax.bar(labels, meds, yerr=err, capsize=4, color=["#d62728", "#f4a3a3"])
    ax.set_ylabel("Mbit/s")
    ax.set_ylim(0, max(wo["max"], w["max"]) * 1.2)
    ratio = idle.get("ratio")
    if ratio is not None:
        ax.annotate(f"ratio {ratio:.2f}×", (1, w["max"]), ha="center", va="bottom",
                    xytext=(0, 4), textcoords="offset points", fontsize=9)
    for x, key in ((0, "cpu_without"), (1, "cpu_with")):
        cpu = [v for v in idle.get(key, []) if v is not None]
        if cpu:
            ax.annotate(f"{sorted(cpu)[len(cpu) // 2]:.2f} cores per Gbit/s", (x, 0),
                        ha="center", va="bottom", xytext=(0, 6), textcoords="offset points",
                        fontsize=8, color="white" if x == 0 else "black")
    ax.grid(axis="y", alpha=0.3)


def render(doc: dict[str, Any], out: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    _throughput(axes[0][0], doc)
    _latency(axes[0][1], doc)
    _cpu(axes[0][2], doc)
    _mtu(axes[1][0], doc)
    _handshakes(axes[1][1], doc)
    _idle(axes[1][2], doc)
    m, st = doc["machine"], doc["settings"]
    fig.suptitle(f"dtlsvpn bench {doc['date']} — {m['nproc']} × {m['cpu']}, kernel "
                 f"{m['kernel']} — commit {doc['git']['commit'][:10]} — {st['rounds']} rounds "
                 f"× {st['seconds']:g} s, median and min–max", fontsize=11)
    shown = [e for e in doc["systems"] if not e["error"]]
    fig.legend(handles=[Patch(color=COLORS.get(e["name"], "#555555"), label=e["label"])
                        for e in shown], loc="upper center", ncol=max(1, len(shown)),
               bbox_to_anchor=(0.5, 0.965), frameon=False, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=110)
    plt.close(fig)
