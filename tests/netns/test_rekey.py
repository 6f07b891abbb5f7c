"""Make-before-break key renewal in the real daemon: a numbered stream loses nothing.

Topology: the two namespaces of test_tunnel.py::

    [dvs-XXXX] 198.18.0.1/24 ══ veth ══ 198.18.0.2/24 [dvc-XXXX]
       dtlsvpn server  dvs0 100.64.0.1       dvc0 100.64.0.2  dtlsvpn client
       UDP echo on 100.64.0.1:5001    ◄───   numbered stream, one datagram every 5 ms

Both daemons run with ``RekeyInterval = 3``, authenticated by a PSK
(TLS_ECDHE_PSK_…) and by certificates (each renewal's server certificate is checked
against the [Peer] again).  While the client's stream runs for 12 s
(about four renewals: at 3, 6, 9 and 12 s after the first handshake) every datagram
must reach the echo server and every echo must come back: both directions cross
every switch from old to new keys.  Afterwards the status says generation ≥ 3 on the
client, the server counted the same renewals for its [Peer], no renewal resumed, the
TUN device is the one created at start-up, and nothing was dropped for want of an
association.

Connection IDs: by default the server asks for an 8-byte CID and the client sends
tls12_cid records, so old and new keys are told apart by CID; with ``ConnectionID = no``
(the ``psk-nocid`` case) the endpoint tells them apart by trial decryption.

The stream and the echo server are this module's own ``__main__`` (run inside the
namespaces with ``python -m tests.netns.test_rekey``), bounded by their arguments.
"""

from __future__ import annotations

import argparse
import itertools
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

from dtlsvpn.daemon.status import format_prometheus
from tests.netns.harness import (
    PYTHON,
    REPO,
    Daemon,
    RunDaemon,
    Topology,
    cert_pair,
    psk_pair,
    start_pair,
    two_hosts,
)
from tests.pki import Pki
from tests.util import ProcessGroup, wait_until

STREAM = [PYTHON, "-m", "tests.netns.test_rekey"]
INTERVAL = 3  # RekeyInterval, seconds
SECONDS = 12.0  # how long the stream runs
PERIOD = 0.005  # one datagram every 5 ms
PORT = 5001
_SEQ = struct.Struct("!Id")  # sequence number, send time (the client's monotonic clock)


# --- the tools (run inside a namespace) --------------------------------------------------


