"""The roaming laptop with real daemons: the client's address or interface changes under a
copy through the tunnel.

Topology (all addresses from the plan)::

    server ──── router ──┬── wifi ──┐
    198.18.0.1           │          client: 198.18.1.2 (wifi), 198.18.2.2 (lte)
    2001:db8::1          └── lte ───┘       2001:db8:1::2,     2001:db8:2::2

The client's default route goes over "wifi".  Changes:

- ``address``: the wifi address is deleted and another one of the subnet added, with the
  default route again (a new DHCP lease on the same network);
- ``interface``: wifi goes down and the default route moves to lte (Wi-Fi → LTE: another
  interface, subnet and default route).

During the change a file is copied both ways through the tunnel at a bounded rate (same
SHA-256 at the far end), and a timestamped UDP stream (one datagram every 5 ms, its send
time inside) runs client → server through the tunnel.  The interruption is read from the
stream's timestamps: the longest gap between two arrivals, and how long after the change
(the last ``ip`` command) the first datagram sent after it arrived.  Printed, never
asserted.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.netns.harness import REPO, TOOLS, RunDaemon, Topology, ip, psk_pair, start_pair
from tests.netns.roamtools import summary
from tests.util import ProcessGroup

ROAM = [TOOLS[0], "-m", "tests.netns.roamtools"]
ENV = {"PYTHONPATH": str(REPO)}


class Roamer:
    """The three namespaces and the client's two uplinks."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.server, self.router, self.client = (topo.netns("s"), topo.netns("r"),
                                                 topo.netns("c"))
        self.s_dev, _ = topo.veth(self.server, ["198.18.0.1/24", "2001:db8::1/64"],
                                  self.router, ["198.18.0.254/24", "2001:db8::fe/64"])
        self.wifi, _ = topo.veth(self.client, ["198.18.1.2/24", "2001:db8:1::2/64"],
                                 self.router, ["198.18.1.1/24", "2001:db8:1::1/64"])
        self.lte, _ = topo.veth(self.client, ["198.18.2.2/24", "2001:db8:2::2/64"],
                                self.router, ["198.18.2.1/24", "2001:db8:2::1/64"])
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            topo.exec(self.router, ["sysctl", "-qw", key])
        self.route(self.server, "198.18.0.254", "2001:db8::fe")
        self.route(self.client, "198.18.1.1", "2001:db8:1::1")

    def route(self, ns: str, gw4: str, gw6: str) -> None:
        ip("-n", ns, "route", "replace", "default", "via", gw4)
        ip("-n", ns, "-6", "route", "replace", "default", "via", gw6)

    def change(self, kind: str) -> None:
        c = self.client
        if kind == "address":
            ip("-n", c, "addr", "del", "198.18.1.2/24", "dev", self.wifi)
            ip("-n", c, "addr", "del", "2001:db8:1::2/64", "dev", self.wifi)
            ip("-n", c, "addr", "add", "198.18.1.3/24", "dev", self.wifi)
            ip("-n", c, "addr", "add", "2001:db8:1::3/64", "dev", self.wifi, "nodad")
            self.route(c, "198.18.1.1", "2001:db8:1::1")
        else:
            ip("-n", c, "link", "set", self.wifi, "down")
            self.route(c, "198.18.2.1", "2001:db8:2::1")


def _local_source(topo: Topology, ns: str, dst: str) -> str:
    # (with the full tunnel's mark: the route the daemon's own socket takes)
    out = topo.exec(ns, ["ip", "route", "get", dst, "mark", "51820"]).stdout.split()
    return out[out.index("src") + 1] if "src" in out else "?"


CASES = [  # (underlay, change, connection ID, full tunnel)
    ("4", "address", True, False),
    ("4", "address", False, False),
    ("4", "interface", True, False),
    ("4", "interface", False, False),
    ("6", "address", True, False),
    ("6", "interface", True, False),
    ("4", "interface", True, True),
]


@pytest.mark.parametrize(("family", "kind", "cid", "full"), CASES,
                         ids=[f"ipv{f}-{k}-{'cid' if c else 'no-cid'}{'-full' if u else ''}"
                              for f, k, c, u in CASES])
