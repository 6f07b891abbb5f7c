"""Full tunnel with real daemons: ``AllowedIPs = 0.0.0.0/0, ::/0`` on the client.

Topology::

    client ─── server ─── beyond
    198.18.0.2  198.18.0.1 / 198.18.3.1    198.18.3.2
    2001:db8::2 2001:db8::1 / 2001:db8:3::1 2001:db8:3::2

The client's main table has a default route via the server's underlay address, and
the server namespace forwards, so "beyond" is reachable outside the tunnel too: the
tests tell the paths apart by the kernel's route lookup (``ip route get``: dev dvc0 or
the veth) and by the server daemon's per-peer packet counters.  DNS goes to a fake
``resolvectl`` (or ``resolvconf``) first on the daemon's PATH, which records its
arguments.  After a stop the rules and routes are as before the start.
"""

from __future__ import annotations

import difflib
import os
import signal
from pathlib import Path

import pytest

from tests.netns.harness import Daemon, Topology, ip, ping, psk_pair
from tests.util import ProcessGroup, wait_until

BEYOND4, BEYOND6 = "198.18.3.2", "2001:db8:3::2"
FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> {log}
if [ "$(basename "$0")" = resolvconf ] && [ "$1" = -a ]; then cat >> {log}; fi
exit 0
"""


class Net:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.server, self.client, self.beyond = (topo.netns("s"), topo.netns("c"),
                                                 topo.netns("b"))
        _, self.c_dev = topo.veth(self.server, ["198.18.0.1/24", "2001:db8::1/64"],
                                  self.client, ["198.18.0.2/24", "2001:db8::2/64"])
        topo.veth(self.server, ["198.18.3.1/24", "2001:db8:3::1/64"],
                  self.beyond, ["198.18.3.2/24", "2001:db8:3::2/64"])
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            topo.exec(self.server, ["sysctl", "-qw", key])
        ip("-n", self.client, "route", "add", "default", "via", "198.18.0.1")
        ip("-n", self.client, "-6", "route", "add", "default", "via", "2001:db8::1")
        for dst, via in (("100.64.0.0/24", "198.18.3.1"), ("198.18.0.0/24", "198.18.3.1"),
                         ("fd00::/64", "2001:db8:3::1"), ("2001:db8::/64", "2001:db8:3::1")):
            ip("-n", self.beyond, "route", "add", dst, "via", via)
        # Resolve the server's neighbours beyond first: on a new veth the first IPv6
        # neighbour solicitation is often lost and retried 1 s (RetransTimer) later,
        # which made the tunnel's first echo miss ping's deadline now and then.
        for addr in (BEYOND4, BEYOND6):
            ping(topo, self.server, addr, "--count", "1", "--timeout", "5")

    def routing(self) -> str:
        """The client's rules and routes of every table, but the tunnel interface's own
        and the kernel's (connected, local, link-local: IPv6 adds some late)."""
        out = []
        for args in (["rule"], ["-6", "rule"], ["route", "show", "table", "all"],
                     ["-6", "route", "show", "table", "all"]):
            text = ip("-n", self.client, *args).stdout
            out += [line for line in text.splitlines()
                    if "dvc0" not in line and "proto kernel" not in line]
        return "\n".join(out)

    def same_as(self, before: str) -> str:
        """'' when the routing is as ``before``, else the difference."""
        now = self.routing()
        return "\n".join(difflib.unified_diff(before.splitlines(), now.splitlines(),
                                               "before", "now", lineterm=""))

    def dev_to(self, dst: str) -> str:
        res = self.topo.exec(self.client, ["ip", "route", "get", dst])
        if res.returncode != 0:
            return f"error: {res.stderr.strip()}"
        words = res.stdout.split()
        return words[words.index("dev") + 1] if "dev" in words else res.stdout.strip()


def _start(net: Net, procs: ProcessGroup, tmp_path: Path, daemons: list[Daemon],
           fakebin: Path | None = None, **client_keys: object) -> tuple[Daemon, Daemon]:
    server_conf, client_conf = psk_pair(tmp_path)
    text = client_conf.read_text().replace("AllowedIPs = 100.64.0.0/24, fd00::/64",
                                           "AllowedIPs = 0.0.0.0/0, ::/0")
    extra = "".join(f"{k} = {v}\n" for k, v in client_keys.items())
    client_conf.write_text(text.replace("[Peer]", extra + "\n[Peer]", 1))
    server_conf.write_text(server_conf.read_text().replace(
        "AllowedIPs = 100.64.0.2/32, fd00::2/128",
        "AllowedIPs = 100.64.0.2/32, fd00::2/128"))
    env = {"PATH": f"{fakebin}:{os.environ['PATH']}"} if fakebin else None
    server = Daemon(procs, net.server, server_conf, f"s{len(daemons)}",
                    server_conf.with_suffix(".sock"), tmp_path)
    daemons.append(server)
    server.wait_ready()
    client = Daemon(procs, net.client, client_conf, f"c{len(daemons)}",
                    client_conf.with_suffix(".sock"), tmp_path, extra_env=env)
    daemons.append(client)
    client.wait_ready()
    assert client.wait_connected(), client.proc.describe()
    return server, client


