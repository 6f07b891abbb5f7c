"""The loads: iperf3 TCP runs and ping, each bounded, and the parsers of their output.

iperf3: a one-off server (``-s -1``) in the server namespace per run, the client in
the client namespace with ``-t SECONDS -J``; ``-R`` reverses the direction
(server→client) and ``-P 4`` runs four streams.  The figure is the receiver's
``end.sum_received``.  ping: per-packet RTTs (``time=`` lines) so a run's median and
90th percentile are known, not only ping's mean.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.netns import Topology
from bench.procs import BenchError, Processes, cpu_seconds, cpu_used, machine_busy, poll, run

IPERF_PORT = 5201
_TIME_RE = re.compile(r"time[=<]([0-9.]+) ms")
_LOSS_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class Throughput:
    mbit_s: float
    bytes: int
    retransmits: int | None
    cpu_seconds: float  # of the tunnel's processes, both ends, over the run
    others_cores: float  # cores busy with anything else meanwhile (iperf3, other users)

    @property
    def cores_per_gbit(self) -> float | None:
        """CPU seconds per gigabit carried: cores needed per Gbit/s."""
        gbit = self.bytes * 8 / 1e9
        return self.cpu_seconds / gbit if gbit > 0 and self.cpu_seconds > 0 else None


@dataclass
class Rtt:
    median_ms: float
    p90_ms: float
    sent: int
    received: int


def parse_iperf(text: str) -> tuple[float, int, int | None]:
    """(Mbit/s, bytes, retransmits) from ``iperf3 -J`` output; BenchError on its error."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON: {text.strip()[-200:]!r}") from None
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    end = data.get("end", {})
    received = end.get("sum_received")
    if not received:
        raise BenchError("iperf3: no sum_received in its JSON")
    retransmits = end.get("sum_sent", {}).get("retransmits")
    return received["bits_per_second"] / 1e6, int(received["bytes"]), retransmits


def parse_ping(text: str) -> Rtt:
    """The RTTs of ``ping`` output (without -q); BenchError if no reply came back."""
    times = sorted(float(t) for t in _TIME_RE.findall(text))
    counts = _LOSS_RE.search(text)
    sent, received = (int(counts.group(1)), int(counts.group(2))) if counts else (0, len(times))
    if not times:
        raise BenchError(f"ping: no reply ({sent} sent)")
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return Rtt(statistics.median(times), p90, sent, received)


class Loads:
    """Runs the loads between the two namespaces of ``topo``."""

    def __init__(self, topo: Topology, procs: Processes, work: Path) -> None:
        self.topo = topo
        self.procs = procs
        self.work = work
        self._runs = 0

    def ping(self, target: str, count: int, interval: float) -> Rtt:
        out = self.topo.exec(self.topo.client,
                             ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "2",
                              target], timeout=count * interval + 10, check=False)
        return parse_ping(out)

    def reachable(self, target: str, timeout: float = 15) -> bool:
        """A ping gets through within ``timeout`` seconds (WireGuard handshakes on demand)."""
        def once() -> bool:
            try:
                self.ping(target, 1, 0.2)
                return True
            except BenchError:
                return False

        return poll(once, timeout, 0.2)

    def iperf(self, target: str, seconds: float, *, reverse: bool = False, streams: int = 1,
              cpu_pids: list[int] | None = None, ping_during: bool = False
              ) -> tuple[Throughput, Rtt | None]:
        """One bounded iperf3 run towards ``target``; optionally ping through it meanwhile."""
        self._runs += 1
        log = self.work / f"iperf3-server-{self._runs}.log"
        server = self.procs.start("iperf3-server",
                                  ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "--forceflush"],
                                  limit=seconds + 30, ns=self.topo.server, log=log)
        try:
            if not poll(lambda: "listening" in log.read_text() or not server.alive(), 10):
                raise BenchError(f"iperf3 server did not start: {server.log_tail()}")
            argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J",
                    "--connect-timeout", "5000", "-P", str(streams)]
            if reverse:
                argv.append("-R")
            before = cpu_seconds(cpu_pids or [])
            busy_before, t0 = machine_busy(), time.monotonic()
            client = self.procs.start("iperf3-client", argv, limit=seconds + 20,
                                      ns=self.topo.client, stdout=subprocess.PIPE)
            rtt = self._ping_meanwhile(target, seconds) if ping_during else None
            try:
                out, _ = client.popen.communicate(timeout=seconds + 25)
            except subprocess.TimeoutExpired:
                raise BenchError(f"iperf3 client still running {seconds + 25:g} s after "
                                 f"a {seconds:g} s test") from None
            finally:
                self.procs.stop(client)
            after = cpu_seconds(cpu_pids or [])
            busy, wall = machine_busy() - busy_before, time.monotonic() - t0
            mbit, nbytes, retrans = parse_iperf(out)
        finally:
            self.procs.stop(server)
        used = cpu_used(before, after)
        return Throughput(mbit, nbytes, retrans, used, max(0.0, busy - used) / wall), rtt

    def _ping_meanwhile(self, target: str, seconds: float) -> Rtt | None:
        interval = 0.1
        time.sleep(min(0.5, seconds / 4))
        count = max(3, int((seconds - 1.0) / interval))
        try:
            return self.ping(target, count, interval)
        except BenchError:
            return None


def iperf_version() -> str:
    try:
        return run(["iperf3", "--version"], timeout=10, check=False).stdout.splitlines()[0]
    except (BenchError, IndexError):
        return "iperf3 unknown"
