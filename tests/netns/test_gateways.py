"""Two site gateways running the daemon, a host behind each, a narrower link in between.

Topology (testing.md address plan; every name carries the test's random suffix)::

    host A (dvha)          gateway A (dvga)         router (dvr)        gateway B (dvgb)       host B (dvhb)
    100.64.1.10 ─────────── 100.64.1.1              198.18.1.2          100.64.2.1 ─────────── 100.64.2.10
    fd00:1::10              fd00:1::1               198.18.2.1          fd00:2::1              fd00:2::10
                            198.18.1.1 ──────────── router ═MTU 1400═══ 198.18.2.2
                            dvs0 100.64.0.1 server                      dvc0 100.64.0.2 client

The hosts keep MTU 1500 and know nothing about the tunnel.  What is checked: host-to-host
ping; a TCP transfer whose SYN arrives with the clamped MSS (read from a raw socket on host
B); a DF packet larger than the tunnel getting ICMP "fragmentation needed" / Packet Too Big
with the tunnel MTU, from the gateway's kernel (auto MTU) or from the daemon itself (a
fixed MTU above the path), and non-DF IPv4 fragmented by the daemon; and a PMTU black
hole (the router's ICMP dropped by nftables) that still converges.

This file is also a small tool run inside the host namespaces
(``python -m tests.netns.test_gateways syn-listen|probe-df ...``): see ``main``.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns.harness import (
    CLIENT_TUNNEL,
    PYTHON,
    REPO,
    SERVER_ALLOWS,
    SERVER_TUNNEL,
    TOOLS,
    Daemon,
    RunDaemon,
    Topology,
    link_mtu,
    secret_file,
)
from tests.support.conf import TunnelConf
from tests.util import ProcessGroup, holds_for, require_tools, wait_until

SELF = [PYTHON, "-m", "tests.netns.test_gateways"]
ENV = {"PYTHONPATH": str(REPO)}
NARROW = 1400  # the router's link to gateway B
HOST_A4, HOST_B4 = "100.64.1.10", "100.64.2.10"
HOST_A6, HOST_B6 = "fd00:1::10", "fd00:2::10"


@dataclass
class Sites:
    host_a: str
    gw_a: str
    router: str
    gw_b: str
    host_b: str
    server: Daemon
    client: Daemon
    narrow: tuple[str, str]  # the router's and gateway B's ends of the narrow link

    def tun_mtus(self, topo: Topology) -> tuple[int | None, int | None]:
        return link_mtu(topo, self.gw_a, "dvs0"), link_mtu(topo, self.gw_b, "dvc0")


def _sysctl(topo: Topology, ns: str, *settings: str) -> None:
    for setting in settings:
        res = topo.exec(ns, ["sysctl", "-qw", setting])
        assert res.returncode == 0, res.stderr


def gateway_configs(workdir: Path, mtu: str) -> tuple[Path, Path]:
    psk = secret_file(workdir / "psk.hex", os.urandom(32).hex() + "\n")
    server = TunnelConf(
        role="server", listen_address="198.18.1.1:4433", device="dvs0", address=SERVER_TUNNEL,
        mtu=mtu, status_socket=workdir / "gw-a.sock", ticket_store=workdir / "gw-a-state",
        log_level="debug",
    ).peer(name="site-b", psk_identity="site-b", psk_file=psk,
           allowed_ips=(*SERVER_ALLOWS, "100.64.2.0/24", "fd00:2::/64"))
    client = TunnelConf(
        role="client", device="dvc0", address=CLIENT_TUNNEL, mtu=mtu,
        status_socket=workdir / "gw-b.sock", ticket_store=workdir / "gw-b-tickets",
        log_level="debug",
    ).peer(name="site-a", endpoint="198.18.1.1:4433", psk_identity="site-b", psk_file=psk,
           allowed_ips=("100.64.0.1/32", "fd00::1/128", "100.64.1.0/24", "fd00:1::/64"))
    return server.write(workdir / "gw-a.conf"), client.write(workdir / "gw-b.conf")


def build_sites(topo: Topology, run_daemon: RunDaemon, workdir: Path, *, mtu: str = "auto",
                black_hole: bool = False) -> Sites:
    require_tools("sysctl", "nft")
    host_a, gw_a, router = topo.netns("ha"), topo.netns("ga"), topo.netns("r")
    gw_b, host_b = topo.netns("gb"), topo.netns("hb")
    topo.veth(host_a, ["100.64.1.10/24", "fd00:1::10/64"], gw_a, ["100.64.1.1/24", "fd00:1::1/64"])
    topo.veth(gw_a, ["198.18.1.1/24"], router, ["198.18.1.2/24"])
    narrow = topo.veth(router, ["198.18.2.1/24"], gw_b, ["198.18.2.2/24"], mtu=NARROW)
    topo.veth(gw_b, ["100.64.2.1/24", "fd00:2::1/64"], host_b, ["100.64.2.10/24", "fd00:2::10/64"])
    for ns in (gw_a, router, gw_b):
        _sysctl(topo, ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for ns, gw4, gw6 in ((host_a, "100.64.1.1", "fd00:1::1"), (host_b, "100.64.2.1", "fd00:2::1")):
        topo.exec(ns, ["ip", "route", "add", "100.64.0.0/10", "via", gw4])
        topo.exec(ns, ["ip", "-6", "route", "add", "fd00::/8", "via", gw6])
    topo.exec(gw_a, ["ip", "route", "add", "198.18.2.0/24", "via", "198.18.1.2"])
    topo.exec(gw_b, ["ip", "route", "add", "198.18.1.0/24", "via", "198.18.2.1"])
    if black_hole:
        rules = ("table inet dvbh { chain out { type filter hook output priority 0; "
                 "icmp type destination-unreachable counter drop; }; }")
        res = topo.exec(router, ["nft", rules])
        assert res.returncode == 0, res.stderr
    server_conf, client_conf = gateway_configs(workdir, mtu)
    server = run_daemon(gw_a, server_conf, workdir / "gw-a.sock")
    server.wait_ready()
    client = run_daemon(gw_b, client_conf, workdir / "gw-b.sock")
    client.wait_ready()
    assert client.wait_connected()
    return Sites(host_a, gw_a, router, gw_b, host_b, server, client, narrow)


def path_inner_mtu(daemon: Daemon, path: int = NARROW) -> int:
    """The inner MTU an IPv4 path of ``path`` bytes gives this daemon's records."""
    peer = daemon.status()["peers"][0]
    return path - 20 - 8 - peer["record_overhead"]