def test_copy_survives_the_change(topo: Topology, run_daemon: RunDaemon, procs: ProcessGroup,
                                  tmp_path: Path, family: str, kind: str, cid: bool,
                                  full: bool) -> None:
    net = Roamer(topo)
    server_ip = "198.18.0.1" if family == "4" else "2001:db8::1"
    server_conf, client_conf = psk_pair(tmp_path, server_ip=server_ip, connection_id=cid)
    if full:  # AllowedIPs = 0.0.0.0/0, ::/0: the socket's route is found with its mark
        client_conf.write_text(client_conf.read_text().replace(
            "AllowedIPs = 100.64.0.0/24, fd00::/64", "AllowedIPs = 0.0.0.0/0, ::/0"))
    server, client = start_pair(run_daemon, net.server, net.client, server_conf, client_conf)
    size = 3 * 1024 * 1024
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(size))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()

    sinks = []  # up: client → server; down: server → client (needs the server to follow)
    for ns, addr, name in ((net.server, "100.64.0.1", "up"), (net.client, "100.64.0.2", "down")):
        sink = procs.start(["ip", "netns", "exec", ns, *ROAM, "sink", addr, "6000",
                            "--seconds", "15"], name=f"sink-{name}", timeout=30, env=ENV,
                           stdin_pipe=False)
        assert sink.wait_for("listening", 15), sink.describe()
        sinks.append(sink)
    receivers = []
    for ns, addr in ((net.server, "100.64.0.1"), (net.client, "100.64.0.2")):
        rx = procs.start(["ip", "netns", "exec", ns, *TOOLS, "recv", addr, "5001"],
                         name=f"recv-{addr}", timeout=60, env=ENV, stdin_pipe=False)
        assert rx.wait_for("listening", 15), rx.describe()
        receivers.append(rx)
    streams = [procs.start(["ip", "netns", "exec", ns, *ROAM, "stream", addr, "6000",
                            "--seconds", "6"], name=f"stream-{addr}", timeout=30, env=ENV,
                           stdin_pipe=False)
               for ns, addr in ((net.client, "100.64.0.1"), (net.server, "100.64.0.2"))]
    senders = [procs.start(["ip", "netns", "exec", ns, *ROAM, "paced", addr, "5001", str(blob),
                            "--rate", "1000000"], name=f"paced-{addr}", timeout=60, env=ENV,
                           stdin_pipe=False)
               for ns, addr in ((net.client, "100.64.0.1"), (net.server, "100.64.0.2"))]
    time.sleep(1.5)  # the copies and the stream are in flight
    before = _local_source(topo, net.client, server_ip)
    began = time.time()
    net.change(kind)
    changed = time.time()
    after = _local_source(topo, net.client, server_ip)
    for tx in senders:
        assert tx.wait(40) == 0, tx.describe()
    for rx in receivers:
        assert rx.wait(30) == 0, rx.describe()
        line = rx.stdout().strip().splitlines()[-1]
        assert f"bytes={size} sha256={want}" in line, line
    for stream in streams:
        assert stream.wait(20) == 0
    figures = []
    for sink, name in zip(sinks, ("up", "down"), strict=True):
        assert sink.wait(20) == 0, sink.describe()
        s = summary(sink.stdout(), changed)
        assert s.back_after is not None, f"{name}: no datagram sent after the change arrived"
        figures.append(f"{name}: longest gap {s.gap * 1000:.0f} ms, back "
                       f"{s.back_after * 1000:.0f} ms after the change, {s.lost} of "
                       f"{s.received + s.lost} lost")
    status = client.status()
    peer = status["peers"][0]
    print(f"\nroaming ipv{family} {kind} {'CID' if cid else 'no CID (ticket)'}"
          f"{', full tunnel' if full else ''}: "
          f"source {before} -> {after}; change took {(changed - began) * 1000:.0f} ms; "
          + "; ".join(figures) + f"; handshakes {peer['handshakes']}, roams {peer['roams']}, "
          f"resumed {peer['resumed']}; copies both ways: sha256 ok")
    assert peer["state"] == "established"
    if cid:
        assert peer["handshakes"] == 1  # the server followed the CID: no handshake
    assert server.stop() == 0 and client.stop() == 0
