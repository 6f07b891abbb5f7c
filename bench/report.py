"""The Markdown report of one run, rendered from its result document (bench/document.py).

Sections: the machine and settings; the side-by-side table (median and min–max over
the rounds); the ratios against the best peer of the run and the bare link; issue
10's goals; the many-idle-peers case; the core alone (handshakes, memory, bulk
transfer, profile); notes, versions and errors.  Nothing is computed here beyond
formatting.
"""

from __future__ import annotations

from typing import Any

from bench.stats import METRICS, Summary, fmt_num, fmt_ratio, fmt_summary, summarise

TABLE_COLUMNS = [("c2s_mbit", 0), ("s2c_mbit", 0), ("p4_mbit", 0), ("rtt_idle_ms", 3),
                 ("rtt_load_ms", 3), ("cpu_c2s", 2), ("cpu_s2c", 2)]
RATIO_COLUMNS = ["c2s_mbit", "s2c_mbit", "p4_mbit", "rtt_idle_ms", "rtt_load_ms", "cpu_c2s",
                 "cpu_s2c"]


def _summary(entry: dict[str, Any], metric: str) -> Summary | None:
    s = entry["metrics"][metric]["summary"]
    return Summary(s["median"], s["min"], s["max"], s["n"]) if s else None


def _cell(text: str, limit: int) -> str:
    """``text`` fit for one Markdown table cell."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _header(doc: dict[str, Any]) -> list[str]:
    m, g, st = doc["machine"], doc["git"], doc["settings"]
    dirty = " (with uncommitted changes)" if g.get("dirty") else ""
    minutes, seconds = divmod(int(doc["duration_seconds"]), 60)
    return [
        f"# dtlsvpn bench, {doc['date']}", "",
        f"Machine: {m['nproc']} × {m['cpu']}, kernel {m['kernel']}, Python {m['python']}, "
        f"cryptography {m['cryptography']}.  ",
        f"Code: commit `{g['commit'][:12]}` on `{g['branch']}`{dirty}.  ",
        f"Run: {st['rounds']} round{'s' if st['rounds'] != 1 else ''} × {st['seconds']:g} s "
        f"per iperf3 test, systems "
        f"interleaved round by round, median (min–max) over the rounds; took "
        f"{minutes} min {seconds:02d} s.", ""]


def _main_table(doc: dict[str, Any]) -> list[str]:
    head = ["system", "version"] + [f"{METRICS[m][0]} ({METRICS[m][1]})"
                                    for m, _ in TABLE_COLUMNS]
    head.append("tunnel MTU")
    lines = ["## Throughput, latency, CPU", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in doc["systems"]:
        if e["error"]:
            lines.append(f"| {e['label']} | {_cell(e['version'], 60)} | MISSING: "
                         f"{_cell(e['error'], 200)} |" + " |" * (len(head) - 3))
            continue
        cells = [e["label"], _cell(e["version"], 60)]
        cells += [fmt_summary(_summary(e, m), d) for m, d in TABLE_COLUMNS]
        mtus = sorted(set(e["mtu"]))
        cells.append(", ".join(mtus) if mtus else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "CPU: utime + stime of the system's processes at both ends over the iperf3 "
              "run, per gigabit carried (= cores busy per Gbit/s). RTT: median of the "
              "per-packet ping times; under load = while the c→s single stream runs. MTU: "
              "client/server tun when they differ.", ""]
    return lines


def _ratio_table(doc: dict[str, Any]) -> list[str]:
    best = doc["best_peer"]
    head = ["system"]
    for m in RATIO_COLUMNS:
        b = best.get(m)
        who = next((e["label"] for e in doc["systems"] if b and e["name"] == b["system"]), "–")
        head.append(f"{METRICS[m][0]} × best peer ({who})")
    head += ["c→s × bare", "s→c × bare", "c→s × OpenVPN", "s→c × OpenVPN"]
    lines = ["## Ratios", "",
             "Against the best peer of this run per column (OpenVPN, wireguard-go, ocserv; "
             "named in the header), the bare veth and OpenVPN. Throughput: above 1 is "
             "faster. RTT and CPU: below 1 is better.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in doc["systems"]:
        if e["error"] or e["name"] == "bare":
            continue
        r = doc["ratios"][e["name"]]
        cells = [e["label"]] + [fmt_ratio(r[m]["best_peer"]) for m in RATIO_COLUMNS]
        cells += [fmt_ratio(r["c2s_mbit"]["bare"]), fmt_ratio(r["s2c_mbit"]["bare"]),
                  fmt_ratio(r["c2s_mbit"]["openvpn"]), fmt_ratio(r["s2c_mbit"]["openvpn"])]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _goals(doc: dict[str, Any]) -> list[str]:
    lines = ["## Issue 10 goals (dtlsvpn, this run)", ""]
    for g in doc["goals"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        lines.append(f"- {g['goal']}: {fmt_ratio(g['ratio'])} — {mark}")
    return [*lines, ""]


def _round_ratios(idle: dict[str, Any]) -> str:
    ratios = [fmt_ratio(r) for r in idle.get("ratio_rounds", [])]
    return ", ".join(ratios) if ratios else "–"


def _idle(doc: dict[str, Any]) -> list[str]:
    idle = doc.get("idle_peers")
    lines = ["## Many idle peers", ""]
    if not idle:
        return [*lines, "Not run.", ""]
    if idle.get("error"):
        return [*lines, f"Failed: {idle['error']}", ""]

    def s(key: str) -> str:
        d = idle.get(key)
        return fmt_summary(Summary(d["median"], d["min"], d["max"], d["n"])) if d else "–"

    n, req = idle.get("established", 0), idle["requested"]
    failed = idle.get("setup_progress", {}).get("failed", 0)
    short = "" if n >= req else (f" of {req} ({failed} failed, the rest not up within the "
                                 f"set-up budget)")
    cpu_wo, cpu_w = summarise(idle.get("cpu_without", [])), summarise(idle.get("cpu_with", []))
    doc_nproc = doc.get("machine", {}).get("nproc", "?")
    lines += [
        "| idle peers established | set-up | busy c→s without (Mbit/s) | with (Mbit/s) | "
        "ratio | CPU without (cores per Gbit/s) | CPU with | server CPU, idle peers only |",
        "|---|---|---|---|---|---|---|---|",
        f"| {n}{short} | {idle.get('setup_seconds', 0):.1f} s | {s('without_summary')} | "
        f"{s('with_summary')} | {fmt_ratio(idle.get('ratio'))} | {fmt_summary(cpu_wo, 2)} | "
        f"{fmt_summary(cpu_w, 2)} | {100 * idle.get('server_idle_cores', 0):.0f} % of a core |",
        "",
        "CPU per Gbit/s is of the server and the busy client together. Each round's "
        f"own ratio (with / without, seconds apart): {_round_ratios(idle)}.", "",
        f"The server ran {req} configured PSK peers plus the busy certificate peer "
        f"(started in {idle.get('server_start_seconds', 0):.1f} s); the server's status "
        f"showed {idle.get('server_view_established')} peers established. The idle "
        f"clients live in one process of the bench on this same machine (it used "
        f"{100 * idle.get('idle_clients_cores', 0):.0f} % of a core with no data flowing "
        f"and {100 * idle.get('idle_clients_busy_cores', 0):.0f} % during the busy runs, "
        f"beside the server and the busy client on {doc_nproc} cores). "
        f"Without and with alternate round by round (odd rounds without first, even "
        f"rounds with first): the idle peers come up before each \"with\" run and close "
        f"(close_notify) after it.", ""]
    return lines


def _core(doc: dict[str, Any]) -> list[str]:
    core = doc.get("core")
    lines = ["## The core alone (in process, one core)", ""]
    if not core:
        return [*lines, "Not run.", ""]
    if core.get("error"):
        return [*lines, f"Failed: {core['error']}", ""]
    lines += ["| handshake | per second, server | server ms each | client ms each | n |",
              "|---|---|---|---|---|"]
    for h in core["handshakes"]:
        lines.append(f"| {h['label']} | {fmt_num(h['per_second_one_core'])} | "
                     f"{h['server_ms_each']:.3f} | {h['client_ms_each']:.3f} | {h['count']} |")
    mem, bulk = core["memory"], core["bulk"]
    lines += [
        "", "Server CPU only (thread time), through the cookie exchange; the client's cost "
        "is shown beside.", "",
        f"Memory per idle association ({mem['associations']} established, "
        f"{mem['suite']}): server side {mem['server_heap_bytes'] / 1024:.1f} KiB of Python "
        f"heap (tracemalloc), {mem['server_rss_bytes'] / 1024:.1f} KiB of RSS growth; "
        f"client side {mem['client_heap_bytes'] / 1024:.1f} KiB heap.", "",
        f"Bulk transfer through the core (no sockets): {fmt_num(bulk['packets_per_second'])} "
        f"packets/s of {bulk['packet_bytes']} bytes = {fmt_num(bulk['mbit_s_one_core'])} "
        f"Mbit/s on one core, {bulk['us_per_packet']:.2f} µs per packet (both ends, "
        f"with one ack back per two packets).", ""]
    if core.get("openssl_aes128gcm_mbit_s"):
        lines += [f"Crypto ceiling: `openssl speed -evp aes-128-gcm` seals "
                  f"{fmt_num(core['openssl_aes128gcm_mbit_s'])} Mbit/s of 1400-byte blocks "
                  f"on one core.", ""]
    prof = core.get("profile")
    if prof:
        lines += [f"Profile (`{prof['file']}`), top functions by own time:", "",
                  "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        for row in prof["top_tottime"]:
            lines.append(f"| `{row['function']}` | {row['calls']} | {row['tottime']:.3f} | "
                         f"{row['cumtime']:.3f} |")
        lines.append("")
    return lines


def _notes(doc: dict[str, Any]) -> list[str]:
    lines = ["## Notes", ""]
    for e in doc["systems"]:
        bits = [f"version {e['version']}"]
        if e["note"]:
            bits.append(e["note"])
        if e["start_seconds"] is not None:
            bits.append(f"up in {e['start_seconds']:.1f} s")
        others = summarise(e.get("others_cores", []))
        if others is not None:
            bits.append(f"other CPU during its iperf3 runs (iperf3 itself and the rest of the "
                        f"machine) {fmt_summary(others, 2)} cores")
        drops = (e.get("final") or {}).get("drops")
        if drops:
            bits.append("drops after the rounds: " + "; ".join(
                f"{side} {', '.join(f'{k}={v}' for k, v in d.items()) or 'none'}"
                for side, d in drops.items()))
        lines.append(f"- {e['label']}: {'; '.join(bits)}")
        if e["error"]:
            lines.append(f"  - could not start: {' '.join(e['error'].split())}")
        lines += [f"  - error: {err}" for err in e["errors"]]
    for name, version in doc["versions"].items():
        if name not in {e["name"] for e in doc["systems"]}:
            lines.append(f"- {name}: {version}")
    return [*lines, ""]


def render(doc: dict[str, Any]) -> str:
    parts = (_header(doc) + _main_table(doc) + _ratio_table(doc) + _goals(doc) + _idle(doc)
             + _core(doc) + _notes(doc))
    return "\n".join(parts)