def wait_settled(topo: Topology, sites: Sites, path: int = NARROW,
                 timeout: float = 25) -> tuple[int, int]:
    """Both TUN MTUs at the path's inner MTU; returns them."""
    want = (path_inner_mtu(sites.server, path), path_inner_mtu(sites.client, path))
    if not wait_until(lambda: sites.tun_mtus(topo) == want, timeout=timeout, interval=0.2):
        pytest.fail(f"TUN MTUs {sites.tun_mtus(topo)}, want {want}; "
                    f"server {sites.server.status()['peers'][0]}")
    return want


def run_tool(topo: Topology, ns: str, argv: list[str], timeout: float = 20) -> str:
    res = topo.exec(ns, argv, timeout=timeout)
    assert res.returncode == 0, f"{argv}: {res.stdout}{res.stderr}"
    return res.stdout


def fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def tcp_transfer(topo: Topology, procs: ProcessGroup, sites: Sites, blob: Path, dst: str,
                 port: int) -> dict[str, str]:
    rx = procs.start(["ip", "netns", "exec", sites.host_b, *SELF, "syn-listen", dst, str(port)],
                     name=f"syn-listen-{port}", timeout=40, env=ENV, stdin_pipe=False)
    assert rx.wait_for("listening", timeout=15), rx.describe()
    run_tool(topo, sites.host_a, [*TOOLS, "send", dst, str(port), str(blob)], timeout=40)
    assert rx.wait(30) == 0, rx.describe()
    result = fields(rx.stdout().strip().splitlines()[-1])
    assert result["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest(), result
    assert int(result["bytes"]) == blob.stat().st_size
    return result


def probe_df(topo: Topology, sites: Sites, dst: str, size: int, *, df: bool = True) -> dict[str, str]:
    argv = [*SELF, "probe-df", dst, str(size)] + ([] if df else ["--no-df"])
    return fields(run_tool(topo, sites.host_a, argv).strip().splitlines()[-1])


# --- tests ----------------------------------------------------------------------------------


def test_hosts_ping_tcp_mss_clamped_and_frag_needed(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup
) -> None:
    sites = build_sites(topo, run_daemon, tmp_path)
    tun_a, tun_b = wait_settled(topo, sites)
    print(f"TUN MTU: gateway A {tun_a}, gateway B {tun_b} (path {NARROW})")

    for dst in (HOST_B4, HOST_B6):
        out = run_tool(topo, sites.host_a, [*TOOLS, "ping", dst, "--count", "3"])
        assert "3 received" in out, out

    # TCP with both hosts at MTU 1500: the SYN reaches host B with the clamped MSS.
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(4 * 1024 * 1024))
    inner = min(tun_a, tun_b)
    got4 = tcp_transfer(topo, procs, sites, blob, HOST_B4, 5001)
    print(f"IPv4 SYN at host B: {got4}")
    assert int(got4["syn_mss"]) == inner - 40
    small = tmp_path / "small"
    small.write_bytes(os.urandom(256 * 1024))
    got6 = tcp_transfer(topo, procs, sites, small, HOST_B6, 5002)
    print(f"IPv6 SYN at host B: {got6}")
    assert int(got6["syn_mss"]) == inner - 60
    for daemon, tun in ((sites.server, tun_a), (sites.client, tun_b)):
        iface = daemon.status()["interface"]
        assert iface["mss_clamped"] >= 2, iface
        assert iface["mss_clamp"] == {"ipv4": tun - 40, "ipv6": tun - 60}, iface

    # A DF packet larger than the tunnel: gateway A answers with the tunnel MTU.
    got = probe_df(topo, sites, HOST_B4, tun_a + 20)
    print(f"IPv4 DF {tun_a + 20} bytes: {got}")
    assert got["result"] == "too_big" and int(got["mtu"]) == tun_a, got
    got = probe_df(topo, sites, HOST_B6, tun_a + 20)
    print(f"IPv6 {tun_a + 20} bytes: {got}")
    assert got["result"] == "too_big" and int(got["mtu"]) == tun_a, got
    # ...and a packet of exactly the tunnel MTU crosses with DF set.
    got = probe_df(topo, sites, HOST_B4, tun_a)
    assert got["result"] == "reply", got


