"""UDP GSO/GRO in the real kernel, over veth between two namespaces.

A SHA-256-checked 20 MB copy each way passes with ``UDPOffload = yes`` and ``= no``;
with yes both daemons' status shows GSO sends and GRO receives (so the offload did
something: the kernel carried GSO packets over veth whole and handed them to a GRO
socket), with no every offload counter stays 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netns.harness import RunDaemon, Topology, copy_both_ways, psk_pair, start_pair, two_hosts
from tests.util import ProcessGroup


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_file_copy_both_ways_with_and_without_udp_offload(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup,
    offload: bool,
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, udp_offload=offload)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    copy_both_ways(topo, procs, server_ns, client_ns, tmp_path)
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
