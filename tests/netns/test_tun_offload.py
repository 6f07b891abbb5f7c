"""TUN offload (``TUNOffload``, daemon/tun.py, vpn/gro.py) in the real kernel.

A SHA-256-checked copy each way passes with ``TUNOffload = on`` and ``= off`` (and over
IPv6 inside the tunnel with on); with on,
each receiving daemon wrote coalesced super-packets to its TUN (the kernel took them:
no fallback, no refused write) and status says ``tun_offload: on``; with off, a plain
TUN and every TUN counter 0.  A copy across a path MTU change (the veth narrowed in the
middle of it: the daemons' PMTU search lowers the TUN MTU, the segment size changes
under the coalescer) arrives intact too, with offload on.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dtlsvpn.daemon import compiled
from tests.netns.harness import (
    REPO,
    TOOLS,
    Daemon,
    RunDaemon,
    Topology,
    copy_both_ways,
    ip,
    link_mtu,
    psk_pair,
    start_pair,
    two_hosts,
)
from tests.util import ProcessGroup, wait_until


def tun_counters(daemon: Daemon) -> dict[str, Any]:
    iface = daemon.status()["interface"]
    return {k: v for k, v in iface.items() if k.startswith("tun_")}


@pytest.mark.parametrize(("offload", "compiled_lane"), [("on", True), ("on", False),
                                                      ("off", True)],
                         ids=["on-compiled", "on-python", "off"])
def test_file_copy_both_ways_with_and_without_tun_offload(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup,
    offload: str, compiled_lane: bool,
) -> None:
    """With the offload, both of its forms: the compiled module's (TSO on read cut in C,
    C coalescing) and the pure-Python one's (``CompiledLane = no``: the kernel segments
    what we read, ``gro.coalesce``)."""
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, tun_offload=offload,
                                        compiled_lane=compiled_lane)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    copy_both_ways(topo, procs, server_ns, client_ns, tmp_path)
    for daemon in (server, client):
        counters = tun_counters(daemon)
        print(daemon.conf.name, counters, daemon.status()["peers"][0]["drops"])
        assert counters["tun_offload"] == offload, counters
        if offload == "on":
            assert counters["tun_gso_writes"] > 0, counters
            assert counters["tun_gso_segments"] > 2 * counters["tun_gso_writes"], counters
            # TSO on read goes with the compiled module (daemon/tun.py)
            want_tso = compiled_lane and compiled.segment is not None
            assert (counters["tun_tso_reads"] > 0) == want_tso, counters
            assert counters["tun_tso"] == ("on" if want_tso else "off"), counters
            assert counters["tun_tso_malformed"] == 0, counters
        else:
            assert counters["tun_tso"] == "off", counters
            assert {v for k, v in counters.items()
                    if k not in ("tun_offload", "tun_tso")} == {0}, counters
        assert counters["tun_gso_fallbacks"] == 0, counters
        assert "tun_write" not in daemon.status()["peers"][0]["drops"]


def copy_one_way(topo: Topology, procs: ProcessGroup, receiver_ns: str, sender_ns: str,
                 addr: str, blob: Path) -> None:
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(REPO)}
    rx = procs.start(["ip", "netns", "exec", receiver_ns, *TOOLS, "recv", addr, "5002"],
                     name=f"recv-{addr}", timeout=60, env=env, stdin_pipe=False)
    assert rx.wait_for("listening", timeout=15), rx.describe()
    res = topo.exec(sender_ns, [*TOOLS, "send", addr, "5002", str(blob)], timeout=60)
    assert res.returncode == 0, res.stderr
    assert rx.wait(30) == 0
    line = rx.stdout().strip().splitlines()[-1]
    assert f"bytes={blob.stat().st_size} sha256={want}" in line, line


def test_ipv6_copy_both_ways_with_tun_offload(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup,
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, tun_offload="on")
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    blob = tmp_path / "blob6"
    blob.write_bytes(os.urandom(16 * 1024 * 1024))
    copy_one_way(topo, procs, server_ns, client_ns, "fd00::1", blob)
    copy_one_way(topo, procs, client_ns, server_ns, "fd00::2", blob)
    for daemon in (server, client):
        counters = tun_counters(daemon)
        print(daemon.conf.name, counters)
        assert counters["tun_gso_writes"] > 0 and counters["tun_gso_fallbacks"] == 0, counters
        assert (counters["tun_tso_reads"] > 0) == (compiled.segment is not None), counters


def test_copy_across_a_path_mtu_change_with_tun_offload(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup,
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, tun_offload="on", heartbeat_interval=1)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    before = link_mtu(topo, client_ns, "dvc0")
    size = 60 * 1024 * 1024
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(size))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(REPO)}
    # server → client: the client's daemon coalesces toward its TUN
    rx = procs.start(["ip", "netns", "exec", client_ns, *TOOLS, "recv", "100.64.0.2", "5001"],
                     name="recv", timeout=120, env=env, stdin_pipe=False)
    assert rx.wait_for("listening", timeout=15), rx.describe()
    tx = procs.start(["ip", "netns", "exec", server_ns, *TOOLS, "send", "100.64.0.2", "5001",
                      str(blob)], name="send", timeout=120, env=env, stdin_pipe=False)
    time.sleep(1.0)
    for ns in (server_ns, client_ns):
        dev = "dva1" + topo.suffix if ns == server_ns else "dvb1" + topo.suffix
        ip("-n", ns, "link", "set", dev, "mtu", "1300")
    assert tx.wait(110) == 0, tx.describe()
    assert rx.wait(30) == 0, rx.describe()
    line = rx.stdout().strip().splitlines()[-1]
    assert f"bytes={size} sha256={want}" in line, line
    assert wait_until(lambda: (link_mtu(topo, client_ns, "dvc0") or 0) < (before or 0),
                      timeout=20, interval=0.5), (before, client.status())
    counters = tun_counters(client)
    print(line, before, link_mtu(topo, client_ns, "dvc0"), counters, tun_counters(server))
    assert counters["tun_gso_writes"] > 0 and counters["tun_gso_fallbacks"] == 0, counters
