"""The TCP fallback in namespaces: UDP blocked mid-copy moves the tunnel to TLS/TCP and back.

    server (dvs, 198.18.1.1) ─── router (dvr) ─── client (dvc, 198.18.2.2)

The router forwards; an nftables table in it drops UDP port 4433 both ways while a
file is being copied through the tunnel (client → server, 100.64.0.1), for HOLD
seconds at least.  Checked: the copy completes with the same SHA-256, the client's
status says ``transport=tcp`` and stays so while UDP is blocked, the TLS dial resumed
the UDP session's ticket, and once the table is deleted again the client's next UDP
probe (a DTLS dial every 3 s while on TCP) moves the tunnel back (``transport=udp``)
and the tunnel still passes a ping.

dumpcap on the router's server-side interface (what the router forwarded) gives the
figures, from packet timestamps: the switch-over (last UDP datagram forwarded before
the block → first TCP segment carrying tunnel data, > 600 bytes) and the switch-back
(the unblock → first UDP datagram with tunnel data).  They are printed, never asserted.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import struct
import time
from pathlib import Path

import pytest

from tests.netns.harness import REPO, TOOLS, RunDaemon, Topology, ping, psk_pair
from tests.util import ProcessGroup, require_tools, wait_until

pytestmark = pytest.mark.usefixtures("root")
# (time.time() is the capture's clock: the block and unblock instants are wall times)

PORT = 4433
HOLD = 10.0  # seconds UDP stays blocked at least
BIG = 600  # bytes: a packet this large carries tunnel data, not a handshake or keepalive
BLOCK = ("table inet dvtf { chain block_udp { type filter hook forward priority 0; "
         f"udp dport {PORT} drop; udp sport {PORT} drop; }}; }}")


def _sysctl(topo: Topology, ns: str, *settings: str) -> None:
    for s in settings:
        res = topo.exec(ns, ["sysctl", "-q", "-w", s])
        assert res.returncode == 0, res.stderr


def read_pcap(path: Path) -> list[tuple[float, int, int, int]]:
    """(time, IP protocol, source port, IP length) of each IPv4 packet of a pcap file."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    nano = magic == 0xA1B23C4D
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, off)
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 14 + 24 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        sport = struct.unpack_from("!H", ip, ihl)[0]
        out.append((sec + frac / (1e9 if nano else 1e6), ip[9], sport,
                    struct.unpack_from("!H", ip, 2)[0]))
    return out


def build(topo: Topology) -> tuple[str, str, str, str]:
    require_tools("nft", "dumpcap")
    server, router, client = topo.netns("s"), topo.netns("r"), topo.netns("c")
    topo.veth(server, ["198.18.1.1/24"], router, ["198.18.1.2/24"])
    topo.veth(router, ["198.18.2.1/24"], client, ["198.18.2.2/24"])
    _sysctl(topo, router, "net.ipv4.ip_forward=1")
    topo.exec(server, ["ip", "route", "add", "198.18.2.0/24", "via", "198.18.1.2"])
    topo.exec(client, ["ip", "route", "add", "198.18.1.0/24", "via", "198.18.2.1"])
    res = topo.exec(router, ["ip", "-o", "-4", "addr", "show", "to", "198.18.1.2"])
    dev = res.stdout.split()[1].split("@")[0]
    return server, router, client, dev


