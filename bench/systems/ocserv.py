"""ocserv + openconnect (AnyConnect protocol) with the DTLS data channel.

Settings from bench-peers.md.  openconnect runs a tiny script of the bench's own
instead of vpnc-script (which would rewrite DNS and the default route): on
``reason=connect`` it sets the tun up with the MTU ocserv gave, adds the address and
the route, and writes what it did to a file the bench reads.  The tunnel counts as up
only once the client logged "Established DTLS connection" (the data then runs over
DTLS, not over the TLS/TCP fallback).  The server's tun is named after ``device``
plus a number; its local address is the measuring target.  ocserv's worker runs as
``nobody`` and connects to the sec-mod socket next to ``socket-file``: the directories
above it must be searchable by nobody (a 0700 work directory fails with "error
connecting to sec-mod socket …: Permission denied"), hence the bench's 0755 work dir.
"""

from __future__ import annotations

import re
import secrets

from bench.netns import SERVER_UNDERLAY
from bench.procs import BenchError, poll, run
from bench.systems.base import Context, System, Tunnel, first_line, wait_for_log, write

SUBNET = "100.64.4"
PORT = 4443
SERVER_DEVICE = "dvbo"
CLIENT_DEVICE = "dvb-occ"
USER = "bench"

SCRIPT = f"""\
#!/bin/sh
# openconnect --script for the bench: no DNS, no default route.
[ "$reason" = connect ] || exit 0
ip link set dev "$TUNDEV" up mtu "${{INTERNAL_IP4_MTU:-1400}}"
ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
ip route add {SUBNET}.0/24 dev "$TUNDEV"
echo "address=$INTERNAL_IP4_ADDRESS mtu=$INTERNAL_IP4_MTU dev=$TUNDEV" > "$BENCH_MARK.tmp"
mv "$BENCH_MARK.tmp" "$BENCH_MARK"
"""


class Ocserv(System):
    name = "ocserv"
    label = "ocserv DTLS"
    programs = ("ocserv", "openconnect", "openssl")

    def version(self) -> str:
        server = first_line(["ocserv", "--version"])
        client = first_line(["openconnect", "--version"]).replace("OpenConnect version ", "")
        return f"{server} + openconnect {client}"

    def start(self, ctx: Context) -> Tunnel:
        pki = ctx.pki()
        d = ctx.subdir("ocserv")
        password = secrets.token_hex(8)
        crypt = run(["openssl", "passwd", "-6", "-stdin"], input_text=password + "\n")
        passwd = write(d / "ocpasswd", f"{USER}:*:{crypt.stdout.strip()}\n", 0o600)
        conf = write(d / "ocserv.conf", f"""\
auth = "plain[passwd={passwd}]"
tcp-port = {PORT}
udp-port = {PORT}
listen-host = {SERVER_UNDERLAY}
run-as-user = nobody
run-as-group = nogroup
socket-file = {d / "ocserv.sock"}
pid-file = {d / "ocserv.pid"}
server-cert = {pki.cert("server")}
server-key = {pki.key("server")}
isolate-workers = false
use-occtl = false
max-clients = 8
device = {SERVER_DEVICE}
ipv4-network = {SUBNET}.0
ipv4-netmask = 255.255.255.0
route = {SUBNET}.0/255.255.255.0
cisco-client-compat = true
dtls-legacy = true
try-mtu-discovery = false
keepalive = 300
dpd = 60
""")
        script = write(d / "connect.sh", SCRIPT, 0o755)
        mark = d / "connected"
        sproc = ctx.procs.start("ocserv", ["ocserv", "-f", "-d", "2", "-c", str(conf)],
                                limit=ctx.limit, ns=ctx.topo.server, log=d / "server.log")
        listening = poll(lambda: not sproc.alive() or f":{PORT}" in ctx.topo.exec(
            ctx.topo.server, ["ss", "-Hltn"], check=False), 15, 0.2)
        if not listening or not sproc.alive():
            raise BenchError(f"ocserv did not start: {sproc.log_tail()}")
        cproc = ctx.procs.start(
            "openconnect",
            ["openconnect", "--protocol=anyconnect", "--non-inter", f"--user={USER}",
             "--passwd-on-stdin", f"--cafile={pki.ca}", f"--interface={CLIENT_DEVICE}",
             f"--script=sh {script}", f"https://{SERVER_UNDERLAY}:{PORT}/"],
            limit=ctx.limit, ns=ctx.topo.client, log=d / "client.log",
            env=ctx.env(BENCH_MARK=str(mark)), input_text=password + "\n")
        if not wait_for_log(cproc, "Established DTLS connection", 30):
            raise BenchError(f"openconnect: no DTLS connection: {cproc.log_tail()}")
        if not poll(mark.exists, 10):
            raise BenchError("openconnect: the connect script did not run")
        assert cproc.log is not None
        dtls = re.search(r"Established DTLS connection \(using GnuTLS\)\.\s*Ciphersuite\s*(\S+)",
                         cproc.log.read_text())
        client_ip = re.search(r"address=(\S+)", mark.read_text())
        server_dev, server_ip = self._server_side(ctx)
        return Tunnel(server_ip, client_ip.group(1) if client_ip else "?", server_dev,
                      CLIENT_DEVICE, [sproc, cproc],
                      note=f"DTLS {dtls.group(1).rstrip('.')}" if dtls else "DTLS")

    def _server_side(self, ctx: Context) -> tuple[str, str]:
        found: list[tuple[str, str]] = []

        def look() -> bool:
            out = ctx.topo.exec(ctx.topo.server, ["ip", "-o", "-4", "addr", "show"], check=False)
            for line in out.splitlines():
                parts = line.split()
                if len(parts) > 3 and parts[1].startswith(SERVER_DEVICE):
                    found.append((parts[1], parts[3].split("/")[0]))
                    return True
            return False

        if not poll(look, 10, 0.1):
            raise BenchError(f"ocserv: no {SERVER_DEVICE}N interface with an address")
        return found[0]
