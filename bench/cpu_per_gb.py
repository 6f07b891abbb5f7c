"""CPU seconds per gigabyte through two dtlsvpn daemons, for config variants side by side.

    sudo .venv/bin/python -m bench.cpu_per_gb [--bytes 512M] [--rounds 2]
        [--variant NAME:KEY=VALUE,KEY=VALUE ...]

Two namespaces over veth (198.18.0.1/30 ↔ .2/30), a PSK server and client
(100.64.1.1 ↔ .2), one ``iperf3 -n BYTES`` TCP transfer per direction per variant per
round, the variants interleaved round by round.  Measured per transfer: utime + stime of
both daemons (``/proc/PID/stat``), of both iperf3 ends (their ``-J`` CPU percentages times
the duration), and the whole machine's busy time (``/proc/stat``: everything but idle
and iowait, so it includes other users of the machine: compare variants of one run).
Reported as CPU seconds per GB (10⁹ bytes) and Mbit/s, medians over the rounds.
Default variants: ``TUNOffload = on`` and ``= off``.  Needs root, ``ip`` and ``iperf3``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK  # minus idle, iowait


def conf(work: Path, role: str, keys: dict[str, str], psk: Path) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    if role == "server":
        head = "Role = server\nListenAddress = 198.18.0.1:4433\nAddress = 100.64.1.1/24\n"
        peer = "Name = c\nPSKIdentity = c\nAllowedIPs = 100.64.1.2/32\n"
    else:
        head = "Role = client\nAddress = 100.64.1.2/24\n"
        peer = ("Name = s\nEndpoint = 198.18.0.1:4433\nPSKIdentity = c\n"
                "AllowedIPs = 100.64.1.0/24\n")
    path = work / f"{role}.conf"
    path.write_text(f"[Interface]\n{head}Device = dvg-{role[0]}\nStatusSocket = "
                    f"{work / role}.sock\nTicketStore = {work / role}-state\n"
                    f"LogLevel = warning\n{extra}\n[Peer]\n{peer}PSKFile = {psk}\n")
    path.chmod(0o600)
    return path


class Pair:
    """Server and client daemons of one variant."""

    def __init__(self, work: Path, ns: tuple[str, str], keys: dict[str, str]) -> None:
        psk = work / "psk.hex"
        psk.write_text(secrets.token_hex(32) + "\n")
        psk.chmod(0o600)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.procs = []
        for role, name in (("server", ns[0]), ("client", ns[1])):
            path = conf(work, role, keys, psk)
            log = (work / f"{role}.log").open("w")
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", name, sys.executable, "-m", "dtlsvpn", "run",
                 str(path)], env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(1.0 if role == "server" else 0)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            res = subprocess.run(["ip", "netns", "exec", ns[1], "ping", "-c1", "-W1",
                                  "100.64.1.1"], capture_output=True, check=False)
            if res.returncode == 0:
                return
        self.stop()
        raise RuntimeError(f"tunnel not up; see {work}")

    def pids(self) -> list[int]:
        """The daemons' own PIDs (``ip netns exec`` execs, so the PID is the same)."""
        return [p.pid for p in self.procs]

    def counters(self, work: Path) -> str:
        """The daemons' TUN and UDP offload counters (``dtlsvpn status --json``)."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = []
        for role in ("server", "client"):
            res = subprocess.run([sys.executable, "-m", "dtlsvpn", "status", "--json",
                                  "--socket", str(work / f"{role}.sock")], env=env,
                                 capture_output=True, text=True, timeout=15, check=False)
            try:
                doc = json.loads(res.stdout)
                snap = doc[0] if isinstance(doc, list) else doc
                iface = snap["tunnels"][0]["interface"] if "tunnels" in snap else snap[
                    "interface"]
            except (ValueError, KeyError, IndexError, TypeError):
                out.append(f"{role}: status unreadable")
                continue
            out.append(f"{role}: " + " ".join(f"{k}={v}" for k, v in iface.items()
                                              if k.startswith(("tun_", "udp_g"))))
        return "; ".join(out)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def transfer(ns: tuple[str, str], pair: Pair, size: int, reverse: bool) -> dict[str, float]:
    server = subprocess.Popen(["ip", "netns", "exec", ns[0], "iperf3", "-s", "-1", "-B",
                               "100.64.1.1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    pids = pair.pids()
    before = [proc_cpu(p) for p in pids]
    busy0, t0 = machine_busy(), time.monotonic()
    out = sh("ip", "netns", "exec", ns[1], "iperf3", "-c", "100.64.1.1", "-n", str(size),
             "-J", *(["-R"] if reverse else []))
    wall = time.monotonic() - t0
    busy = machine_busy() - busy0
    daemons = sum(proc_cpu(p) for p in pids) - sum(before)
    server.wait(20)
    end = json.loads(out)["end"]
    seconds = end["sum_received"]["seconds"]
    cpu = end["cpu_utilization_percent"]
    iperf = (cpu["host_total"] + cpu["remote_total"]) / 100 * seconds
    gb = end["sum_received"]["bytes"] / 1e9
    return {"mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
            "daemons_s_per_gb": daemons / gb, "iperf3_s_per_gb": iperf / gb,
            "machine_s_per_gb": busy / gb, "wall_s": wall}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    keys = dict(item.split("=", 1) for item in spec.split(",") if item)
    return name, {k.strip(): v.strip() for k, v in keys.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bytes", default="512M")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", action="append", type=parse_variant)
    args = ap.parse_args()
    size = int(args.bytes[:-1]) * SIZES[args.bytes[-1]] if args.bytes[-1] in SIZES else int(
        args.bytes)
    variants = args.variant or [("tun-offload-on", {"TUNOffload": "on"}),
                                ("tun-offload-off", {"TUNOffload": "off"})]
    suffix = secrets.token_hex(3)
    ns = (f"dvgs-{suffix}", f"dvgc-{suffix}")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for name in ns:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"dvgs{suffix}", "netns", ns[0], "type", "veth", "peer",
           "name", f"dvgc{suffix}", "netns", ns[1])
        for name, dev, addr in ((ns[0], f"dvgs{suffix}", "198.18.0.1/30"),
                                (ns[1], f"dvgc{suffix}", "198.18.0.2/30")):
            sh("ip", "-n", name, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", name, "link", "set", dev, "up")
        for rnd in range(args.rounds):
            for name, keys in variants:
                with tempfile.TemporaryDirectory(prefix="dvg-") as tmp:
                    pair = Pair(Path(tmp), ns, keys)
                    try:
                        for direction, reverse in (("c->s", False), ("s->c", True)):
                            got = transfer(ns, pair, size, reverse)
                            results.setdefault((name, direction), []).append(got)
                            print(f"round {rnd + 1} {name} {direction}: " + ", ".join(
                                f"{k} {v:.2f}" for k, v in got.items()), flush=True)
                        print("  " + pair.counters(Path(tmp)), flush=True)
                    finally:
                        pair.stop()
    finally:
        for name in ns:
            sh("ip", "netns", "del", name, check=False)
    print("\nmedians (CPU seconds per GB; Mbit/s)")
    for (name, direction), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:20s} {direction}: daemons {med['daemons_s_per_gb']:.2f}, iperf3 "
              f"{med['iperf3_s_per_gb']:.2f}, machine {med['machine_s_per_gb']:.2f}, "
              f"{med['mbit_s']:.0f} Mbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