def _fake_tools(tmp_path: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    log = tmp_path / "dns.log"
    for name in names:
        tool = fakebin / name
        tool.write_text(FAKE.format(log=log))
        tool.chmod(0o755)
    return fakebin, log


def _rx(daemon: Daemon) -> int:
    return int(daemon.status()["peers"][0]["rx_packets"])


@pytest.mark.parametrize("backend", ["resolvectl", "resolvconf"])
def test_everything_goes_through_the_tunnel_and_stop_restores(
        topo: Topology, procs: ProcessGroup, tmp_path: Path, daemons: list[Daemon],
        backend: str) -> None:
    net = Net(topo)
    before = net.routing()
    assert net.dev_to(BEYOND4) == net.c_dev  # the underlay reaches it too
    fakebin, log = _fake_tools(tmp_path, (backend,))
    server, client = _start(net, procs, tmp_path, daemons, fakebin,
                            DNS="100.64.0.1, fd00::1, corp.test")
    assert net.dev_to(BEYOND4) == "dvc0" and net.dev_to(BEYOND6) == "dvc0"
    # The daemon's own UDP, and the on-link underlay, keep the real route.
    assert net.dev_to("198.18.0.1") == net.c_dev and net.dev_to("2001:db8::1") == net.c_dev
    rx = _rx(server)
    ping(topo, net.client, BEYOND4, "--count", "3")
    ping(topo, net.client, BEYOND6, "--count", "3")
    assert _rx(server) >= rx + 6  # the echoes came through the tunnel
    ping(topo, net.client, "198.18.0.1", "--count", "2")  # the underlay still works
    rules = ip("-n", net.client, "rule").stdout
    assert "not from all fwmark 0xca6c lookup 51820" in rules
    assert "lookup main suppress_prefixlength 0" in rules
    logged = log.read_text()
    if backend == "resolvectl":
        assert "resolvectl dns dvc0 100.64.0.1 fd00::1" in logged
        assert "resolvectl domain dvc0 ~. corp.test" in logged
    else:
        assert "resolvconf -a dvc0 -m 0 -x" in logged
        assert "nameserver 100.64.0.1\nnameserver fd00::1\nsearch corp.test" in logged
    print(f"\nfull tunnel ({backend}): rules\n{rules}DNS calls:\n{logged}")

    assert client.stop() == 0
    after = log.read_text()
    assert ("resolvectl revert dvc0" in after if backend == "resolvectl"
            else "resolvconf -d dvc0 -f" in after)
    assert not (diff := net.same_as(before)), diff
    assert net.dev_to(BEYOND4) == net.c_dev
    assert server.stop() == 0


@pytest.mark.parametrize("kill_switch", [False, True], ids=["plain", "kill-switch"])
def test_a_crash_leaves_rules_the_next_start_cleans(
        topo: Topology, procs: ProcessGroup, tmp_path: Path, daemons: list[Daemon],
        kill_switch: bool) -> None:
    net = Net(topo)
    before = net.routing()
    keys = {"KillSwitch": "yes"} if kill_switch else {}
    server, client = _start(net, procs, tmp_path, daemons, **keys)
    assert client.pid is not None
    os.kill(client.pid, signal.SIGKILL)
    client.proc.wait(10)
    assert wait_until(lambda: "dvc0" not in ip("-n", net.client, "link").stdout, 10)
    after_crash = net.dev_to(BEYOND4)
    if kill_switch:  # nothing leaves outside the tunnel while it is down
        assert after_crash.startswith("error") or "unreachable" in after_crash, after_crash
    else:  # the rules point to an empty table: the normal route again
        assert after_crash == net.c_dev
    print(f"\nafter a crash ({'kill switch' if kill_switch else 'no kill switch'}): "
          f"route to {BEYOND4}: {after_crash}")
    client2 = Daemon(procs, net.client, client.conf, f"c2{len(daemons)}",
                     client.status_socket, tmp_path)
    daemons.append(client2)
    client2.wait_ready()
    assert client2.wait_connected()
    assert net.dev_to(BEYOND4) == "dvc0"
    assert client2.proc.wait_for("stale", 5, stream="stderr"), client2.proc.describe()
    assert client2.stop() == 0 and server.stop() == 0
    assert not (diff := net.same_as(before)), diff