def echo(addr: str, port: int, seconds: float) -> int:
    """Echo every datagram back until ``STOP`` comes (or ``seconds`` pass); print how many
    sequence numbers arrived."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((addr, port))
        print("listening", flush=True)
        seen: set[int] = set()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                continue
            data, peer = sock.recvfrom(2048)
            if data == b"STOP":
                break
            if len(data) >= _SEQ.size:
                seen.add(_SEQ.unpack_from(data)[0])
                sock.sendto(data, peer)
    print(json.dumps({"echo_received": len(seen),
                      "echo_max_seq": max(seen, default=-1)}), flush=True)
    return 0


def stream(addr: str, port: int, seconds: float, period: float) -> int:
    """Send a numbered datagram every ``period`` for ``seconds``; collect the echoes."""
    replies: dict[int, float] = {}
    sent = 0
    arrivals: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((addr, port))
        sock.setblocking(False)
        start = time.monotonic()
        stop = start + seconds
        linger = stop + 2.0  # the last echoes still on their way
        next_send = start
        while True:
            now = time.monotonic()
            if now >= linger or (now >= stop and len(replies) == sent):
                break
            if now >= next_send and now < stop:
                try:
                    sock.send(_SEQ.pack(sent, now).ljust(100, b"."))
                except OSError as exc:  # counted as missing: no echo will come
                    print(f"seq={sent} send failed: {exc.strerror}", flush=True)
                sent += 1
                next_send += period
                continue
            wake = min(next_send if now < stop else linger, linger)
            if select.select([sock], [], [], max(0.0, wake - now))[0]:
                while True:
                    try:
                        data = sock.recv(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    seq, t0 = _SEQ.unpack_from(data)
                    t = time.monotonic()
                    if seq not in replies:
                        replies[seq] = t - t0
                        arrivals.append(t)
        sock.send(b"STOP")
    missing = [s for s in range(sent) if s not in replies]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(json.dumps({
        "sent": sent, "answered": len(replies), "missing": missing[:50],
        "max_rtt_ms": round(max(replies.values(), default=0) * 1000, 2),
        "max_gap_ms": round(max(gaps, default=0) * 1000, 2),
    }), flush=True)
    return 0 if not missing else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.test_rekey")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("addr")
    e.add_argument("port", type=int)
    e.add_argument("seconds", type=float)
    s = sub.add_parser("stream")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    s.add_argument("seconds", type=float)
    s.add_argument("period", type=float)
    a = p.parse_args(argv)
    if a.cmd == "echo":
        return echo(a.addr, a.port, a.seconds)
    return stream(a.addr, a.port, a.seconds, a.period)


# --- the test ---------------------------------------------------------------------------------


def _peer(daemon: Daemon) -> dict:
    (peer,) = daemon.status()["peers"]
    return peer


def _ifindex(topo: Topology, ns: str, dev: str) -> str:
    res = topo.exec(ns, ["cat", f"/sys/class/net/{dev}/ifindex"])
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _configs(auth: str, tmp_path: Path, pki: Pki) -> tuple[Path, Path]:
    if auth == "psk-nocid":
        # Without connection IDs the endpoint tells old from new keys by trial decryption.
        return psk_pair(tmp_path, rekey_interval=INTERVAL, connection_id=False)
    if auth == "psk":
        return psk_pair(tmp_path, rekey_interval=INTERVAL)
    return cert_pair(tmp_path, pki, rekey_interval=INTERVAL)


@pytest.mark.parametrize("auth", ["psk", "cert", "psk-nocid"])
def test_stream_loses_nothing_across_renewals(
    auth: str, topo: Topology, run_daemon: RunDaemon, tmp_path: Path, procs: ProcessGroup,
    pki: Pki,
) -> None:
    server_ns, client_ns = two_hosts(topo)
    server_conf, client_conf = _configs(auth, tmp_path, pki)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert client.status()["interface"]["rekey_interval"] == INTERVAL
    indexes = (_ifindex(topo, client_ns, "dvc0"), _ifindex(topo, server_ns, "dvs0"))
    # (IPv6 neighbour discovery on the TUN before the first handshake: no_session drops)
    drops_before = {"client": _peer(client)["drops"], "server": _peer(server)["drops"]}
    env = {"PYTHONPATH": str(REPO)}
    echo_proc = procs.start(
        ["ip", "netns", "exec", server_ns, *STREAM, "echo", "100.64.0.1", str(PORT),
         str(SECONDS + 8)], name="echo", timeout=SECONDS + 15, env=env, stdin_pipe=False)
    assert echo_proc.wait_for("listening", timeout=10), echo_proc.describe()

    res = topo.exec(client_ns, [*STREAM, "stream", "100.64.0.1", str(PORT), str(SECONDS),
                                str(PERIOD)], timeout=SECONDS + 10)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{auth}: stream across renewals every {INTERVAL}s: {result}")
    cpeer, speer = _peer(client), _peer(server)
    # With a CID the client's records carry the server's 8 bytes (+1 for the real type).
    cid_bytes = 0 if auth == "psk-nocid" else 9
    assert cpeer["record_overhead"] - speer["record_overhead"] == cid_bytes, (cpeer, speer)
    print(f"client: generation {cpeer['rekey_generation']}, rekeys {cpeer['rekeys']}, "
          f"handshakes {cpeer['handshakes']}; server: generation {speer['rekey_generation']}"
          f", rekeys {speer['rekeys']}, handshakes {speer['handshakes']}")
    assert res.returncode == 0 and not result["missing"], (
        f"{result}\n{client.proc.describe()}\n{server.proc.describe()}")
    assert result["sent"] >= 0.8 * SECONDS / PERIOD and result["answered"] == result["sent"]

    # Generations: at least 3 renewals on the client, the same count on the server (read
    # again when a renewal completed between the two queries).
    def agree() -> bool:
        nonlocal cpeer, speer
        cpeer, speer = _peer(client), _peer(server)
        return (cpeer["rekeys"] == speer["rekeys"]
                and cpeer["rekey_generation"] == speer["rekey_generation"])

    assert wait_until(agree, timeout=5, interval=0.1), (cpeer, speer)
    assert cpeer["rekey_generation"] >= 3 and cpeer["rekeys"] == cpeer["rekey_generation"]
    for side, peer in (("client", cpeer), ("server", speer)):
        assert peer["state"] == "established", peer
        assert peer["handshakes"] == 1 + peer["rekeys"], peer
        assert peer["resumed"] is False, peer  # a renewal is a full handshake
        assert peer["last_rekey"] and peer["last_rekey"] >= peer["last_handshake"] - 0.5
        assert peer["last_rekey_ago"] is not None and peer["last_rekey_ago"] < INTERVAL + 2
        for reason in ("no_session", "unbound", "send_error", "tun_write", "bad_mac"):
            before = drops_before[side].get(reason, 0)
            assert peer["drops"].get(reason, 0) == before, (side, peer["drops"])
    assert "unbound" not in server.status()["interface"]["drops"]
    snap = client.status()
    labels = f'{{instance="client",peer="{snap["peers"][0]["name"]}"}}'
    metrics = format_prometheus([snap])
    assert f'dtlsvpn_peer_rekeys_total{labels} {snap["peers"][0]["rekeys"]}\n' in metrics
    assert f"dtlsvpn_peer_rekey_generation{labels} " in metrics
    human = topo.exec(client_ns, [PYTHON, "-m", "dtlsvpn", "status", "--socket",
                                  str(client.status_socket)])
    assert f"key renewals: {snap['peers'][0]['rekeys']}, last " in human.stdout, human.stdout
    # Renewals leave the interfaces alone.
    assert (_ifindex(topo, client_ns, "dvc0"), _ifindex(topo, server_ns, "dvs0")) == indexes

    assert echo_proc.wait(SECONDS + 10) == 0, echo_proc.describe()
    echoed = json.loads(echo_proc.stdout().strip().splitlines()[-1])
    assert echoed["echo_received"] == result["sent"], echoed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
