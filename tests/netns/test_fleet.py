"""Two server daemons behind a balancer namespace running the shipped rules, one address.

Topology (address plan only)::

    c1..c4 --- 198.18.1k.0/24 ---+
                                 b (balancer: `dtlsvpn fleet-rules` nft + routes, forwarding)
    s1 (198.18.1.2) --- 198.18.1.0/24 ---+--- 198.18.2.0/24 --- s2 (198.18.2.2)

Both servers have the public address 198.18.0.1 on ``lo`` and listen on 198.18.0.1:4433
with ServerId 1 and 2, one fleet secret (obfuscated CIDs) and one ticket-key file (s1
writes it, s2 reads it); both have tunnel address 100.64.100.1 and the same four [Peer]s
(client certificates c1..c4).  Each client namespace has a one-port ephemeral range, so
its 5-tuple, and so the balancer's hash, is the same on every dial: the run is the same
every time.

Asserted, as a user would check it:
- the clients spread over both servers and ping 100.64.100.1 through them;
- every client changes address (a stateless source rewrite in its namespace): no new
  handshake, the same server, which shows the new endpoint, and pings still work; the
  balancer's counters show datagrams routed by CID and by hash;
- s2 is SIGKILLed and the balancer's health check (`fleet-rules --routes --down 2`)
  spreads its table: its clients come back on s1 by ticket (``resumed`` true, one more
  handshake), and s1 counts their stale CIDs as ``cid_foreign``.  The interruption is
  measured from the kernel receive timestamps of a 20 ms echo stream and printed, never
  asserted;
- s2 restarts, the routes are restored, and a client whose hash names s2 (one of its old
  clients, dialling from its first address again) reaches it again.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtlsvpn.cli.main import main
from tests.netns.harness import (
    PYTHON,
    REPO,
    Daemon,
    RunDaemon,
    Topology,
    ping,
    secret_file,
)
from tests.support.conf import TunnelConf
from tests.util import ProcessGroup, require_tools, run_bounded, wait_until

VIP = "198.18.0.1"
PORT = 4433
CLIENTS = 4
CLIENT_PORT = 40000
SERVERS = {1: "198.18.1.2", 2: "198.18.2.2"}
STREAM_SECONDS = 14.0
STREAM_INTERVAL = 0.02


@dataclass
class Fleet:
    topo: Topology
    run_daemon: RunDaemon
    workdir: Path
    balancer: str
    server_ns: dict[int, str]
    client_ns: dict[int, str]
    server_conf: dict[int, Path]
    client_conf: dict[int, Path]
    servers: dict[int, Daemon]
    clients: dict[int, Daemon]

    def fleet_rules(self, *extra: str) -> Path:
        out = self.workdir / ("routes.sh" if "--routes" in extra else "rules.nft")
        argv = ["fleet-rules", str(self.server_conf[1]), "-o", str(out), *extra]
        for sid, hop in SERVERS.items():
            argv += ["--server", f"{sid}={hop}"]
        assert main(argv) == 0
        return out

    def apply_routes(self, *down: int) -> float:
        """The health check's move; returns when it was applied (wall clock)."""
        script = self.fleet_rules("--routes", *(f"--down={d}" for d in down))
        res = self.topo.exec(self.balancer, ["sh", str(script)])
        assert res.returncode == 0, res.stderr
        return time.time()

    def start_server(self, sid: int) -> Daemon:
        conf = self.server_conf[sid]
        d = self.run_daemon(self.server_ns[sid], conf, self.workdir / f"s{sid}.sock")
        d.wait_ready()
        self.servers[sid] = d
        return d

    def start_client(self, k: int) -> Daemon:
        conf = self.client_conf[k]
        d = self.run_daemon(self.client_ns[k], conf, self.workdir / f"c{k}.sock")
        d.wait_ready(timeout=30)
        self.clients[k] = d
        return d

    def holder(self, k: int, alive: tuple[int, ...] = (1, 2)) -> int | None:
        """The server on which client k's peer is established, if exactly one."""
        found = [sid for sid in alive
                 if _peer(self.servers[sid].status(), f"c{k}").get("state") == "established"]
        return found[0] if len(found) == 1 else None

    def client_peer(self, k: int) -> dict:
        return self.clients[k].status()["peers"][0]


