"""Operators' first day with real daemons in namespaces: a wrong PSK named by ``probe``
and in the server's log and counters; a second instance refused (first keeps its socket);
a bind conflict named with its address and config line, failing before it touches an
interface (the first tunnel still carries); a busy TUN device with its holder.

Topology: two namespaces joined by a veth pair (tests/netns/harness.py ``two_hosts``)::

    [dvs-XXXX] 198.18.0.1/24 ══ veth ══ 198.18.0.2/24 [dvc-XXXX]
       dtlsvpn server (PSK)               dtlsvpn probe
"""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.netns.harness import (
    PYTHON,
    RunDaemon,
    Topology,
    ping,
    psk_pair,
    secret_file,
    start_pair,
    two_hosts,
)
from tests.util import wait_until

DTLSVPN = [PYTHON, "-m", "dtlsvpn"]


def test_wrong_psk_named_by_probe_and_server(topo: Topology, run_daemon: RunDaemon,
                                             tmp_path: Path) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, _ = psk_pair(tmp_path)
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    wrong = secret_file(tmp_path / "wrong.hex", secrets.token_hex(32) + "\n")
    res = topo.exec(client_ns, [*DTLSVPN, "probe", "198.18.0.1:4433", "--psk-identity",
                                "branch", "--psk-file", str(wrong), "--timeout", "8"],
                    timeout=30)
    out = res.stdout + res.stderr
    print(out)
    assert res.returncode == 1 and "Traceback" not in out
    assert "handshake: FAILED" in out and "wrong PSK or key?" in out, out

    def counted() -> bool:
        return server.status()["interface"]["handshake_failures"].get("wrong_key", 0) >= 1

    assert wait_until(counted, timeout=10, interval=0.2), server.status()
    assert wait_until(lambda: "refused handshake from 198.18.0.2" in server.proc.stderr(),
                      timeout=10, interval=0.2), server.proc.describe()
    line = next(x for x in server.proc.stderr().splitlines() if "refused handshake" in x)
    print(line)
    assert "PSK identity branch: Finished failed authentication — wrong key?" in line
    assert "WARNING" in line


def _next_ifindex(topo: Topology, ns: str) -> int:
    """The index the namespace gives its next interface (a TUN made and closed in between
    took one: indexes only grow), found by adding and deleting one."""
    assert topo.exec(ns, ["ip", "tuntap", "add", "dev", "dvprobe", "mode", "tun"]).returncode == 0
    res = topo.exec(ns, ["ip", "-o", "link", "show", "dvprobe"])
    assert topo.exec(ns, ["ip", "link", "del", "dvprobe"]).returncode == 0
    return int(res.stdout.split(":", 1)[0])


def test_second_instance_and_bind_conflict(topo: Topology, run_daemon: RunDaemon,
                                           tmp_path: Path) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path)
    sock = server_conf.with_suffix(".sock")
    server, _client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    inode = sock.stat().st_ino
    res = topo.exec(server_ns, [*DTLSVPN, "run", str(server_conf)], timeout=30)
    print(res.stderr)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "another dtlsvpn already runs this tunnel" in res.stderr, res.stderr
    assert sock.is_socket() and sock.stat().st_ino == inode
    assert server.status()["interface"]["name"] == "server"  # the first one still answers

    other, _ = psk_pair(tmp_path, tag="-b")  # same ListenAddress, own device and socket
    text = other.read_text().replace("Device = dvs0", "Device = dvs1")
    other.write_text(text)
    line_no = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("ListenAddress"))
    before = _next_ifindex(topo, server_ns)
    res = topo.exec(server_ns, [*DTLSVPN, "run", str(other)], timeout=30)
    print(res.stderr)
    assert res.returncode == 1
    assert f"cannot listen on 198.18.0.1:4433 ({other}:{line_no} ListenAddress)" in res.stderr
    assert "already in use by" in res.stderr, res.stderr
    # It failed before its TUN: no dvs1 came and went, no address or route was tried
    # (the running tunnel's routes once drew "already exists; left as it is").
    assert "already exists" not in res.stderr, res.stderr
    assert _next_ifindex(topo, server_ns) == before + 1  # (only the probe's own)
    assert not other.with_suffix(".sock").exists()
    # Transport = tcp: its TCP port is the only way in, so a taken one is fatal too.
    tcp_only, _ = psk_pair(tmp_path, tag="-t", transport="tcp")
    text = tcp_only.read_text().replace("Device = dvs0", "Device = dvs2")
    tcp_only.write_text(text)
    line_no = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("ListenAddress"))
    before = _next_ifindex(topo, server_ns)
    res = topo.exec(server_ns, [*DTLSVPN, "run", str(tcp_only)], timeout=30)
    print(res.stderr)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"cannot listen on TCP 198.18.0.1:4433 ({tcp_only}:{line_no} ListenAddress): " \
        "the TCP port is already in use by python (pid " in res.stderr, res.stderr
    assert "already exists" not in res.stderr, res.stderr
    assert _next_ifindex(topo, server_ns) == before + 1
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")  # untouched

    third, _ = psk_pair(tmp_path, tag="-c", port=4434)  # same Device dvs0, own port, socket
    text = third.read_text()
    line_no = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("Device"))
    res = topo.exec(server_ns, [*DTLSVPN, "run", str(third)], timeout=30)
    print(res.stderr)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"cannot open TUN device dvs0 ({third}:{line_no} Device): it is busy" in res.stderr
    assert f"held by python (pid {server.pid})" in res.stderr, res.stderr
    assert server.stop() == 0
