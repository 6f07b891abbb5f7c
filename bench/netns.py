"""Two network namespaces joined by a veth pair: the bench's whole network.

    [dvbs-XXXXXX] 198.18.0.1/30 ══ veth ══ 198.18.0.2/30 [dvbc-XXXXXX]
     the servers (and iperf3 -s)             the clients (and iperf3 -c, ping)

Invariants: names carry a random suffix (parallel or aborted runs never collide);
only addresses of testing.md are used (underlay 198.18.0.0/15, tunnels in
100.64.0.0/10); nothing is routed out of the namespaces; ``delete`` removes both
namespaces (and with them every interface inside) and is safe to call twice.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from bench.procs import run

SERVER_UNDERLAY = "198.18.0.1"
CLIENT_UNDERLAY = "198.18.0.2"
UNDERLAY_PREFIX = 30


def ip(*args: str, check: bool = True) -> str:
    return run(["ip", *args], timeout=15, check=check).stdout


@dataclass
class Topology:
    """The namespace pair; ``server``/``client`` are namespace names."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"dvbs-{self.suffix}"

    @property
    def client(self) -> str:
        return f"dvbc-{self.suffix}"

    @property
    def server_veth(self) -> str:
        return f"dvbs{self.suffix}"

    @property
    def client_veth(self) -> str:
        return f"dvbc{self.suffix}"

    def create(self) -> None:
        for ns in (self.server, self.client):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", self.server_veth, "netns", self.server, "type", "veth",
           "peer", "name", self.client_veth, "netns", self.client)
        for ns, dev, addr in ((self.server, self.server_veth, SERVER_UNDERLAY),
                              (self.client, self.client_veth, CLIENT_UNDERLAY)):
            ip("-n", ns, "addr", "add", f"{addr}/{UNDERLAY_PREFIX}", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def add_client_sources(self, net: str, n: int) -> list[str]:
        """``n`` more client addresses (/32s from ``net``, on the client's veth) and the
        server's on-link route to them: many source hosts behind the one veth."""
        hosts = ipaddress.ip_network(net).hosts()
        addrs = [str(next(hosts)) for _ in range(n)]
        for a in addrs:
            ip("-n", self.client, "addr", "add", f"{a}/32", "dev", self.client_veth)
        ip("-n", self.server, "route", "add", net, "dev", self.server_veth)
        return addrs

    def delete(self) -> None:
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created.clear()

    def exec(self, ns: str, argv: list[str], timeout: float = 30, check: bool = True) -> str:
        return run(["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check).stdout

    def link_mtu(self, ns: str, dev: str) -> int | None:
        out = ip("-n", ns, "-o", "link", "show", "dev", dev, check=False).split()
        if "mtu" in out:
            return int(out[out.index("mtu") + 1])
        return None

    def ipv4_of(self, ns: str, dev: str) -> str | None:
        """The first IPv4 address on ``dev`` (without its prefix length)."""
        out = ip("-n", ns, "-o", "-4", "addr", "show", "dev", dev, check=False).split()
        if "inet" in out:
            return out[out.index("inet") + 1].split("/")[0]
        return None

    def has_link(self, ns: str, dev: str) -> bool:
        return self.link_mtu(ns, dev) is not None
