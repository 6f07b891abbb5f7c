"""Transport = tcp in namespaces: a TCP-only server (no UDP socket), a TCP-only client
dialling it by name, and a reload that removes the peer closing its TLS connection.

    server (198.18.0.1) ─── client (198.18.0.2; office.test → 198.18.0.1 in its hosts)

and a full tunnel over TCP whose TLS dial carries FwMark (the server also at 198.18.3.1,
reached by the client's default route).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from tests.netns.harness import (
    Daemon,
    RunDaemon,
    Topology,
    ip,
    ping,
    psk_pair,
    secret_file,
    start_pair,
    two_hosts,
)
from tests.util import require_tools, wait_until

pytestmark = pytest.mark.usefixtures("root")
FAR = "198.18.3.1"  # a server address behind the client's default route


def _carried(daemon: Daemon) -> bool:
    """Up over TCP (a TCP-only peer shows ``tcp`` before it is up)."""
    peer = daemon.status()["peers"][0]
    return bool(peer["transport"] == "tcp" and peer["state"] == "established")


def _sockets(topo: Topology, ns: str, flags: str) -> str:
    res = topo.exec(ns, ["ss", "-H", flags])
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_tcp_only_server_and_client_by_name(topo: Topology, run_daemon: RunDaemon,
                                            tmp_path: Path) -> None:
    server_ns, client_ns = two_hosts(topo)
    etc = Path("/etc/netns") / client_ns
    made_top = not etc.parent.exists()
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text("127.0.0.1 localhost\n198.18.0.1 office.test\n")
        server_conf, client_conf = psk_pair(tmp_path, server_ip="198.18.0.1",
                                            transport="tcp")
        client_conf.write_text(client_conf.read_text().replace(
            "Endpoint = 198.18.0.1:4433", "Endpoint = office.test:4433"))
        server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
        server.wait_ready()
        assert ":4433" in _sockets(topo, server_ns, "-ltn")  # listening on TCP ...
        assert ":4433" not in _sockets(topo, server_ns, "-lun")  # ... and not on UDP
        client = run_daemon(client_ns, client_conf, client_conf.with_suffix(".sock"))
        client.wait_ready()
        assert wait_until(lambda: _carried(client), 20), \
            client.proc.describe()
        assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")
        assert server.status()["peers"][0]["transport"] == "tcp"
        assert not _sockets(topo, client_ns, "-un").strip()  # the client has no UDP socket
        assert "ESTAB" in _sockets(topo, server_ns, "-tn")

        # A reload that removes the peer closes its TLS connection.
        server_conf.write_text(server_conf.read_text().replace("= branch", "= other"))
        assert server.pid is not None
        os.kill(server.pid, signal.SIGHUP)
        assert server.wait_message("READY=1", timeout=10, count=2)
        assert wait_until(lambda: "peer branch: TCP carrier closed" in server.proc.stderr(),
                          10), server.proc.describe()
        assert wait_until(lambda: not _carried(client), 10)
        assert client.status()["peers"][0]["transport"] == "tcp"  # (TCP only, down)
        assert server.stop() == 0 and client.stop() == 0
    finally:
        for f in etc.iterdir():
            f.unlink()
        etc.rmdir()
        if made_top:
            etc.parent.rmdir()


def test_a_full_tunnel_marks_its_tcp_dial(topo: Topology, run_daemon: RunDaemon,
                                          tmp_path: Path) -> None:
    """A full tunnel (AllowedIPs = 0.0.0.0/0) over TCP only: the TLS connection carries
    FwMark (SO_MARK 0xca6c) as the UDP socket would, so the kernel routes it by the main
    table and not into the tunnel it carries (without the mark the server's address is
    routed into dvc0: the dial could never connect)."""
    server_ns, client_ns = two_hosts(topo)
    # The server listens on an address the client reaches by its default route (a full
    # tunnel leaves more specific main-table routes alone, so the veth's own would do).
    ip("-n", server_ns, "addr", "add", f"{FAR}/32", "dev", "lo")
    ip("-n", client_ns, "route", "add", "default", "via", "198.18.0.1")
    server_conf, client_conf = psk_pair(tmp_path, server_ip=FAR, transport="tcp")
    text = client_conf.read_text()
    assert "AllowedIPs = 100.64.0.0/24, fd00::/64" in text
    client_conf.write_text(text.replace("AllowedIPs = 100.64.0.0/24, fd00::/64",
                                        "AllowedIPs = 0.0.0.0/0, ::/0"))
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    client = run_daemon(client_ns, client_conf, client_conf.with_suffix(".sock"))
    client.wait_ready()
    assert client.wait_connected(), client.proc.describe()
    assert client.status()["peers"][0]["transport"] == "tcp"
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")
    conns = [line for line in _sockets(topo, client_ns, "-tne").splitlines()
             if f"{FAR}:4433" in line]
    assert len(conns) == 1 and "fwmark:0xca6c" in conns[0], conns
    plain = topo.exec(client_ns, ["ip", "route", "get", FAR]).stdout
    marked = topo.exec(client_ns, ["ip", "route", "get", FAR, "mark", "0xca6c"]).stdout
    assert "dev dvc0" in plain and "dev dvc0" not in marked, (plain, marked)
    print(f"\nTCP dial of a full tunnel: {conns[0].split()[3:5]} fwmark:0xca6c; "
          f"unmarked route: {plain.strip()}")
    assert client.stop() == 0 and server.stop() == 0


DROP_ALL = ("table inet dvdead { chain i { type filter hook input priority 0; "
            "tcp sport 4433 drop; }; chain o { type filter hook output priority 0; "
            "tcp dport 4433 drop; }; }")


def test_a_client_that_vanishes_over_tcp_is_closed_as_dead(topo: Topology,
                                                           run_daemon: RunDaemon,
                                                           tmp_path: Path) -> None:
    """The client's host stops answering on TCP (nftables drops its TLS connection both
    ways: no RST, no FIN, so the server's kernel keeps the connection): the server closes
    the link after DeadPeerTimeout of silence, at WARNING, counted dead_peer."""
    require_tools("nft")
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, server_ip="198.18.0.1", transport="tcp")
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert wait_until(lambda: _carried(server), 10)
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")
    res = topo.exec(client_ns, ["nft", DROP_ALL])
    assert res.returncode == 0, res.stderr
    gone = time.monotonic()
    said = "unresponsive over TCP (nothing from 198.18.0.2:"
    assert wait_until(lambda: said in server.proc.stderr(), 20), server.proc.describe()
    took = time.monotonic() - gone
    line = next(x for x in server.proc.stderr().splitlines() if said in x)
    assert "WARNING" in line and line.endswith("TCP link closed"), line
    assert server.status()["interface"]["tcp_closes"].get("dead_peer") == 1
    print(f"\nsilent client over TCP: closed by the server {took:.1f}s after the drop "
          f"(DeadPeerTimeout 8 s): {line.split('dtlsvpn: ', 1)[-1]}")
    assert server.stop() == 0 and client.stop() == 0


def test_a_reload_with_the_fixed_psk_dials_at_once(topo: Topology, run_daemon: RunDaemon,
                                                   tmp_path: Path) -> None:
    """TCP only with the wrong PSK: the TLS redials back off (16 s after four failures).
    The PSK file fixed in place and SIGHUP: the client dials at once with the new key and
    connects well before the backed-off redial was due."""
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = psk_pair(tmp_path, server_ip="198.18.0.1", transport="tcp")
    right = (tmp_path / "psk.hex").read_text()
    wrong = secret_file(tmp_path / "wrong.hex", secrets.token_hex(32) + "\n")
    text = client_conf.read_text()
    assert f"PSKFile = {tmp_path / 'psk.hex'}" in text
    client_conf.write_text(text.replace(f"PSKFile = {tmp_path / 'psk.hex'}",
                                        f"PSKFile = {wrong}"))
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    client = run_daemon(client_ns, client_conf, client_conf.with_suffix(".sock"))
    client.wait_ready()

    def failures() -> int:
        return client.proc.stderr().count("handshake failed over TCP")

    assert wait_until(lambda: failures() >= 4, 30), client.proc.describe()
    secret_file(wrong, right)
    assert client.pid is not None
    os.kill(client.pid, signal.SIGHUP)
    assert client.wait_message("READY=1", timeout=10, count=2)
    assert wait_until(lambda: _carried(client), 5), client.proc.describe()  # (not 16 s)
    assert "3 received" in ping(topo, client_ns, "100.64.0.1", "--count", "3")
    assert server.stop() == 0 and client.stop() == 0
