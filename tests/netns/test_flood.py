"""A spoofed-source flood against the real server daemon while a tunnel carries iperf3.

Three namespaces of the test's own: the server and the client (198.18.0.1/.2) and an
attacker joined to the server by its own veth (198.18.1.2).  The attacker owns the whole
of 198.19.0.0/16 (a local route), the server routes that prefix back to it, and
``tests.netns.flood`` sends from random addresses of it through a raw socket, for 10 s
at 10 000 datagrams/s: ClientHellos without a cookie, then random garbage, then
well-formed ``tls12_cid`` records with unknown CIDs.  Meanwhile iperf3 runs through the
PSK tunnel.

Asserted: the server answers at most one HelloVerifyRequest per ClientHello, never a
larger one, nothing at all to garbage or unknown CIDs; its memory does not grow with
the 100 000 source addresses (no per-source state before a cookie); the tunnel is still
established and carries a ping after each flood.  Reported (never asserted, the machine
is shared): iperf3 throughput during each flood as a ratio of the baseline, the replies,
and the daemon's resident memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.netns.harness import (
    PYTHON,
    REPO,
    RunDaemon,
    Topology,
    ip,
    ping,
    psk_pair,
    start_pair,
    two_hosts,
)
from tests.util import ProcessGroup, require_tools

RATE, SECONDS = 10_000, 10
PREFIX = "198.19.0.0"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _iperf(topo: Topology, client_ns: str, seconds: int) -> float:
    res = topo.exec(client_ns, ["timeout", str(seconds + 20), "iperf3", "-c", "100.64.0.1",
                                "-t", str(seconds), "-J"], timeout=seconds + 30)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    return float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"])


def test_flood_spoofed_hellos_garbage_and_unknown_cids(
    topo: Topology, run_daemon: RunDaemon, procs: ProcessGroup, tmp_path: Path
) -> None:
    require_tools("iperf3", "nft")
    server_ns, client_ns = two_hosts(topo)
    attacker = topo.netns("a")
    topo.veth(server_ns, ["198.18.1.1/24"], attacker, ["198.18.1.2/24"])
    ip("-n", server_ns, "route", "add", f"{PREFIX}/16", "via", "198.18.1.2")
    ip("-n", attacker, "route", "add", "198.18.0.0/24", "via", "198.18.1.1")
    ip("-n", attacker, "route", "add", "local", f"{PREFIX}/16", "dev", "lo")
    # The attacker's kernel must not answer the replies with ICMP (that is not the server's
    # doing and would load it).
    nft = topo.exec(attacker, ["nft", "add table inet flood; add chain inet flood out "
                               "{ type filter hook output priority 0; }; add rule inet flood "
                               "out icmp type destination-unreachable drop"])
    assert nft.returncode == 0, nft.stderr
    server_conf, client_conf = psk_pair(tmp_path)
    server, _client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    ping(topo, client_ns, "100.64.0.1")
    procs.start(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-B", "100.64.0.1"],
                name="iperf3-server", timeout=200, stdin_pipe=False)
    time.sleep(0.5)  # iperf3 prints nothing useful to wait on before its first client
    baseline = _iperf(topo, client_ns, 5)
    assert server.pid is not None
    rss0 = _rss_kib(server.pid)
    lines = [f"baseline iperf3 through the tunnel: {baseline / 1e6:.0f} Mbit/s; server RSS "
             f"{rss0} KiB (shared machine: figures under contention)"]
    for kind in ("hello", "garbage", "cid"):
        flood = procs.start(["ip", "netns", "exec", attacker, PYTHON, "-m", "tests.netns.flood",
                             kind, "198.18.0.1", "4433", str(RATE), str(SECONDS), PREFIX],
                            name=f"flood-{kind}", timeout=SECONDS + 30,
                            env={"PYTHONPATH": str(REPO)}, stdin_pipe=False)
        time.sleep(1.0)
        during = _iperf(topo, client_ns, SECONDS - 3)
        assert flood.wait(SECONDS + 20) == 0, flood.describe()
        figures = json.loads(flood.stdout().strip().splitlines()[-1])
        rss = _rss_kib(server.pid)
        lines.append(
            f"{kind}: sent {figures['sent']} in {figures['seconds']} s (largest "
            f"{figures['largest_sent']} B), replies {figures['replies']} (largest "
            f"{figures['largest_reply']} B); iperf3 {during / 1e6:.0f} Mbit/s = "
            f"{during / baseline:.2f} of the baseline; server RSS {rss} KiB "
            f"({rss - rss0:+d} KiB)")
        if kind == "hello":
            assert figures["replies"] <= figures["sent"]
            assert figures["largest_reply"] <= figures["largest_sent"]
        else:
            assert figures["replies"] == 0, figures
        # No state per source: 100 000 spoofed addresses must not cost memory per address
        # (even 100 bytes each would be 10 MB).
        assert rss - rss0 < 8 * 1024, lines[-1]
        peers = server.status()["peers"]
        assert [p["state"] for p in peers] == ["established"], peers
        ping(topo, client_ns, "100.64.0.1")
    print("\n" + "\n".join(lines))
    (tmp_path.parent / "flood-figures.txt").write_text("\n".join(lines) + "\n")
