"""The Python floor (``bench/floor.py``): the least a Python TUN↔UDP forwarder does.

Not a competitor (``is_peer`` is false, so no ratio is taken against it): it shows
what a pure-Python design costs per wake-up on this machine, interpreter and
``cryptography``'s AES-128-GCM call included, with none of dtlsvpn's protocol
(no handshake, replay window, routing or timers).  dtlsvpn's distance from it is
dtlsvpn's own code; the floor's distance from OpenVPN is the language.
"""

from __future__ import annotations

import platform
import secrets

import cryptography

from bench.netns import CLIENT_UNDERLAY, SERVER_UNDERLAY
from bench.procs import BenchError
from bench.systems.base import Context, System, Tunnel, require_alive, wait_for_log

SUBNET = "100.64.5"
PORT = 4450
MTU = 1420  # 1500 − 20 (IPv4) − 8 (UDP) − 8 (sequence) − 16 (tag), rounded down


class Floor(System):
    name = "floor"
    label = "Python floor (no protocol)"
    is_peer = False

    def version(self) -> str:
        return f"Python {platform.python_version()}, cryptography {cryptography.__version__}"

    def start(self, ctx: Context) -> Tunnel:
        key = secrets.token_hex(16)
        d = ctx.subdir("floor")
        dev = f"dvbf{ctx.topo.suffix}"
        procs = []
        for side, ns, local, peer, addr in (
                ("server", ctx.topo.server, PORT, (CLIENT_UNDERLAY, PORT + 1), f"{SUBNET}.1/24"),
                ("client", ctx.topo.client, PORT + 1, (SERVER_UNDERLAY, PORT), f"{SUBNET}.2/24")):
            proc = ctx.procs.start(
                f"floor-{side}",
                [ctx.python, "-m", "bench.floor", dev, str(local), peer[0], str(peer[1]), key],
                limit=ctx.limit, ns=ns, log=d / f"{side}.log", env=ctx.env())
            if not wait_for_log(proc, "floor:", 15):
                raise BenchError(f"floor {side} did not start: {proc.log_tail()}")
            require_alive(proc, f"floor {side}")
            ctx.topo.exec(ns, ["ip", "addr", "add", addr, "dev", dev])
            ctx.topo.exec(ns, ["ip", "link", "set", dev, "mtu", str(MTU), "up"])
            procs.append(proc)
        return Tunnel(f"{SUBNET}.1", f"{SUBNET}.2", dev, dev, procs,
                      note="one read, one AES-128-GCM call, one write per packet; no protocol")
