"""dtlsvpn itself: ``python -m dtlsvpn run FILE`` from this repository, server and client.

Credentials are certificates from ``dtlsvpn gencert`` (ECDSA P-256, so the suite is
TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, the cipher OpenVPN runs here too), or PSK
identities for the many-idle-peers server.  Readiness is READY=1 on a NOTIFY_SOCKET
the bench owns, as systemd would see it (a server sends it once bound, a client once
its tunnel passes traffic).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.netns import SERVER_UNDERLAY
from bench.procs import BenchError, Proc, run
from bench.systems.base import REPO, Context, System, Tunnel, require_alive, write

SUBNET = "100.64.1"
PORT = 4433
DEVICE = "dvb-dtls"


class NotifySocket:
    """A UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_ready(self, proc: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            require_alive(proc, proc.name)
            self.sock.settimeout(min(left, 0.2))
            try:
                lines = self.sock.recv(4096).decode(errors="replace").splitlines()
            except TimeoutError:
                continue
            if "READY=1" in lines:
                return
        raise BenchError(f"{proc.name}: no READY=1 in {timeout:g} s: {proc.log_tail()}")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    proc: Proc
    status_socket: Path


def start_daemon(ctx: Context, name: str, ns: str, conf: Path, timeout: float = 60) -> Daemon:
    """Run ``dtlsvpn run conf`` in ``ns``; return once it reported READY=1."""
    notify = NotifySocket(ctx.work / f"{name}.notify")
    try:
        proc = ctx.procs.start(name, ctx.dtlsvpn("run", str(conf)), limit=ctx.limit, ns=ns,
                               log=ctx.work / f"{name}.log",
                               env=ctx.env(NOTIFY_SOCKET=str(notify.path)))
        notify.wait_ready(proc, timeout)
    finally:
        notify.close()
    return Daemon(proc, ctx.work / f"{name}.sock")


def status(ctx: Context, daemon: Daemon) -> Any:
    """``dtlsvpn status --json`` of a running daemon."""
    res = run(ctx.dtlsvpn("status", "--json", "--socket", str(daemon.status_socket)),
              env=ctx.env(), timeout=15)
    return json.loads(res.stdout)


def find_key(data: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in a JSON document."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        data = list(data.values())
    if isinstance(data, list):
        for item in data:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def server_conf(ctx: Context, name: str, *, port: int, addresses: str, peers: str) -> Path:
    pki = ctx.pki()
    return write(ctx.work / f"{name}.conf", f"""\
[Interface]
Role = server
ListenAddress = {SERVER_UNDERLAY}:{port}
Device = {DEVICE}
Address = {addresses}
Certificate = {pki.cert("server")}
PrivateKey = {pki.key("server")}
CA = {pki.ca}
StatusSocket = {ctx.work / f"{name}.sock"}
TicketStore = {ctx.work / f"{name}-state"}
LogLevel = warning

[Peer]
Name = bench-client
CommonName = bench-client
AllowedIPs = {SUBNET}.2/32
{peers}""", 0o600)


def client_conf(ctx: Context, name: str, *, port: int) -> Path:
    pki = ctx.pki()
    return write(ctx.work / f"{name}.conf", f"""\
[Interface]
Role = client
Device = {DEVICE}
Address = {SUBNET}.2/24
Certificate = {pki.cert("client")}
PrivateKey = {pki.key("client")}
CA = {pki.ca}
StatusSocket = {ctx.work / f"{name}.sock"}
TicketStore = {ctx.work / f"{name}-state"}
LogLevel = warning

[Peer]
Name = bench-server
Endpoint = {SERVER_UNDERLAY}:{port}
AllowedIPs = {SUBNET}.0/24
""", 0o600)


def start_pair(ctx: Context, prefix: str, *, port: int, server_addresses: str,
               peers: str = "") -> tuple[Daemon, Daemon]:
    """A dtlsvpn server (with extra ``peers`` sections) and the bench client."""
    sconf = server_conf(ctx, f"{prefix}-server", port=port, addresses=server_addresses,
                        peers=peers)
    cconf = client_conf(ctx, f"{prefix}-client", port=port)
    server = start_daemon(ctx, f"{prefix}-server", ctx.topo.server, sconf, timeout=120)
    client = start_daemon(ctx, f"{prefix}-client", ctx.topo.client, cconf)
    return server, client


def suite_of(ctx: Context, daemon: Daemon) -> str:
    try:
        return str(find_key(status(ctx, daemon), "suite") or "suite unknown")
    except (BenchError, ValueError) as exc:
        return f"status failed: {exc}"


class Dtlsvpn(System):
    name = "dtlsvpn"
    label = "dtlsvpn"
    is_peer = False

    def version(self) -> str:
        init = (REPO / "dtlsvpn" / "__init__.py").read_text()
        version = next((line.split("=", 1)[1].strip().strip("\"'")
                        for line in init.splitlines() if line.startswith("__version__")), "?")
        try:
            commit = run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                         timeout=10).stdout.strip()
        except BenchError:
            commit = "no git"
        return f"dtlsvpn {version} ({commit})"

    def __init__(self) -> None:
        self.daemons: dict[str, Daemon] = {}

    def start(self, ctx: Context) -> Tunnel:
        server, client = start_pair(ctx, "dtlsvpn", port=PORT, server_addresses=f"{SUBNET}.1/24")
        self.daemons = {"server": server, "client": client}
        return Tunnel(f"{SUBNET}.1", f"{SUBNET}.2", DEVICE, DEVICE, [server.proc, client.proc],
                      note=suite_of(ctx, client))

    def finish(self, ctx: Context) -> dict[str, Any]:
        """The non-zero drop counters of each side (``dtlsvpn status --json``)."""
        out: dict[str, Any] = {}
        for side, daemon in self.daemons.items():
            try:
                doc = status(ctx, daemon)
            except (BenchError, ValueError) as exc:
                out[side] = {"error": str(exc)}
                continue
            snap = doc[0] if isinstance(doc, list) and doc else doc
            iface = snap.get("interface", {}) if isinstance(snap, dict) else {}
            drops = dict(iface.get("drops") or {})
            for peer in find_key(snap, "peers") or []:
                for reason, count in (peer.get("drops") or {}).items():
                    drops[reason] = drops.get(reason, 0) + count
            out[side] = {k: v for k, v in drops.items() if v}
        return {"drops": out}
