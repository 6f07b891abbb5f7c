"""OpenVPN 2.6 over UDP with AES-128-GCM, its userspace data channel (``disable-dco``).

Settings from bench-peers.md; the certificates are the bench's own (``dtlsvpn
gencert``: the server's carries serverAuth, which ``remote-cert-tls server`` checks).
Up when the client logs "Initialization Sequence Completed"; the log's "Data
Channel: cipher" line is kept as the note.
"""

from __future__ import annotations

import re

from bench.netns import SERVER_UNDERLAY
from bench.procs import BenchError
from bench.systems.base import Context, System, Tunnel, first_line, wait_for_log, write

SUBNET = "100.64.2"
PORT = 1194
DEVICE = "dvb-ovpn"


class OpenVpn(System):
    name = "openvpn"
    label = "OpenVPN"
    programs = ("openvpn",)

    def version(self) -> str:
        line = first_line(["openvpn", "--version"])
        return " ".join(line.split()[:2])

    def start(self, ctx: Context) -> Tunnel:
        pki = ctx.pki()
        d = ctx.subdir("openvpn")
        common = f"""\
dev {DEVICE}
dev-type tun
proto udp4
ca {pki.ca}
data-ciphers AES-128-GCM
disable-dco
verb 3
"""
        server = write(d / "server.conf", common + f"""\
local {SERVER_UNDERLAY}
lport {PORT}
topology subnet
server {SUBNET}.0 255.255.255.0
cert {pki.cert("server")}
key {pki.key("server")}
dh none
keepalive 10 60
""")
        client = write(d / "client.conf", common + f"""\
client
remote {SERVER_UNDERLAY} {PORT}
nobind
remote-cert-tls server
cert {pki.cert("client")}
key {pki.key("client")}
""")
        sproc = ctx.procs.start("openvpn-server", ["openvpn", "--config", str(server)],
                                limit=ctx.limit, ns=ctx.topo.server, log=d / "server.log")
        if not wait_for_log(sproc, "Initialization Sequence Completed", 20):
            raise BenchError(f"openvpn server did not start: {sproc.log_tail()}")
        cproc = ctx.procs.start("openvpn-client", ["openvpn", "--config", str(client)],
                                limit=ctx.limit, ns=ctx.topo.client, log=d / "client.log")
        if not wait_for_log(cproc, "Initialization Sequence Completed", 30):
            raise BenchError(f"openvpn client did not connect: {cproc.log_tail()}")
        assert cproc.log is not None
        cipher = re.search(r"Data Channel: cipher '([^']+)'", cproc.log.read_text())
        note = f"data channel {cipher.group(1)}" if cipher else "data channel cipher not logged"
        client_ip = ctx.topo.ipv4_of(ctx.topo.client, DEVICE) or f"{SUBNET}.2"
        return Tunnel(f"{SUBNET}.1", client_ip, DEVICE, DEVICE, [sproc, cproc], note=note)