def test_fixed_mtu_above_path_daemon_sends_too_big_and_fragments(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path
) -> None:
    sites = build_sites(topo, run_daemon, tmp_path, mtu="1500")
    want = path_inner_mtu(sites.server)

    def limited() -> bool:
        return sites.server.status()["peers"][0]["mtu_limit"] == want

    assert wait_until(limited, timeout=25, interval=0.2), sites.server.status()
    assert sites.tun_mtus(topo) == (1500, 1500)

    # Without DF the daemons fragment (host B's echo reply comes back fragmented too).
    # First: host A's route cache would fragment it itself once it learnt the PMTU below.
    got = probe_df(topo, sites, HOST_B4, 1450, df=False)
    assert got == {"result": "reply", "bytes": "1450"}, got
    for daemon in (sites.server, sites.client):
        assert daemon.status()["interface"]["fragmented"] >= 1, daemon.status()["interface"]

    # DF: the gateway's kernel forwards it into the 1500-byte TUN; the daemon drops it and
    # writes the ICMP error back, "from" the unreachable destination.
    got = probe_df(topo, sites, HOST_B4, 1450)
    print(f"IPv4 DF 1450 bytes through a fixed MTU of 1500: {got}")
    assert got == {"result": "too_big", "mtu": str(want), "from": HOST_B4}
    got = probe_df(topo, sites, HOST_B6, 1450)
    print(f"IPv6 1450 bytes: {got}")
    assert got == {"result": "too_big", "mtu": str(want), "from": HOST_B6}
    iface = sites.server.status()["interface"]
    assert iface["icmp_too_big_sent"] >= 2, iface
    assert sites.server.status()["peers"][0]["drops"]["too_big"] >= 2


