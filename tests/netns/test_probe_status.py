"""``dtlsvpn probe`` against a real daemon, and ``dtlsvpn status`` (human and Prometheus).

Topology: the two namespaces of test_tunnel.py joined by a veth pair of MTU 1400::

    [dvs-XXXX] 198.18.0.1/24 ══ veth, MTU 1400 ══ 198.18.0.2/24 [dvc-XXXX]
       dtlsvpn server (PSK or certificates)          dtlsvpn probe / dtlsvpn client
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from tests.netns.harness import (
    PYTHON,
    RunDaemon,
    Topology,
    cert_pair,
    ping,
    psk_pair,
    start_pair,
    two_hosts,
)
from tests.util import wait_until

DTLSVPN = [PYTHON, "-m", "dtlsvpn"]
PATH_MTU = 1400


def probe(topo: Topology, ns: str, *args: str) -> tuple[int, str]:
    res = topo.exec(ns, [*DTLSVPN, "probe", *args], timeout=30)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.stdout + res.stderr


def test_probe_psk_and_certificates(topo: Topology, run_daemon: RunDaemon, tmp_path: Path,
                                    pki) -> None:
    server_ns, client_ns = two_hosts(topo, mtu=PATH_MTU)
    server_conf, _ = psk_pair(tmp_path, tag="-psk")
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    psk = str(tmp_path / "psk-psk.hex")

    rc, out = probe(topo, client_ns, "198.18.0.1:4433", "--psk-identity", "branch",
                    "--psk-file", psk, "--json", "--timeout", "8")
    assert rc == 0, out
    r = json.loads(out)
    print(f"probe (PSK): {r}")
    assert r["handshake"] is True and r["full_handshake"] is True and r["error"] is None
    assert "PSK" in r["suite"]
    assert r["heartbeat"] is True and 0 < r["heartbeat_rtt_ms"] < 500
    assert r["plpmtu"] == PATH_MTU
    assert r["inner_mtu"] == PATH_MTU - 20 - 8 - r["record_overhead"]
    assert r["ticket"] is True and r["resumed"] is True
    # The daemon saw two handshakes from the probe: a full one, then a resumed one.
    peer = server.status()["peers"][0]
    assert peer["handshakes"] == 2 and peer["resumed"] is True

    rc, out = probe(topo, client_ns, "198.18.0.1:4433", "--psk-identity", "nobody",
                    "--psk-file", psk, "--timeout", "4")
    assert rc == 1 and "handshake: FAILED" in out, out
    rc, out = probe(topo, client_ns, "198.18.0.1:4499", "--insecure", "--timeout", "2")
    assert rc == 1 and "handshake: FAILED" in out, out
    rc, out = probe(topo, client_ns, "198.18.0.1:4433", "--timeout", "2")
    assert rc == 2 and "--insecure" in out, out  # no way to verify the server: usage error

    assert server.stop() == 0
    server_conf, _ = cert_pair(tmp_path, pki)
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    cert_args = ["--cert", str(pki.client.cert_path), "--key", str(pki.client.key_path)]
    rc, out = probe(topo, client_ns, "198.18.0.1:4433", "--ca", str(pki.ca.cert_path),
                    "--server-name", "server.test", *cert_args, "--timeout", "8")
    print(f"probe (certificates):\n{out}")
    assert rc == 0, out
    assert re.search(r"^  handshake: ok in [\d.]+ ms \(full\)$", out, re.M), out
    assert re.search(r"^  suite: TLS_ECDHE_ECDSA_\w+$", out, re.M), out
    assert re.search(r"^  heartbeat rtt: [\d.]+ ms$", out, re.M), out
    assert re.search(rf"^  path mtu: {PATH_MTU}, inner mtu: \d+$", out, re.M), out
    assert re.search(r"^  resumed: yes \(ticket accepted, [\d.]+ ms\)$", out, re.M), out
    # The wrong name fails certificate verification: exit status 1.
    rc, out = probe(topo, client_ns, "198.18.0.1:4433", "--ca", str(pki.ca.cert_path),
                    "--server-name", "other.test", *cert_args, "--timeout", "4")
    assert rc == 1 and "handshake: FAILED" in out, out


# --- Prometheus text format 0.0.4, parsed strictly ------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? (\S+)$")
_HELP = re.compile(rf"^# HELP ({_NAME}) (.+)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples keyed by (name, labels) and each family's type; AssertionError on any
    deviation from the format (and from the conventions the project promises)."""
    assert text.endswith("\n") and "\r" not in text
    samples: Samples = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    current: str | None = None
    finished: set[str] = set()
    for line in text[:-1].split("\n"):
        if m := _HELP.match(line):
            name = m.group(1)
            assert name not in helps, f"second HELP for {name}"
            assert name not in types, f"HELP after TYPE for {name}"
            helps.add(name)
            if current is not None:
                finished.add(current)
            current = name
            continue
        if m := _TYPE.match(line):
            name, kind = m.groups()
            assert name == current and name not in types, line
            types[name] = kind
            if kind == "counter":
                assert name.endswith("_total"), f"counter {name} without _total"
            continue
        assert not line.startswith("#"), f"unexpected comment {line!r}"
        m = _SAMPLE.match(line)
        assert m is not None, f"malformed sample {line!r}"
        name, labels, value = m.groups()
        assert name == current and name in types, f"sample outside its family: {line!r}"
        assert name not in finished
        pairs = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"', labels or "")
        key = (name, frozenset(pairs))
        assert len(key[1]) == len(pairs) and key not in samples, f"duplicate {line!r}"
        number = float(value)
        assert not math.isnan(number), line
        if types[name] == "counter":
            assert number >= 0, line
        samples[key] = number
    assert helps == set(types), "a family without TYPE"
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_status_human_and_prometheus(topo: Topology, run_daemon: RunDaemon,
                                     tmp_path: Path) -> None:
    server_ns, client_ns = two_hosts(topo, mtu=PATH_MTU)
    server_conf, client_conf = psk_pair(tmp_path, heartbeat_interval=0.3)
    started = time.time()
    server, _client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert "5 received" in ping(topo, client_ns, "100.64.0.1", "--count", "5", "--size", "1000")
    # Drops with a reason: a destination no peer owns (interface-wide, on the server), and a
    # source the client may not use (charged to the peer as spoofed_source).
    topo.exec(server_ns, [PYTHON, "-m", "tests.netns.tools", "ping", "100.64.0.77",
                          "--count", "1", "--timeout", "0.3"])
    topo.exec(client_ns, ["ip", "addr", "add", "100.64.0.50/32", "dev", "lo"])
    spoof = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('100.64.0.50', 0)); [s.sendto(b'x', ('100.64.0.1', 9)) for _ in range(3)]")
    assert topo.exec(client_ns, [PYTHON, "-c", spoof]).returncode == 0

    def measured() -> bool:
        p = server.status()["peers"][0]
        return (p["heartbeat_rtt_ms"] is not None and p["plpmtu"] == PATH_MTU
                and p["drops"].get("spoofed_source") == 3)

    assert wait_until(measured, timeout=15, interval=0.2), server.status()

    res = topo.exec(server_ns, [*DTLSVPN, "status", "--socket", str(server.status_socket)])
    assert res.returncode == 0, res.stderr
    human = res.stdout
    print(human)
    for pattern in (r"^peer: branch$",
                    r"^  endpoint: 198\.18\.0\.2:\d+ \(udp\)$",
                    r"^  suite: TLS_\w+$",
                    r"^  latest handshake: \d+:\d\d:\d\d ago \(full\)$",
                    r"^  heartbeat rtt: [\d.]+ ms$",
                    rf"^  path mtu: {PATH_MTU}, inner mtu: \d+$",
                    r"^  transfer: [\d.]+ \w+ received \(\d+ packets\), [\d.]+ \w+ sent "
                    r"\(\d+ packets\)$",
                    r"^  drops: .*spoofed_source=3",
                    r"^  drops: .*no_route=1",
                    r"^  tcp mss clamp: \d+ \(IPv4\), \d+ \(IPv6\), \d+ SYNs clamped$",
                    r"^  tun offload: on, TSO on read (on|off); \d+ super-packets read, \d+ "
                    r"written \(\d+ segments\)$"):
        assert re.search(pattern, human, re.M), f"{pattern!r} not in\n{human}"

    # Both daemons' sockets sit in tmp_path: one run reports both instances.
    res = topo.exec(server_ns, [*DTLSVPN, "status", "--prometheus", "--rundir", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    samples, types = parse_prometheus(res.stdout)
    snap = server.status()
    peer = snap["peers"][0]
    s = {"instance": "server", "peer": "branch"}
    c = {"instance": "client", "peer": "office"}
    assert types["dtlsvpn_peer_rx_bytes_total"] == "counter"
    assert types["dtlsvpn_peer_pmtu_bytes"] == "gauge"
    for labels in (s, c):
        assert value(samples, "dtlsvpn_peer_up", **labels) == 1
        assert value(samples, "dtlsvpn_peer_rx_bytes_total", **labels) >= 5 * 1028
        assert value(samples, "dtlsvpn_peer_tx_packets_total", **labels) >= 5
        assert value(samples, "dtlsvpn_peer_pmtu_bytes", **labels) == PATH_MTU
        assert 0 < value(samples, "dtlsvpn_peer_heartbeat_rtt_seconds", **labels) < 0.5
        last = value(samples, "dtlsvpn_peer_last_handshake_seconds", **labels)
        assert started - 1 <= last <= time.time()
        assert value(samples, "dtlsvpn_peer_resumed", **labels) == 0
    assert value(samples, "dtlsvpn_peer_inner_mtu_bytes", **s) == peer["inner_mtu"]
    assert value(samples, "dtlsvpn_peer_rx_packets_total", **s) >= peer["rx_packets"] - 2
    assert value(samples, "dtlsvpn_peer_drops_total", **s, reason="spoofed_source") == 3
    assert value(samples, "dtlsvpn_interface_drops_total", instance="server",
                 reason="no_route") == 1
    assert value(samples, "dtlsvpn_interface_mtu_bytes", instance="server") == snap[
        "interface"]["mtu"]
    info = [k for k in samples if k[0] == "dtlsvpn_peer_info" and ("peer", "branch") in k[1]]
    (key,) = info
    labels = dict(key[1])
    assert labels["transport"] == "udp" and labels["suite"] == peer["suite"]
    assert labels["endpoint"] == peer["endpoint"]
    print(f"status: {len(samples)} samples in {len(types)} families")
