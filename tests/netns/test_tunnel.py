"""The real daemon between two namespaces: ping, file copy, MTU, status, clean stop.

Topology (testing.md address plan)::

    [dvs-XXXX] 198.18.0.1/24, 2001:db8::1/64 ══ veth ══ 198.18.0.2/24, 2001:db8::2/64 [dvc-XXXX]
       dtlsvpn server  dvs0 100.64.0.1/24 fd00::1/64      dvc0 100.64.0.2/24 fd00::2/64  client

Readiness is READY=1 on a notify socket the test owns; kernel state is polled.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from dtlsvpn.crypto.suites import suite_by_name
from tests.netns.harness import (
    PYTHON,
    RunDaemon,
    Topology,
    cert_pair,
    copy_both_ways,
    link_mtu,
    ping,
    psk_pair,
    start_pair,
    two_hosts,
)
from tests.support.conf import peer_section
from tests.util import ProcessGroup, wait_until


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-lane", "python-lanes"])
def test_ping_v4_v6_and_status(topo: Topology, run_daemon: RunDaemon, tmp_path: Path,
                               compiled: bool) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, compiled_lane=compiled)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)

    out = ping(topo, client_ns, "100.64.0.1", "--count", "3")
    assert "3 received" in out
    assert "3 received" in ping(topo, client_ns, "fd00::1", "--count", "3")
    assert "2 received" in ping(topo, server_ns, "100.64.0.2", "--count", "2")
    # Sparse pings are what the compiled lane is for: with it on, C carried most of them
    # on both ends (the first of a peer's goes through Python, which arms it).
    for daemon in (server, client):
        lane = daemon.status()["interface"]["compiled_lane"]
        if compiled:
            assert lane is not None and lane["tx_packets"] >= 6 and lane["rx_packets"] >= 6, lane
        else:
            assert lane is None

    snap = server.status()
    assert snap["interface"]["device"] == "dvs0"
    (peer,) = snap["peers"]
    assert peer["name"] == "branch" and peer["state"] == "established"
    assert peer["endpoint"].startswith("198.18.0.2:")
    assert peer["suite"] and peer["rx_packets"] >= 6 and peer["tx_packets"] >= 6
    csnap = client.status()
    assert csnap["peers"][0]["state"] == "established"
    assert csnap["peers"][0]["endpoint"] == "198.18.0.1:4433"
    # key=value form through the CLI, as a user would ask
    res = topo.exec(server_ns, [PYTHON, "-m", "dtlsvpn", "status", "--raw",
                                "--socket", str(server.status_socket)])
    assert "peer=branch" in res.stdout and "state=established" in res.stdout
    # What systemd would see: READY=1 (start_pair waited for it), STATUS= lines naming
    # the peers, and WATCHDOG=1 pings from the loop.
    for daemon in (server, client):
        assert daemon.wait_message("WATCHDOG=1", timeout=5, count=2), daemon.messages
        assert any(m.startswith("STATUS=") for m in daemon.messages), daemon.messages


def test_file_copy_both_ways_with_certificates(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path, pki, procs: ProcessGroup
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = cert_pair(tmp_path, pki)
    start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    copy_both_ways(topo, procs, server_ns, client_ns, tmp_path)


def test_sigterm_leaves_nothing_behind(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    ping(topo, client_ns, "100.64.0.1", "--count", "1")
    for daemon, ns, dev in ((client, client_ns, "dvc0"), (server, server_ns, "dvs0")):
        assert daemon.stop() == 0, daemon.proc.describe()
        assert daemon.wait_message("STOPPING=1", timeout=5)
        links = topo.exec(ns, ["ip", "-o", "link"]).stdout
        assert dev not in links
        routes = topo.exec(ns, ["ip", "-o", "route"]).stdout + topo.exec(
            ns, ["ip", "-o", "-6", "route"]).stdout
        assert dev not in routes and "100.64." not in routes and "fd00:" not in routes
        assert not daemon.status_socket.exists()
        assert ":4433" not in topo.exec(ns, ["ss", "-Hanu"]).stdout


def test_mtu_fixed_from_config(topo: Topology, run_daemon: RunDaemon, tmp_path: Path) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, mtu="1300")
    _, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert link_mtu(topo, client_ns, "dvc0") == 1300
    assert link_mtu(topo, server_ns, "dvs0") == 1300
    assert client.status()["interface"]["mtu_policy"] == "fixed"
    # A full-size inner packet with DF set crosses (1300 - 20 - 8 = 1272 bytes of ICMP data).
    assert "2 received" in ping(topo, client_ns, "100.64.0.1", "--count", "2", "--df",
                                "--size", "1272")


def test_mtu_follows_a_narrow_path(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path
) -> None:
    server_ns, client_ns = two_hosts(topo, mtu=1400)
    server_conf, client_conf = psk_pair(tmp_path)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    # inner MTU = path − IPv4 20 − UDP 8 − what a record adds (header 13, AEAD, and an
    # RFC 9146 connection ID when one is used in that direction).
    wants = {}
    for daemon in (client, server):
        peer = daemon.status()["peers"][0]
        overhead = peer["record_overhead"] or 13 + suite_by_name(peer["suite"]).overhead
        wants[daemon] = 1400 - 20 - 8 - overhead

    def settled() -> bool:
        return link_mtu(topo, client_ns, "dvc0") == wants[client] and link_mtu(
            topo, server_ns, "dvs0") == wants[server]

    if not wait_until(settled, timeout=20, interval=0.2):
        pytest.fail(f"TUN MTU {link_mtu(topo, client_ns, 'dvc0')} / "
                    f"{link_mtu(topo, server_ns, 'dvs0')}, want {list(wants.values())} "
                    f"(path 1400); status: {client.status()}")
    want = min(wants.values())
    snap = client.status()
    assert snap["interface"]["mtu"] == wants[client]
    assert snap["peers"][0]["plpmtu"] == 1400
    assert server.status()["peers"][0]["plpmtu"] == 1400
    out = ping(topo, client_ns, "100.64.0.1", "--count", "2", "--df", "--size",
               str(want - 28))
    assert re.search(r"bytes=\d+", out)
    assert "2 received" in ping(topo, client_ns, "fd00::1", "--count", "2", "--size",
                                str(want - 48))


def test_server_crash_client_redials_and_resumes(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(
        tmp_path, heartbeat_interval=1, dead_peer_timeout=3)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert "1 received" in ping(topo, client_ns, "100.64.0.1", "--count", "1")
    assert wait_until(lambda: any((tmp_path / "tickets").glob("*.ticket")), timeout=10)
    server.kill9()
    server2 = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server2.wait_ready()

    def resumed() -> bool:
        peer = client.status()["peers"][0]
        return peer["state"] == "established" and peer["handshakes"] >= 2

    assert wait_until(resumed, timeout=30, interval=0.2), client.status()
    peer = client.status()["peers"][0]
    assert peer["resumed"] is True, peer
    assert server2.status()["peers"][0]["resumed"] is True
    assert "2 received" in ping(topo, client_ns, "100.64.0.1", "--count", "2")


def test_sighup_reload_keeps_unchanged_peers(
    topo: Topology, run_daemon: RunDaemon, tmp_path: Path
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert "1 received" in ping(topo, client_ns, "100.64.0.1", "--count", "1")
    # Add a route for a second peer; [Peer] branch itself is unchanged.
    server_conf.write_text(server_conf.read_text() + "\n" + peer_section(
        name="other", psk_identity="other", psk_file=tmp_path / "psk.hex",
        allowed_ips=("100.64.0.3/32", "100.64.9.0/24")))
    assert server.pid is not None
    os.kill(server.pid, signal.SIGHUP)
    assert server.wait_message("RELOADING=1", timeout=10)
    assert server.wait_message("READY=1", timeout=10, count=2)
    assert wait_until(lambda: "100.64.9.0/24" in topo.exec(server_ns, ["ip", "route"]).stdout,
                      timeout=5)
    snap = server.status()
    assert [p["name"] for p in snap["peers"]] == ["branch", "other"]
    branch = snap["peers"][0]
    assert branch["state"] == "established" and branch["handshakes"] == 1
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")
    assert client.status()["peers"][0]["handshakes"] == 1