def test_udp_blocked_mid_copy_moves_to_tcp_and_back(topo: Topology, run_daemon: RunDaemon,
                                                    procs: ProcessGroup, tmp_path: Path) -> None:
    server_ns, router, client_ns, dev = build(topo)
    server_conf, client_conf = psk_pair(tmp_path, server_ip="198.18.1.1", port=PORT,
                                        mtu="1400")
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    client = run_daemon(client_ns, client_conf, client_conf.with_suffix(".sock"))
    client.wait_ready()
    assert client.status()["peers"][0]["transport"] == "udp"
    cap = tmp_path / "router.pcap"
    dump = procs.start(["ip", "netns", "exec", router, "dumpcap", "-q", "-P", "-i", dev,
                        "-s", "128", "-w", str(cap), "-a", "duration:80"],
                       name="dumpcap", timeout=90, stdin_pipe=False)
    assert wait_until(lambda: cap.exists() and cap.stat().st_size >= 24, 10), dump.describe()

    size = 48 * 1024 * 1024
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(size))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(REPO)}
    rx = procs.start(["ip", "netns", "exec", server_ns, *TOOLS, "recv", "100.64.0.1", "5001"],
                     name="recv", timeout=90, env=env, stdin_pipe=False)
    assert rx.wait_for("listening", timeout=15), rx.describe()
    tx = procs.start(["ip", "netns", "exec", client_ns, *TOOLS, "send", "100.64.0.1", "5001",
                      str(blob)], name="send", timeout=90, env=env, stdin_pipe=False)
    # Mid-copy: block once the first MiB went through the tunnel.
    assert wait_until(lambda: client.status()["peers"][0]["tx_bytes"] >= 1 << 20, 30,
                      interval=0.02), tx.describe()
    blocked_at = time.time()
    res = topo.exec(router, ["nft", BLOCK])
    assert res.returncode == 0, res.stderr
    assert wait_until(lambda: client.status()["peers"][0]["transport"] == "tcp", 20), \
        client.proc.describe()
    assert tx.wait(70) == 0, tx.describe()
    assert rx.wait(30) == 0, rx.describe()
    line = rx.stdout().strip().splitlines()[-1]
    assert f"bytes={size} sha256={want}" in line, line
    assert server.status()["peers"][0]["transport"] == "tcp"
    # Blocked for HOLD seconds at least: the UDP probes (a DTLS dial every 3 s) fail and
    # the tunnel stays on TCP meanwhile (no flapping).
    # (plus up to one probe interval at random, so that the switch-back samples its phase)
    hold = HOLD + random.uniform(0.0, 3.0)
    time.sleep(max(0.0, blocked_at + hold - time.time()))
    assert client.status()["peers"][0]["transport"] == "tcp"
    log = client.proc.stderr()
    # The TLS dial offered the ticket of the UDP session: an abbreviated handshake.
    assert re.search(r"TLS over TCP up \(\S+, resumed\)", log), log

    unblocked_at = time.time()
    res = topo.exec(router, ["nft", "delete", "table", "inet", "dvtf"])
    assert res.returncode == 0, res.stderr
    assert wait_until(lambda: client.status()["peers"][0]["transport"] == "udp", 45), \
        client.proc.describe()
    ping(topo, client_ns, "100.64.0.1")
    time.sleep(0.5)
    procs.stop(dump)
    _report(read_pcap(cap), blocked_at, unblocked_at, line)
    for log_line in client.proc.stderr().splitlines():
        if "TCP" in log_line or "UDP" in log_line:
            print(f"client log: {log_line}")
            if "traffic moved to TCP" in log_line:
                print(f"  (moved {_log_time(log_line) - blocked_at:.3f}s after the block)")
            elif "traffic moved to UDP" in log_line:
                print(f"  (moved {_log_time(log_line) - unblocked_at:.3f}s after the unblock)")


def _log_time(line: str) -> float:
    """The wall time of a daemon log line ("YYYY-MM-DD HH:MM:SS.mmm", local time)."""
    stamp = line.split(" dtlsvpn:")[0]
    whole, _, ms = stamp.partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) + int(ms or 0) / 1000


def _report(packets: list[tuple[float, int, int, int]], blocked_at: float,
            unblocked_at: float, copy_line: str) -> None:
    udp_before = [t for t, proto, _s, n in packets if proto == 17 and t < blocked_at + 0.5]
    tcp_data = [t for t, proto, _s, n in packets if proto == 6 and n > BIG and t > blocked_at]
    udp_after = [t for t, proto, _s, n in packets
                 if proto == 17 and n > BIG and t >= unblocked_at]
    print(f"\ncopy across the switch: {copy_line}")
    tcp_any = [t for t, proto, _s, _n in packets if proto == 6 and t > blocked_at]
    if tcp_any:
        print(f"TCP standby dialled {tcp_any[0] - blocked_at:.3f}s after the block (first "
              "TCP segment)")
    if udp_before and tcp_data:
        last_udp = max(t for t in udp_before if t <= tcp_data[0])
        print(f"switch-over: last UDP datagram {last_udp - blocked_at:+.3f}s after the block, "
              f"first TCP data {tcp_data[0] - blocked_at:.3f}s after it: "
              f"{tcp_data[0] - last_udp:.3f}s without traffic")
    if udp_after:
        print(f"switch-back: first UDP data {udp_after[0] - unblocked_at:.3f}s after the "
              "unblock")
    udp_any = [t for t, proto, _s, _n in packets if proto == 17 and t >= unblocked_at]
    if udp_any:
        print(f"first UDP datagram through {udp_any[0] - unblocked_at:.3f}s after the unblock "
              "(the next DTLS probe's ClientHello)")
    print(f"packets captured at the router: {len(packets)}")
    print(f"tunnel data over TCP: {sum(1 for _t, p, _s, n in packets if p == 6 and n > BIG)} "
          "segments")