def test_pmtu_black_hole_converges(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup
) -> None:
    sites = build_sites(topo, run_daemon, tmp_path, black_hole=True)
    start = time.monotonic()
    tun_a, tun_b = wait_settled(topo, sites)
    print(f"black hole: TUN MTUs {tun_a}/{tun_b} after {time.monotonic() - start:.1f} s")
    # The router really swallowed its "fragmentation needed" messages.
    res = topo.exec(sites.router, ["nft", "list", "table", "inet", "dvbh"])
    dropped = int(res.stdout.split("counter packets", 1)[1].split()[0])
    assert dropped >= 1, res.stdout
    assert sites.server.status()["peers"][0]["plpmtu"] == NARROW
    # Still converged a little later (the search ended, no dip), watched all along.
    assert holds_for(lambda: sites.tun_mtus(topo) == (tun_a, tun_b), 1.5, interval=0.25), (
        sites.tun_mtus(topo), (tun_a, tun_b))
    # A full-size packet crosses host to host with DF set.
    got = probe_df(topo, sites, HOST_B4, tun_a)
    assert got == {"result": "reply", "bytes": str(tun_a)}, got
    # TCP between the hosts does not depend on ICMP thanks to MSS clamping.
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1024 * 1024))
    got = tcp_transfer(topo, procs, sites, blob, HOST_B4, 5003)
    assert int(got["syn_mss"]) == min(tun_a, tun_b) - 40

    # The path shrinks to 1300 behind gateway A's back (its ICMP still dropped) while the
    # hosts talk (small pings both ways: confirmation runs while a side sends data, RFC 8899
    # §5.1.1): the confirmation probes go unanswered, the black hole is detected, the limit
    # drops at once and then settles at the new path's inner MTU.  The TUN MTU stops at
    # 1280, the floor for an interface with IPv6 addresses: IPv4 packets above the limit get
    # the daemon's own "fragmentation needed".
    require_tools("ping")
    procs.start(["ip", "netns", "exec", sites.host_a, "ping", "-q", "-i", "0.2", "-c", "200",
                 HOST_B4], name="traffic", timeout=45, stdin_pipe=False)
    for ns, dev in zip((sites.router, sites.gw_b), sites.narrow, strict=True):
        topo.exec(ns, ["ip", "link", "set", "dev", dev, "mtu", "1300"])
    start = time.monotonic()

    def shrunk() -> bool:
        peer = sites.server.status()["peers"][0]
        return 1300 - 15 <= peer["plpmtu"] <= 1300 and peer["mtu_limit"] == peer["inner_mtu"]

    assert wait_until(shrunk, timeout=30, interval=0.2), sites.server.status()
    peer = sites.server.status()["peers"][0]
    limit = peer["inner_mtu"]
    assert limit == peer["plpmtu"] - 20 - 8 - peer["record_overhead"]
    assert wait_until(lambda: sites.tun_mtus(topo)[0] == max(1280, limit), timeout=5)
    print(f"path 1400 → 1300 (black hole): plpmtu {peer['plpmtu']}, limit {limit}, "
          f"TUN MTU {sites.tun_mtus(topo)[0]} after {time.monotonic() - start:.1f} s")
    got = probe_df(topo, sites, HOST_B4, limit + 10)
    assert got == {"result": "too_big", "mtu": str(limit), "from": HOST_B4}, got
    got = probe_df(topo, sites, HOST_B4, limit)
    assert got == {"result": "reply", "bytes": str(limit)}, got


