"""The bare veth link: the reference every tunnel is compared with (no processes)."""

from __future__ import annotations

from bench.netns import CLIENT_UNDERLAY, SERVER_UNDERLAY
from bench.systems.base import Context, System, Tunnel, first_line


class Bare(System):
    name = "bare"
    label = "bare veth"
    is_peer = False

    def version(self) -> str:
        return f"Linux {first_line(['uname', '-r'])}"

    def start(self, ctx: Context) -> Tunnel:
        return Tunnel(SERVER_UNDERLAY, CLIENT_UNDERLAY, ctx.topo.server_veth,
                      ctx.topo.client_veth)