def _peer(snap: dict, name: str) -> dict:
    return next((p for p in snap["peers"] if p["name"] == name), {})


def _gencert(pki: Path) -> None:
    assert main(["gencert", "ca", "--out-dir", str(pki), "--name", "Fleet test CA"]) == 0
    assert main(["gencert", "server", "--ca-dir", str(pki), "--out-dir", str(pki),
                 "--name", "vpn.test", "--ip", VIP]) == 0
    for k in range(1, CLIENTS + 1):
        assert main(["gencert", "client", "--ca-dir", str(pki), "--out-dir", str(pki),
                     "--name", f"c{k}"]) == 0


def _configs(workdir: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    pki = workdir / "pki"
    pki.mkdir()
    _gencert(pki)
    secret = secret_file(workdir / "fleet.key", bytes(range(32)).hex() + "\n")
    servers = {}
    for sid in SERVERS:
        conf = TunnelConf(
            comment=f"fleet server {sid}", role="server", listen_address=f"{VIP}:{PORT}",
            device=f"dvs{sid}", address="100.64.100.1/24", certificate=pki / "vpn.test.crt",
            private_key=pki / "vpn.test.key", ca=pki / "ca.crt", heartbeat_interval=0.5,
            dead_peer_timeout=2, status_socket=workdir / f"s{sid}.sock",
            ticket_store=workdir / f"s{sid}-state", log_level="debug", server_id=sid,
            fleet_secret_file=secret, ticket_key_file=workdir / "fleet-ticket.keys",
            ticket_key_rotation=sid == 1,
        )
        for k in range(1, CLIENTS + 1):
            conf.peer(name=f"c{k}", common_name=f"c{k}", allowed_ips=f"100.64.100.{10 + k}/32")
        servers[sid] = conf.write(workdir / f"s{sid}.conf")
    clients = {}
    for k in range(1, CLIENTS + 1):
        clients[k] = TunnelConf(
            comment=f"fleet client {k}", role="client", device=f"dvc{k}",
            address=f"100.64.100.{10 + k}/24", certificate=pki / f"c{k}.crt",
            private_key=pki / f"c{k}.key", ca=pki / "ca.crt", heartbeat_interval=0.5,
            dead_peer_timeout=2, status_socket=workdir / f"c{k}.sock",
            ticket_store=workdir / f"c{k}-tickets", log_level="debug",
        ).peer(name="fleet", endpoint=f"{VIP}:{PORT}", server_name="vpn.test",
               allowed_ips="100.64.100.0/24").write(workdir / f"c{k}.conf")
    return servers, clients


def _build(topo: Topology, run_daemon: RunDaemon, workdir: Path) -> Fleet:
    balancer = topo.netns("b")
    topo.exec(balancer, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    server_ns = {}
    for sid, hop in SERVERS.items():
        ns = topo.netns(f"s{sid}")
        topo.veth(balancer, [f"198.18.{sid}.1/24"], ns, [f"{hop}/24"])
        for argv in (["ip", "addr", "add", f"{VIP}/32", "dev", "lo"],
                     ["ip", "route", "add", "default", "via", f"198.18.{sid}.1"]):
            assert topo.exec(ns, argv).returncode == 0
        server_ns[sid] = ns
    client_ns = {}
    for k in range(1, CLIENTS + 1):
        ns = topo.netns(f"c{k}")
        net = f"198.18.{10 + k}"
        topo.veth(balancer, [f"{net}.1/24"], ns, [f"{net}.2/24"])
        for argv in (["ip", "route", "add", "default", "via", f"{net}.1"],
                     ["sysctl", "-qw", f"net.ipv4.ip_local_port_range={CLIENT_PORT} "
                                       f"{CLIENT_PORT}"]):
            res = topo.exec(ns, argv)
            assert res.returncode == 0, res.stderr
        client_ns[k] = ns
    server_conf, client_conf = _configs(workdir)
    fleet = Fleet(topo, run_daemon, workdir, balancer, server_ns, client_ns, server_conf,
                  client_conf, {}, {})
    res = topo.exec(balancer, ["nft", "-f", str(fleet.fleet_rules())])
    assert res.returncode == 0, res.stderr
    fleet.apply_routes()
    return fleet


def _roam(topo: Topology, ns: str, k: int) -> str:
    """Client k's datagrams leave from .3 instead of .2 (and replies to .3 reach it)."""
    net = f"198.18.{10 + k}"
    rules = (f"table ip roam {{\n"
             f" chain out {{ type filter hook output priority 0; ip daddr {VIP} udp dport "
             f"{PORT} ip saddr set {net}.3; }}\n"
             f" chain in {{ type filter hook prerouting priority -300; ip daddr {net}.3 "
             f"ip daddr set {net}.2; }}\n}}\n")
    dev = f"dvb{k + len(SERVERS)}{topo.suffix}"  # the client end of its veth
    res = topo.exec(ns, ["ip", "addr", "add", f"{net}.3/32", "dev", dev])
    assert res.returncode == 0, res.stderr
    res = run_bounded(["ip", "netns", "exec", ns, "nft", "-f", "-"], timeout=15, input=rules)
    assert res.returncode == 0, res.stderr
    return f"{net}.3:{CLIENT_PORT}"


def _balancer_counters(topo: Topology, ns: str) -> tuple[int, int]:
    """Datagrams the balancer routed (by CID, by hash): the two counters of its rules."""
    res = topo.exec(ns, ["nft", "-j", "list", "chain", "inet", "dtlsvpn_fleet", "pick"])
    assert res.returncode == 0, res.stderr
    counts = [e["counter"]["packets"] for item in json.loads(res.stdout)["nftables"]
              if "rule" in item for e in item["rule"]["expr"] if "counter" in e]
    assert len(counts) == 2, counts
    return counts[0], counts[1]


def _interruption(replies: list[list[float]], kill_at: float) -> tuple[float, float, int]:
    """(largest gap between replies around the kill, kill → first reply after it, replies
    after the kill), from the replies' kernel receive timestamps."""
    stamps = [t for _seq, t in replies]
    before = [t for t in stamps if t <= kill_at]
    after = [t for t in stamps if t > kill_at]
    assert before and after, (len(before), len(after))
    gap = max(b - a for a, b in itertools.pairwise(stamps) if b > kill_at)
    return gap, after[0] - kill_at, len(after)


@pytest.fixture
def fleet(topo: Topology, run_daemon: RunDaemon, tmp_path: Path) -> Iterator[Fleet]:
    require_tools("nft", "sysctl")
    yield _build(topo, run_daemon, tmp_path)


def test_fleet_spread_roam_failover_restart(fleet: Fleet, topo: Topology,
                                            procs: ProcessGroup) -> None:
    fleet.start_server(1)
    assert wait_until((fleet.workdir / "fleet-ticket.keys").exists, 10)
    fleet.start_server(2)
    for k in range(1, CLIENTS + 1):
        fleet.start_client(k)
    assert wait_until(lambda: all(fleet.holder(k) for k in fleet.clients), 20)
    where = {k: fleet.holder(k) for k in fleet.clients}
    print(f"clients by server: {where}")
    assert set(where.values()) == {1, 2}, where  # both servers got clients
    for sid in SERVERS:
        assert fleet.servers[sid].status()["interface"]["fleet"]["server_id"] == sid
    views = {sid: fleet.servers[sid].status()["interface"]["fleet"] for sid in SERVERS}
    for what in ("ticket_key", "peers_digest"):  # one key file, one [Peer] set
        assert views[1][what] is not None and views[1][what] == views[2][what], views
    for k in fleet.clients:
        ping(topo, fleet.client_ns[k], "100.64.100.1", "--count", "3")

    # --- every client changes address: the CID keeps it on its server ---------------
    handshakes = {k: fleet.client_peer(k)["handshakes"] for k in fleet.clients}
    for k in fleet.clients:
        new = _roam(topo, fleet.client_ns[k], k)
        ping(topo, fleet.client_ns[k], "100.64.100.1", "--count", "3")
        sid = where[k]
        assert sid is not None
        assert wait_until(lambda k=k, sid=sid, new=new: _peer(
            fleet.servers[sid].status(), f"c{k}").get("endpoint") == new, 5), k
        assert fleet.holder(k) == sid
        assert fleet.client_peer(k)["handshakes"] == handshakes[k], k
    by_cid, by_hash = _balancer_counters(topo, fleet.balancer)
    assert by_cid > 0 and by_hash > 0, (by_cid, by_hash)
    print(f"roamed: {CLIENTS} clients to .3, 0 handshakes, every one on its server; the "
          f"balancer routed {by_cid} datagrams by CID and {by_hash} by hash so far")

    # --- s2 dies; the health check spreads its table; its clients resume on s1 ------
    victims = [k for k, sid in where.items() if sid == 2]
    streams = {k: procs.start(
        ["ip", "netns", "exec", fleet.client_ns[k], PYTHON, "-m", "tests.netns.fleet_pinger",
         "100.64.100.1", str(STREAM_SECONDS), str(STREAM_INTERVAL)],
        name=f"stream-c{k}", timeout=STREAM_SECONDS + 20, env={"PYTHONPATH": str(REPO)},
        stdin_pipe=False) for k in victims}
    rx = {k: fleet.client_peer(k)["rx_packets"] for k in victims}
    assert wait_until(lambda: all(fleet.client_peer(k)["rx_packets"] >= rx[k] + 50
                                  for k in victims), 10)  # a steady stream first
    kill_at = time.time()
    fleet.servers[2].kill9()
    moved_at = fleet.apply_routes(2)
    for k in victims:
        assert wait_until(lambda k=k: fleet.client_peer(k)["handshakes"] > handshakes[k]
                          and fleet.client_peer(k)["state"] == "established", 20), k
        peer = fleet.client_peer(k)
        assert peer["resumed"] is True, peer
        assert fleet.holder(k, alive=(1,)) == 1
    for k, stream in streams.items():
        assert stream.wait(STREAM_SECONDS + 15) == 0, stream.describe()
        result = json.loads(stream.stdout().strip().splitlines()[-1])
        gap, first, after = _interruption(result["replies"], kill_at)
        print(f"failover c{k}: health check moved the route {moved_at - kill_at:.3f} s "
              f"after the kill; largest reply gap {gap:.3f} s; kill -> first reply "
              f"{first:.3f} s; {len(result['replies'])}/{result['sent']} replies, "
              f"{after} after the kill (kernel receive timestamps, {STREAM_INTERVAL * 1000:.0f}"
              f" ms stream)")
    s1 = fleet.servers[1].status()["interface"]["fleet"]
    assert main(["status", "--socket", str(fleet.workdir / "s1.sock")]) == 0
    assert s1["cid_foreign"] > 0  # the victims' s2 CIDs reached s1 before they re-dialled
    for k in victims:
        ping(topo, fleet.client_ns[k], "100.64.100.1", "--count", "3")

    # --- s2 comes back; a client whose hash names s2 reaches it ---------------------
    fleet.start_server(2)
    fleet.apply_routes()
    k = victims[0]
    fleet.clients[k].stop()
    # Back to its first address, whose hash named s2 (the roamed one's may not).
    res = topo.exec(fleet.client_ns[k], ["nft", "delete", "table", "ip", "roam"])
    assert res.returncode == 0, res.stderr
    fleet.start_client(k)
    assert wait_until(lambda: fleet.holder(k) == 2, 20), (
        [_peer(fleet.servers[sid].status(), f"c{k}") for sid in SERVERS],
        fleet.client_peer(k), fleet.clients[k].proc.describe())
    ping(topo, fleet.client_ns[k], "100.64.100.1", "--count", "3")
    print(f"restart: c{k} dialled again and reached the restarted s2 "
          f"(resumed={fleet.client_peer(k)['resumed']})")
