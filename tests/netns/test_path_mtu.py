"""The client's PMTU ceiling follows its interface MTU under a running tunnel.

Two namespaces on one veth pair (``two_hosts``'s addresses).  With the tunnel up and
idle (no confirmation probes, so no black-hole detection) the client's veth MTU is
lowered: the kernel's RTM_NEWLINK makes the client read its connected socket's
``IP_MTU`` again (same address, same route: no rebind, no redial), the association's
search drops to it, and the TUN MTU and ``dtlsvpn status`` follow.  Raised to 1500
again, the search that had reached the 1400 ceiling climbs back at once, with the same
association (not at its 600 s raise timer, nor at the renewal).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.netns.harness import (
    PYTHON,
    TOOLS,
    RunDaemon,
    Topology,
    ip,
    link_mtu,
    ping,
    psk_pair,
    start_pair,
)
from tests.util import wait_until

LOWER = 1400


def test_a_link_mtu_is_followed_down_and_up_without_a_redial(
        topo: Topology, run_daemon: RunDaemon, tmp_path: Path) -> None:
    server_ns, client_ns = topo.netns("s"), topo.netns("c")
    _, client_dev = topo.veth(server_ns, ["198.18.0.1/24", "2001:db8::1/64"],
                              client_ns, ["198.18.0.2/24", "2001:db8::2/64"])
    server_conf, client_conf = psk_pair(tmp_path)
    _server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)

    def peer() -> dict:
        return client.status()["peers"][0]

    assert wait_until(lambda: peer()["plpmtu"] == 1500, timeout=30, interval=0.2), peer()
    before = peer()
    topo.exec(client_ns, ["ip", "link", "set", "dev", client_dev, "mtu", str(LOWER)])
    start = time.monotonic()
    assert wait_until(lambda: peer()["plpmtu"] == LOWER, timeout=10, interval=0.1), peer()
    took = time.monotonic() - start
    after = peer()
    assert after["state"] == "established"
    assert after["handshakes"] == before["handshakes"]  # the same association
    assert after["roams"] == before["roams"]
    want = LOWER - 20 - 8 - after["record_overhead"]
    assert wait_until(lambda: link_mtu(topo, client_ns, "dvc0") == want, timeout=5,
                      interval=0.1), link_mtu(topo, client_ns, "dvc0")
    res = topo.exec(client_ns, [PYTHON, "-m", "dtlsvpn", "status",
                                "--socket", str(client.status_socket)])
    assert f"path mtu: {LOWER}, inner mtu: {want}" in res.stdout, res.stdout
    print(f"veth MTU 1500 → {LOWER}: the client's plpmtu followed in {took:.2f} s, "
          f"TUN MTU {want}, no redial")
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")
    topo.exec(client_ns, ["ip", "link", "set", "dev", client_dev, "mtu", "1500"])
    start = time.monotonic()
    assert wait_until(lambda: peer()["plpmtu"] == 1500, timeout=10, interval=0.1), peer()
    took = time.monotonic() - start
    back = 1500 - 20 - 8 - after["record_overhead"]
    assert wait_until(lambda: link_mtu(topo, client_ns, "dvc0") == back, timeout=5,
                      interval=0.1), link_mtu(topo, client_ns, "dvc0")
    final = peer()
    assert final["state"] == "established"
    assert final["handshakes"] == before["handshakes"] and final["roams"] == before["roams"]
    print(f"veth MTU {LOWER} → 1500: plpmtu back at 1500 in {took:.2f} s, TUN MTU {back}")
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3", "--df",
                                "--size", str(back - 28))  # a full-size inner packet


def test_a_laptop_moving_between_uplinks_of_two_mtus(
        topo: Topology, run_daemon: RunDaemon, tmp_path: Path) -> None:
    """Wi-Fi (1500) → a 1400 uplink (a tethered phone) → Wi-Fi again, with a connection
    ID (the same association throughout): both ends' searches follow down and back up
    (the client by its rebound socket's ``IP_MTU``, the server by the path MTU towards
    the moved address), and a full-size inner packet crosses at the end."""
    server_ns, router_ns, client_ns = topo.netns("s"), topo.netns("r"), topo.netns("c")
    topo.veth(server_ns, ["198.18.0.1/24"], router_ns, ["198.18.0.254/24"])
    wifi, _ = topo.veth(client_ns, ["198.18.1.2/24"], router_ns, ["198.18.1.1/24"])
    phone, phone_r = topo.veth(client_ns, ["198.18.2.2/24"], router_ns, ["198.18.2.1/24"])
    for ns, dev in ((client_ns, phone), (router_ns, phone_r)):
        ip("-n", ns, "link", "set", "dev", dev, "mtu", str(LOWER))
    topo.exec(router_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    ip("-n", server_ns, "route", "replace", "default", "via", "198.18.0.254")
    ip("-n", client_ns, "route", "replace", "default", "via", "198.18.1.1")
    server_conf, client_conf = psk_pair(tmp_path, connection_id=True)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)

    def both() -> tuple[int, int]:
        return client.status()["peers"][0]["plpmtu"], server.status()["peers"][0]["plpmtu"]

    assert wait_until(lambda: both() == (1500, 1500), timeout=30, interval=0.2), both()
    handshakes = client.status()["peers"][0]["handshakes"]
    figures = []
    for dev, gateway, want in ((wifi, "198.18.2.1", LOWER), (phone, "198.18.1.1", 1500)):
        ip("-n", client_ns, "link", "set", dev, "down")  # the other uplink takes over
        ip("-n", client_ns, "route", "replace", "default", "via", gateway)
        start = time.monotonic()
        # traffic through the tunnel: the server's probes need data to confirm with
        topo.exec(client_ns, [*TOOLS, "ping", "100.64.0.1", "--count", "20", "--timeout",
                              "0.2"], timeout=30)  # (the first may be lost in the change)
        assert wait_until(lambda w=want: both()[0] == w, timeout=15, interval=0.05), both()
        took = time.monotonic() - start
        assert wait_until(lambda w=want: both() == (w, w), timeout=15, interval=0.05), both()
        figures.append(f"{want} (client {took:.2f} s, server {time.monotonic() - start:.2f} s)")
        ip("-n", client_ns, "link", "set", dev, "up")
        if dev == wifi:
            ip("-n", client_ns, "route", "replace", "default", "via", gateway)
    peer = client.status()["peers"][0]
    assert peer["state"] == "established" and peer["handshakes"] == handshakes
    inner = 1500 - 20 - 8 - peer["record_overhead"]
    assert wait_until(lambda: link_mtu(topo, client_ns, "dvc0") == inner, timeout=5,
                      interval=0.1), link_mtu(topo, client_ns, "dvc0")
    print("uplinks 1500 → 1400 → 1500 under a CID tunnel: " + ", then ".join(
        figures) + f", handshakes {handshakes} throughout")
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3", "--df",
                                "--size", str(inner - 28))
