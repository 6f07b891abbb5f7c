"""The server's certificate renewed in place and reloaded (SIGHUP), with real daemons.

Topology (testing.md address plan)::

    [dvs-XXXX] 198.18.0.1/24 ══ veth ══ 198.18.0.2/24 [dvc-XXXX]
       dtlsvpn server dvs0 100.64.0.1       dvc0 100.64.0.2 dtlsvpn client, ping, probe

A ping every 10 ms runs through the established tunnel while the server's
certificate file is rewritten with a new certificate and a new key and the server gets
SIGHUP; then ``dtlsvpn probe`` (as a second, not connected [Peer]) shows the new serial.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

from tests.netns.harness import PYTHON, RunDaemon, Topology, cert_pair, start_pair, two_hosts
from tests.pki import Pki, issue
from tests.support.conf import peer_section
from tests.util import ProcessGroup

PINGS = 400  # at 10 ms: 4 s, the reload in the middle


def test_server_certificate_renewed_in_place(topo: Topology, run_daemon: RunDaemon,
                                             procs: ProcessGroup, tmp_path: Path,
                                             pki: Pki) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = cert_pair(tmp_path, pki)
    own = tmp_path / "own"
    own.mkdir()
    cert, key = own / "server.pem", own / "server.key"
    shutil.copy(pki.server.cert_path, cert)
    shutil.copy(pki.server.key_path, key)
    os.chmod(key, 0o600)
    text = server_conf.read_text()
    text = text.replace(str(pki.server.cert_path), str(cert))
    text = text.replace(str(pki.server.key_path), str(key))
    prober = issue(own, "probe", pki.ca, server=False, common_name="probe.test")
    server_conf.write_text(text + "\n" + peer_section(name="probe", common_name="probe.test",
                                                      allowed_ips="100.64.0.9/32"))
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)

    def probe() -> dict:
        res = topo.exec(client_ns, [PYTHON, "-m", "dtlsvpn", "probe", "198.18.0.1:4433",
                                    "--ca", str(pki.ca.cert_path), "--server-name",
                                    "server.test", "--cert", str(prober.cert_path),
                                    "--key", str(prober.key_path), "--json",
                                    "--timeout", "6"], timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
        return dict(json.loads(res.stdout))

    before = probe()["certificate"]
    assert before["serial"] == f"{pki.server.cert.serial_number:x}", before
    handshakes = server.status()["peers"][0]["handshakes"]

    pinger = procs.start(["ip", "netns", "exec", client_ns, "ping", "-q", "-i", "0.01",
                          "-c", str(PINGS), "-W", "1", "100.64.0.1"],
                         name="ping", timeout=60, stdin_pipe=False)
    time.sleep(1.5)  # (pings flowing before the reload)
    renewed = issue(own, "server", pki.ca, server=True)  # rewrites server.pem and .key
    assert server.pid is not None
    os.kill(server.pid, signal.SIGHUP)
    assert pinger.wait(30) == 0, pinger.stdout() + pinger.stderr()
    summary = pinger.stdout()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", summary)
    assert m is not None, summary
    sent, received = int(m.group(1)), int(m.group(2))
    print(f"\nping every 10 ms across the reload: {sent} sent, {received} received")
    assert sent == PINGS and received == sent, summary

    after = probe()["certificate"]
    print(f"probe before: serial {before['serial']}, after: serial {after['serial']}")
    assert after["serial"] == f"{renewed.cert.serial_number:x}" != before["serial"], after
    peers = {p["name"]: p for p in server.status()["peers"]}
    laptop = peers["laptop"]
    assert laptop["state"] == "established" and laptop["handshakes"] == handshakes, laptop
    assert client.status()["peers"][0]["state"] == "established"
    log = server.proc.stderr() + server.proc.stdout()
    assert "reload: credentials changed: Certificate" in log, log
    assert f"serial {renewed.cert.serial_number:x}" in log and "new key" in log, log
