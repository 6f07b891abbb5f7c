"""Hub and spoke: two branch gateways dial one central server, a host behind each branch.

Topology (testing.md address plan; every name carries the test's random suffix)::

    host A (dvha)        branch A (dvga)          hub (dvhub)           branch B (dvgb)        host B (dvhb)
    100.64.21.10 ─────── 100.64.21.1                                    100.64.22.1 ────────── 100.64.22.10
    fd00:21::10          fd00:21::1                                     fd00:22::1             fd00:22::10
                         198.18.10.2 ──────────── 198.18.10.1 (listens)
                                                  198.18.11.1 ───────── 198.18.11.2
                         dvc0 100.64.0.2          dvs0 100.64.0.1       dvc0 100.64.0.3
                              fd00::2                  fd00::1               fd00::3

Both branches are dtlsvpn *clients* of the hub (PSK, one identity each).  The hub's two
``[Peer]``s carry each branch's tunnel address and LAN; each branch's one ``[Peer]`` (the
hub) carries the tunnel subnet and the other branch's LAN.  A packet from host A to host B
goes branch A → hub daemon → the hub's kernel (forwarding, back into the TUN) → the hub
daemon's longest-prefix route → branch B.  Checked: host A and host B ping each other
(IPv4 and IPv6), a file host A → host B (and a smaller one back) keeps its SHA-256,
``dtlsvpn status`` on the hub shows both peers established with packets and bytes counted
on each; with forwarding off on the hub the daemon warns at start-up (both sysctls, both
branches' LANs named), the branches still reach the hub and the hosts lose every packet.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tests.netns.harness import (
    PYTHON,
    REPO,
    TOOLS,
    Daemon,
    RunDaemon,
    Topology,
    secret_file,
)
from tests.support.conf import TunnelConf
from tests.util import ProcessGroup, require_tools, wait_until

ENV = {"PYTHONPATH": str(REPO)}
HUB_UNDERLAY = "198.18.10.1"
TUNNEL = {"hub": ("100.64.0.1/24", "fd00::1/64"), "a": ("100.64.0.2/24", "fd00::2/64"),
          "b": ("100.64.0.3/24", "fd00::3/64")}
LAN = {"a": ("100.64.21.0/24", "fd00:21::/64"), "b": ("100.64.22.0/24", "fd00:22::/64")}
HOST4 = {"a": "100.64.21.10", "b": "100.64.22.10"}
HOST6 = {"a": "fd00:21::10", "b": "fd00:22::10"}
WARNING = "lie beyond the tunnel (site-to-site), but"


@dataclass
class Hub:
    host: dict[str, str]  # branch -> host namespace
    gw: dict[str, str]  # branch -> gateway namespace
    hub_ns: str
    hub: Daemon
    branch: dict[str, Daemon]


def _sysctl(topo: Topology, ns: str, value: int) -> None:
    for name in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        res = topo.exec(ns, ["sysctl", "-qw", f"{name}={value}"])
        assert res.returncode == 0, res.stderr


def _configs(workdir: Path) -> dict[str, Path]:
    psk = {b: secret_file(workdir / f"psk-{b}.hex", os.urandom(32).hex() + "\n") for b in "ab"}
    hub = TunnelConf(
        comment="hub", role="server", listen_address=f"{HUB_UNDERLAY}:4433", device="dvs0",
        address=TUNNEL["hub"], status_socket=workdir / "hub.sock",
        ticket_store=workdir / "hub-state", log_level="debug",
    )
    for b in "ab":
        v4, v6 = (t.split("/")[0] for t in TUNNEL[b])
        hub.peer(name=f"branch-{b}", psk_identity=f"branch-{b}", psk_file=psk[b],
                 allowed_ips=(f"{v4}/32", f"{v6}/128", *LAN[b]))
    out = {"hub": hub.write(workdir / "hub.conf")}
    for b, other in (("a", "b"), ("b", "a")):
        out[b] = TunnelConf(
            comment=f"branch {b}", role="client", device="dvc0", address=TUNNEL[b],
            status_socket=workdir / f"branch-{b}.sock", ticket_store=workdir / f"tickets-{b}",
            log_level="debug",
        ).peer(name="hub", endpoint=f"{HUB_UNDERLAY}:4433", psk_identity=f"branch-{b}",
               psk_file=psk[b], allowed_ips=("100.64.0.0/24", "fd00::/64", *LAN[other])
               ).write(workdir / f"branch-{b}.conf")
    return out


def build_hub(topo: Topology, run_daemon: RunDaemon, workdir: Path, *,
              hub_forwarding: bool = True) -> Hub:
    require_tools("sysctl")
    hub_ns = topo.netns("hub")
    gw = {b: topo.netns(f"g{b}") for b in "ab"}
    host = {b: topo.netns(f"h{b}") for b in "ab"}
    topo.veth(hub_ns, [f"{HUB_UNDERLAY}/24"], gw["a"], ["198.18.10.2/24"])
    topo.veth(hub_ns, ["198.18.11.1/24"], gw["b"], ["198.18.11.2/24"])
    # Branch B reaches the hub's one listening address across the hub's other link.
    res = topo.exec(gw["b"], ["ip", "route", "add", "198.18.10.0/24", "via", "198.18.11.1"])
    assert res.returncode == 0, res.stderr
    for b, n in (("a", 21), ("b", 22)):
        topo.veth(gw[b], [f"100.64.{n}.1/24", f"fd00:{n}::1/64"],
                  host[b], [f"100.64.{n}.10/24", f"fd00:{n}::10/64"])
        for argv in (["ip", "route", "add", "100.64.0.0/10", "via", f"100.64.{n}.1"],
                     ["ip", "-6", "route", "add", "fd00::/8", "via", f"fd00:{n}::1"]):
            res = topo.exec(host[b], argv)
            assert res.returncode == 0, res.stderr
        _sysctl(topo, gw[b], 1)
        # Resolve each LAN's neighbours first (as test_fulltunnel does): on a new veth the
        # first IPv6 neighbour solicitation is often lost and retried 1 s later, which
        # made the first echo through the hub miss its 2 s deadline now and then.
        for addr in (f"100.64.{n}.10", f"fd00:{n}::10"):
            rc, out = _ping(topo, gw[b], addr, count=1, timeout=5)
            assert rc == 0, f"gateway {b} -> {addr} on its own LAN: {out}"
    _sysctl(topo, hub_ns, 1 if hub_forwarding else 0)

    confs = _configs(workdir)
    hub = run_daemon(hub_ns, confs["hub"], workdir / "hub.sock")
    hub.wait_ready()
    branch = {b: run_daemon(gw[b], confs[b], workdir / f"branch-{b}.sock") for b in "ab"}
    for b, daemon in branch.items():
        daemon.wait_ready()
        assert daemon.wait_connected(), f"branch {b} not connected\n{daemon.proc.describe()}"
    return Hub(host, gw, hub_ns, hub, branch)


def _ping(topo: Topology, ns: str, addr: str, count: int = 3, timeout: float = 2.0
          ) -> tuple[int, str]:
    res = topo.exec(ns, [*TOOLS, "ping", addr, "--count", str(count), "--timeout",
                         str(timeout)], timeout=30)
    return res.returncode, res.stdout + res.stderr


def _copy(topo: Topology, procs: ProcessGroup, sites: Hub, src: str, dst: str, size: int,
          workdir: Path, port: int) -> None:
    blob = workdir / f"blob-{src}{dst}"
    blob.write_bytes(os.urandom(size))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    addr = HOST4[dst]
    rx = procs.start(["ip", "netns", "exec", sites.host[dst], *TOOLS, "recv", addr, str(port)],
                     name=f"recv-{dst}", timeout=90, env=ENV, stdin_pipe=False)
    assert rx.wait_for("listening", timeout=15), rx.describe()
    res = topo.exec(sites.host[src], [*TOOLS, "send", addr, str(port), str(blob)], timeout=80)
    assert res.returncode == 0, res.stderr
    assert rx.wait(30) == 0, rx.describe()
    line = rx.stdout().strip().splitlines()[-1]
    print(f"copy host {src} -> host {dst} ({size} bytes) through the hub: {line}")
    assert f"bytes={size} sha256={want}" in line, line


def _hub_status(topo: Topology, sites: Hub) -> dict[str, dict]:
    """``dtlsvpn status --json`` run on the hub, as an operator would; peers by name."""
    res = topo.exec(sites.hub_ns, [PYTHON, "-m", "dtlsvpn", "status", "--json",
                                   "--socket", str(sites.hub.status_socket)])
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["errors"] == [] and len(doc["tunnels"]) == 1, doc
    return {p["name"]: p for p in doc["tunnels"][0]["peers"]}


def test_hosts_behind_two_branches_reach_each_other_through_the_hub(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup
) -> None:
    sites = build_hub(topo, run_daemon, tmp_path)
    for src, dst in (("a", "b"), ("b", "a")):
        for addr in (HOST4[dst], HOST6[dst]):
            rc, out = _ping(topo, sites.host[src], addr)
            assert rc == 0 and "3 received" in out, (
                f"host {src} -> {addr}: {out}\n{sites.hub.proc.describe()}")
    size = 8 * 1024 * 1024
    _copy(topo, procs, sites, "a", "b", size, tmp_path, 5001)
    _copy(topo, procs, sites, "b", "a", 1024 * 1024, tmp_path, 5002)

    summary = topo.exec(sites.hub_ns, [PYTHON, "-m", "dtlsvpn", "status",
                                       "--socket", str(sites.hub.status_socket)])
    print(summary.stdout)
    peers = _hub_status(topo, sites)
    assert set(peers) == {"branch-a", "branch-b"}, peers
    for name, peer in peers.items():
        print(f"hub status {name}: state={peer['state']} endpoint={peer['endpoint']} "
              f"rx_packets={peer['rx_packets']} tx_packets={peer['tx_packets']} "
              f"rx_bytes={peer['rx_bytes']} tx_bytes={peer['tx_bytes']}")
        assert peer["state"] == "established", peer
        # 6 echo requests and 6 replies each way at least, plus the copies' segments.
        assert peer["rx_packets"] >= 12 and peer["tx_packets"] >= 12, peer
    assert peers["branch-a"]["endpoint"].startswith("198.18.10.2:"), peers["branch-a"]
    assert peers["branch-b"]["endpoint"].startswith("198.18.11.2:"), peers["branch-b"]
    # The 8 MiB from host A came in from branch A and went out to branch B (inner bytes).
    assert peers["branch-a"]["rx_bytes"] >= size, peers["branch-a"]
    assert peers["branch-b"]["tx_bytes"] >= size, peers["branch-b"]
    # Forwarding is on everywhere: nobody warns about it.
    for daemon in (sites.hub, *sites.branch.values()):
        assert WARNING not in daemon.proc.stderr(), daemon.proc.describe()


def test_hub_with_forwarding_off_warns_and_hosts_lose_packets(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path
) -> None:
    sites = build_hub(topo, run_daemon, tmp_path, hub_forwarding=False)
    assert wait_until(lambda: WARNING in sites.hub.proc.stderr(), timeout=5), (
        sites.hub.proc.describe())
    lines = [x for x in sites.hub.proc.stderr().splitlines() if WARNING in x]
    print("\n".join(lines))
    for sysctl, nets in (("net.ipv4.ip_forward is 0", (LAN["a"][0], LAN["b"][0])),
                         ("net.ipv6.conf.all.forwarding is 0", (LAN["a"][1], LAN["b"][1]))):
        (line,) = [x for x in lines if sysctl in x]
        assert str(sites.hub.conf) in line, line
        for net, peer in zip(nets, ("branch-a", "branch-b"), strict=True):
            assert f"{net} ([Peer] {peer})" in line, line
        assert f"sysctl -w {sysctl.split()[0]}=1" in line, line
    # The branches forward: they do not warn.
    for daemon in sites.branch.values():
        assert WARNING not in daemon.proc.stderr(), daemon.proc.describe()
    # What the warning predicts: each branch reaches the hub, the hosts lose everything.
    for b in "ab":
        rc, out = _ping(topo, sites.gw[b], "100.64.0.1", count=2)
        assert rc == 0, out
    rc, out = _ping(topo, sites.host["a"], HOST4["b"], count=2)
    assert rc != 0 and "0 received" in out, out
    rc, out = _ping(topo, sites.host["b"], HOST6["a"], count=2)
    assert rc != 0 and "0 received" in out, out
    # The hub's daemon did take host A's echoes from branch A (with its gateway's two):
    # the hub's kernel is what dropped them.
    peers = _hub_status(topo, sites)
    assert peers["branch-a"]["rx_packets"] >= 2 + 2, peers["branch-a"]
