"""wireguard-go (userspace WireGuard) configured with ``wg setconf``.

wireguard-go's UAPI socket is ``/var/run/wireguard/NAME.sock``, one directory for
every namespace, so the interface names carry the run's suffix.  The kernel has no
WireGuard module here; ``WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD`` only matters
where it has one.
"""

from __future__ import annotations

from pathlib import Path

from bench.netns import SERVER_UNDERLAY
from bench.procs import BenchError, Proc, poll, run
from bench.systems.base import Context, System, Tunnel, first_line, require_alive, write

SUBNET = "100.64.3"
PORT = 51820
UAPI_DIR = Path("/var/run/wireguard")


def _keypair() -> tuple[str, str]:
    private = run(["wg", "genkey"]).stdout.strip()
    public = run(["wg", "pubkey"], input_text=private + "\n").stdout.strip()
    return private, public


class WireguardGo(System):
    name = "wireguard"
    label = "wireguard-go"
    programs = ("wireguard-go", "wg")

    def version(self) -> str:
        tools = first_line(["wg", "--version"]).split(" - ")[0]
        return f"{first_line(['wireguard-go', '--version'])}, {tools}"

    def start(self, ctx: Context) -> Tunnel:
        d = ctx.subdir("wireguard")
        s_dev, c_dev = f"wgs{ctx.topo.suffix}", f"wgc{ctx.topo.suffix}"
        s_priv, s_pub = _keypair()
        c_priv, c_pub = _keypair()
        s_conf = write(d / "server.conf", f"""\
[Interface]
PrivateKey = {s_priv}
ListenPort = {PORT}

[Peer]
PublicKey = {c_pub}
AllowedIPs = {SUBNET}.2/32
""", 0o600)
        c_conf = write(d / "client.conf", f"""\
[Interface]
PrivateKey = {c_priv}

[Peer]
PublicKey = {s_pub}
AllowedIPs = {SUBNET}.0/24
Endpoint = {SERVER_UNDERLAY}:{PORT}
""", 0o600)
        env = ctx.env(LOG_LEVEL="error", WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        procs = []
        for side, ns, dev, conf, addr in (
                ("server", ctx.topo.server, s_dev, s_conf, f"{SUBNET}.1/24"),
                ("client", ctx.topo.client, c_dev, c_conf, f"{SUBNET}.2/24")):
            proc = ctx.procs.start(f"wireguard-go-{side}", ["wireguard-go", "-f", dev],
                                   limit=ctx.limit, ns=ns, log=d / f"{side}.log", env=env)
            procs.append(proc)
            sock = UAPI_DIR / f"{dev}.sock"

            def up(sock: Path = sock, proc: Proc = proc) -> bool:
                return sock.exists() or not proc.alive()

            if not poll(up, 10):
                raise BenchError(f"wireguard-go {side}: no UAPI socket {sock}")
            require_alive(proc, f"wireguard-go {side}")
            ctx.topo.exec(ns, ["wg", "setconf", dev, str(conf)])
            ctx.topo.exec(ns, ["ip", "addr", "add", addr, "dev", dev])
            ctx.topo.exec(ns, ["ip", "link", "set", dev, "up"])
        return Tunnel(f"{SUBNET}.1", f"{SUBNET}.2", s_dev, c_dev, procs,
                      note="ChaCha20-Poly1305 (WireGuard's one cipher)")
