"""Transport = tcp in namespaces: a TCP-only server (no UDP socket), a TCP-only client
dialling it by name, and a reload that removes the peer closing its TLS connection.

    server (198.18.0.1) ─── client (198.18.0.2; office.test → 198.18.0.1 in its hosts)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.netns.harness import RunDaemon, Topology, ping, psk_pair, two_hosts
from tests.util import wait_until

pytestmark = pytest.mark.usefixtures("root")


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
        assert wait_until(lambda: client.status()["peers"][0]["transport"] == "tcp", 20), \
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
        assert wait_until(lambda: client.status()["peers"][0]["transport"] == "udp", 10)
        assert server.stop() == 0 and client.stop() == 0
    finally:
        for f in etc.iterdir():
            f.unlink()
        etc.rmdir()
        if made_top:
            etc.parent.rmdir()
