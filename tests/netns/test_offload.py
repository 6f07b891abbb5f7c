"""UDP GSO/GRO in the real kernel, over veth between two namespaces.

A SHA-256-checked 20 MB copy each way passes with ``UDPOffload = yes`` and ``= no``;
with yes both daemons' status shows GSO sends and GRO receives (so the offload did
something: the kernel carried GSO packets over veth whole and handed them to a GRO
socket), with no every offload counter stays 0.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.netns.harness import REPO, TOOLS, RunDaemon, Topology, psk_pair, start_pair, two_hosts
from tests.util import ProcessGroup


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_file_copy_both_ways_with_and_without_udp_offload(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup,
    offload: bool,
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, udp_offload=offload)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(20 * 1024 * 1024))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(REPO)}
    for receiver_ns, sender_ns, addr in ((server_ns, client_ns, "100.64.0.1"),
                                         (client_ns, server_ns, "100.64.0.2")):
        rx = procs.start(["ip", "netns", "exec", receiver_ns, *TOOLS, "recv", addr, "5001"],
                         name=f"recv-{addr}", timeout=60, env=env, stdin_pipe=False)
        assert rx.wait_for("listening", timeout=15), rx.describe()
        res = topo.exec(sender_ns, [*TOOLS, "send", addr, "5001", str(blob)], timeout=60)
        assert res.returncode == 0, res.stderr
        assert rx.wait(30) == 0
        line = rx.stdout().strip().splitlines()[-1]
        assert f"bytes={blob.stat().st_size} sha256={want}" in line, line
    for daemon in (server, client):
        iface = daemon.status()["interface"]
        counters = {k: v for k, v in iface.items() if k.startswith("udp_")}
        print(daemon.conf.name, counters)
        if offload:
            assert counters["udp_gso_sends"] > 0, counters
            assert counters["udp_gro_receives"] > 0, counters
        else:
            assert set(counters.values()) == {0}, counters
        assert counters["udp_gso_fallbacks"] == 0, counters
