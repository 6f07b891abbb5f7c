"""Namespace harness: topologies from testing.md and the real daemon in them.

- ``topo``: a ``Topology`` whose namespaces carry a random per-test suffix
  (``dvs-1a2b3c``), joined by veth pairs; every namespace is deleted in the finaliser
  (which also removes every interface in it), after the processes are stopped.
- ``run_daemon(ns, conf)``: ``python -m dtlsvpn run FILE`` under ``ip netns exec``, with
  ``NOTIFY_SOCKET`` pointing at a UNIX datagram socket this test owns; ``wait_ready``
  blocks on that socket until READY=1 (no sleeps).  Processes are stopped by PID.
- ``two_hosts``/``start_pair``/``ping``: the two-namespace topology most tests use, both
  daemons started in order, and a bounded ping that must succeed.
- ``psk_pair``/``cert_pair`` write a server and a client configuration with the one
  builder of configuration text (``tests.support.conf``); PSK files are mode 0600 as the
  loader demands.

Addresses come from the plan only: underlay 198.18.0.0/15 and 2001:db8::/32, tunnel
100.64.0.0/10 and fd00::/8.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from dtlsvpn.daemon.status import query
from tests.pki import Pki
from tests.support.conf import TunnelConf, Value
from tests.util import Proc, ProcessGroup, run_bounded, wait_until

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TOOLS = [PYTHON, "-m", "tests.netns.tools"]

SERVER_TUNNEL = ("100.64.0.1/24", "fd00::1/64")
CLIENT_TUNNEL = ("100.64.0.2/24", "fd00::2/64")
SERVER_ALLOWS = ("100.64.0.2/32", "fd00::2/128")  # the one client
CLIENT_ALLOWS = ("100.64.0.0/24", "fd00::/64")  # the server's side of the tunnel


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = run_bounded(["ip", *args], timeout=15)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


class Topology:
    """Namespaces and veth pairs with a per-test random suffix."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self._veths = 0

    def netns(self, role: str) -> str:
        name = f"dv{role}-{self.suffix}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, addrs_a: list[str], ns_b: str, addrs_b: list[str],
             mtu: int | None = None) -> tuple[str, str]:
        self._veths += 1
        a, b = f"dva{self._veths}{self.suffix}", f"dvb{self._veths}{self.suffix}"
        ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            if mtu is not None:
                ip("-n", ns, "link", "set", dev, "mtu", str(mtu))
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                ip("-n", ns, "addr", "add", addr, "dev", dev, *extra)
            ip("-n", ns, "link", "set", dev, "up")
        return a, b

    def exec(self, ns: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run_bounded(["ip", "netns", "exec", ns, *argv], timeout=timeout)

    def cleanup(self) -> None:
        for name in reversed(self.namespaces):
            ip("netns", "del", name, check=False)
        self.namespaces.clear()


class Daemon:
    """One ``dtlsvpn run`` process and the notify socket it reports to."""

    def __init__(self, procs: ProcessGroup, ns: str, conf: Path, name: str,
                 status_socket: Path, workdir: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.ns = ns
        self.conf = conf
        self.status_socket = status_socket
        self.notify_path = workdir / f"notify-{name}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        # As systemd does: the sender's PID comes with each message (SCM_CREDENTIALS).
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.pid: int | None = None
        self.messages: list[str] = []
        # WATCHDOG_USEC as systemd sets it for WatchdogSec=2: the loop pings every second.
        env = {"NOTIFY_SOCKET": str(self.notify_path), "PYTHONPATH": str(REPO),
               "WATCHDOG_USEC": "2000000", **(extra_env or {})}
        self.proc: Proc = procs.start(
            ["ip", "netns", "exec", ns, PYTHON, "-m", "dtlsvpn", "run", str(conf)],
            name=f"dtlsvpn-{name}", timeout=110, env=env, stdin_pipe=False,
        )
        self.procs = procs
        # Read the notify socket all the time, as systemd does: a daemon that sends
        # WATCHDOG=1 every second would otherwise fill the socket's queue and block.
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._drain, name=f"notify-{name}",
                                        daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                self._receive(0.2)
            except OSError:
                return  # the socket was closed

    def _receive(self, timeout: float) -> str | None:
        self.notify.settimeout(max(timeout, 0.001))
        try:
            raw, ancdata, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        for level, kind, cdata in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                self.pid = struct.unpack("=iII", cdata[:12])[0]
        data = raw.decode()
        self.messages.extend(data.splitlines())
        return data

    def wait_message(self, wanted: str, timeout: float = 20.0, count: int = 1) -> bool:
        """Block on the notify socket until ``count`` lines equal to ``wanted`` arrived."""
        def arrived() -> bool:
            return self.messages.count(wanted) >= count or self.proc.returncode is not None

        wait_until(arrived, timeout, interval=0.02)
        if self.proc.returncode is not None:
            # What a daemon sent just before it exited may still be in the reader's hands.
            wait_until(lambda: self.messages.count(wanted) >= count, 0.5, interval=0.02)
        return self.messages.count(wanted) >= count

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.wait_message("READY=1", timeout), (
            f"no READY=1 from {self.conf.name}\n{self.proc.describe()}")

    def wait_connected(self, timeout: float = 20.0, after: int = 0) -> bool:
        """A client: until a STATUS= line (from ``messages[after]`` on) says it is
        connected; READY=1 comes earlier, as soon as it is configured and dialling."""
        def connected() -> bool:
            return any(m.startswith("STATUS=") and "; connected to " in m
                       for m in self.messages[after:])

        wait_until(lambda: connected() or self.proc.returncode is not None, timeout,
                   interval=0.02)
        return connected()

    def status(self) -> dict:
        return json.loads(query(self.status_socket, as_json=True))

    def kill9(self) -> None:
        """SIGKILL the daemon itself (the PID that sent READY=1), as a crash would."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM to the daemon itself (the PID that sent READY=1), as systemd's stop
        sends it, then the group's clean-up.  Not through ``timeout``: it signals its
        child and then its whole group, and that second copy, late on a loaded machine,
        could kill a restore command the stopping daemon had just forked (before the
        child's setsid): ``resolvconf -d``, exit -15, now and then."""
        if self.pid is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(8.0)
        return self.procs.stop(self.proc, grace=8.0)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=2)
        self.notify.close()


# --- two hosts and a daemon pair -----------------------------------------------------


RunDaemon = Callable[[str, Path, Path], Daemon]


def two_hosts(topo: Topology, mtu: int | None = None) -> tuple[str, str]:
    """A server and a client namespace joined by one veth pair (198.18.0.1/.2, 2001:db8::1/::2)."""
    server_ns, client_ns = topo.netns("s"), topo.netns("c")
    topo.veth(server_ns, ["198.18.0.1/24", "2001:db8::1/64"],
              client_ns, ["198.18.0.2/24", "2001:db8::2/64"], mtu=mtu)
    return server_ns, client_ns


def start_pair(run_daemon: RunDaemon, server_ns: str, client_ns: str, server_conf: Path,
               client_conf: Path) -> tuple[Daemon, Daemon]:
    """Start the server, wait for its READY=1, then the client, its READY=1 and its
    STATUS= saying it is connected."""
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    client = run_daemon(client_ns, client_conf, client_conf.with_suffix(".sock"))
    client.wait_ready()
    assert client.wait_connected(), f"client not connected\n{client.proc.describe()}"
    return server, client


def ping(topo: Topology, ns: str, addr: str, *extra: str) -> str:
    """``tests.netns.tools ping`` inside ``ns``; fails the test unless it exits 0."""
    res = topo.exec(ns, [*TOOLS, "ping", addr, *extra], timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


# --- configurations ---------------------------------------------------------------


def copy_both_ways(topo: Topology, procs: ProcessGroup, server_ns: str, client_ns: str,
                   workdir: Path, size: int = 20 * 1024 * 1024) -> None:
    """A file of ``size`` random bytes through the tunnel client → server (100.64.0.1),
    then server → client (100.64.0.2); the receiver's SHA-256 must match."""
    blob = workdir / "blob"
    blob.write_bytes(os.urandom(size))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(REPO)}
    for receiver_ns, sender_ns, addr in ((server_ns, client_ns, "100.64.0.1"),
                                         (client_ns, server_ns, "100.64.0.2")):
        rx = procs.start(["ip", "netns", "exec", receiver_ns, *TOOLS, "recv", addr, "5001"],
                         name=f"recv-{addr}", timeout=60, env=env, stdin_pipe=False)
        assert rx.wait_for("listening", timeout=15), rx.describe()
        res = topo.exec(sender_ns, [*TOOLS, "send", addr, "5001", str(blob)], timeout=60)
        assert res.returncode == 0, res.stderr
        assert rx.wait(30) == 0
        line = rx.stdout().strip().splitlines()[-1]
        assert f"bytes={size} sha256={want}" in line, line
        print(f"copy to {addr}: {line}")


def secret_file(path: Path, content: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return path


def psk_pair(workdir: Path, *, server_ip: str = "198.18.0.1", port: int = 4433,
             mtu: str = "auto", tag: str = "", **interface: Value) -> tuple[Path, Path]:
    """Server and client configs authenticated by a PSK; returns (server, client) paths.

    ``interface``: more ``[Interface]`` keys for both sides (``tests.support.conf``).
    """
    psk = secret_file(workdir / f"psk{tag}.hex", secrets.token_hex(32) + "\n")
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    server = TunnelConf(
        comment="PSK test server", role="server", listen_address=f"{host}:{port}",
        device="dvs0", address=SERVER_TUNNEL, mtu=mtu,
        status_socket=workdir / f"server{tag}.sock", ticket_store=workdir / f"server-state{tag}",
        log_level="debug", **interface,
    ).peer(name="branch", psk_identity="branch", psk_file=psk, allowed_ips=SERVER_ALLOWS)
    client = TunnelConf(
        comment="PSK test client", role="client", device="dvc0", address=CLIENT_TUNNEL,
        mtu=mtu, status_socket=workdir / f"client{tag}.sock",
        ticket_store=workdir / f"tickets{tag}", log_level="debug", **interface,
    ).peer(name="office", endpoint=f"{host}:{port}", psk_identity="branch", psk_file=psk,
           allowed_ips=CLIENT_ALLOWS)
    return (server.write(workdir / f"server{tag}.conf"),
            client.write(workdir / f"client{tag}.conf"))


def cert_pair(workdir: Path, pki: Pki, *, server_ip: str = "198.18.0.1",
              port: int = 4433, **interface: Value) -> tuple[Path, Path]:
    """Server and client configs with certificates from tests/pki.py (CN checks)."""
    server = TunnelConf(
        comment="certificate test server", role="server", listen_address=f"{server_ip}:{port}",
        device="dvs0", address=SERVER_TUNNEL, certificate=pki.server.cert_path,
        private_key=pki.server.key_path, ca=pki.ca.cert_path,
        status_socket=workdir / "server.sock", ticket_store=workdir / "server-state",
        **interface,
    ).peer(name="laptop", common_name="client.test", allowed_ips=SERVER_ALLOWS)
    client = TunnelConf(
        comment="certificate test client", role="client", device="dvc0",
        address=CLIENT_TUNNEL, certificate=pki.client.cert_path,
        private_key=pki.client.key_path, ca=pki.ca.cert_path,
        status_socket=workdir / "client.sock", ticket_store=workdir / "tickets", **interface,
    ).peer(name="hq", endpoint=f"{server_ip}:{port}", server_name="server.test",
           allowed_ips=CLIENT_ALLOWS)
    return server.write(workdir / "server.conf"), client.write(workdir / "client.conf")


def link_mtu(topo: Topology, ns: str, dev: str) -> int | None:
    res = topo.exec(ns, ["cat", f"/sys/class/net/{dev}/mtu"])
    return int(res.stdout) if res.returncode == 0 else None