# --- tools run inside the host namespaces -----------------------------------------------------

IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 10, 0, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2


def _mss_option(tcp: bytes) -> int | None:
    end = min(len(tcp), (tcp[12] >> 4) * 4)
    pos = 20
    while pos < end:
        kind = tcp[pos]
        if kind == 0:
            return None
        if kind == 1:
            pos += 1
            continue
        if pos + 1 >= end or tcp[pos + 1] < 2:
            return None
        if kind == 2 and tcp[pos + 1] == 4:
            return int(struct.unpack_from("!H", tcp, pos + 2)[0])
        pos += tcp[pos + 1]
    return None


def syn_listen(addr: str, port: int) -> int:
    """Accept one TCP connection on ADDR:PORT; print the MSS of its SYN, as a raw socket saw
    it, then ``bytes=N sha256=HEX``."""
    v6 = ipaddress.ip_address(addr).version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    with raw, socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
        syn_mss = None
        raw.setblocking(False)
        while syn_mss is None and select.select([raw], [], [], 2.0)[0]:
            data = raw.recv(65535)
            tcp = data if v6 else data[(data[0] & 0x0F) * 4:]  # IPv6 raw: no IP header
            dport = struct.unpack_from("!H", tcp, 2)[0]
            if dport == port and tcp[13] & 0x12 == 0x02:  # SYN without ACK
                syn_mss = _mss_option(tcp)
        maxseg = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        digest = hashlib.sha256()
        total = 0
        with conn:
            while data := conn.recv(1 << 20):
                digest.update(data)
                total += len(data)
    print(f"syn_mss={syn_mss} maxseg={maxseg} bytes={total} sha256={digest.hexdigest()}",
          flush=True)
    return 0


def probe_df_tool(addr: str, size: int, df: bool, timeout: float = 3.0) -> int:
    """One ICMP echo whose IP packet is SIZE bytes; print what came back:
    ``result=reply bytes=N``, ``result=too_big mtu=N from=ADDR`` or ``result=timeout``."""
    v6 = ipaddress.ip_address(addr).version == 6
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        header, kind = 48, 128
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER,
                        IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
        header, kind = 28, 8
    ident = os.getpid() & 0xFFFF
    payload = bytes(size - header)
    echo = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + payload
    if not v6:
        padded = echo + b"\0" * (len(echo) % 2)
        s = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        echo = echo[:2] + struct.pack("!H", ~s & 0xFFFF) + echo[4:]
    sock.sendto(echo, (addr, 0))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, src = sock.recvfrom(65535)
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        if v6 and icmp[0] == 129 and icmp[4:6] == struct.pack("!H", ident):
            print(f"result=reply bytes={len(icmp) + 40}")
            return 0
        if not v6 and icmp[0] == 0 and icmp[4:6] == struct.pack("!H", ident):
            print(f"result=reply bytes={len(data)}")
            return 0
        if v6 and icmp[0] == 2:
            print(f"result=too_big mtu={struct.unpack_from('!I', icmp, 4)[0]} from={src[0]}")
            return 0
        if not v6 and icmp[0] == 3 and icmp[1] == 4:
            print(f"result=too_big mtu={struct.unpack_from('!H', icmp, 6)[0]} from={src[0]}")
            return 0
    print("result=timeout")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.test_gateways")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("syn-listen")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    d = sub.add_parser("probe-df")
    d.add_argument("addr")
    d.add_argument("size", type=int)
    d.add_argument("--no-df", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "syn-listen":
        return syn_listen(a.addr, a.port)
    return probe_df_tool(a.addr, a.size, not a.no_df)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
