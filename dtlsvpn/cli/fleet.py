"""``dtlsvpn fleet-rules``: the balancer's nftables rules and routes, from the fleet's config.

Purpose: several servers share one public address (README "More than one server").  The
balancer in front is plain Linux: nftables marks each datagram for the server it must
reach and policy routing forwards it there.  Nothing is translated and nothing is
tracked, so the balancer holds no per-client state:

- ``notrack`` in the raw hook keeps the fleet's UDP out of conntrack.  (DNAT would
  decide a flow's server on its first packet and keep it in a conntrack entry; after a
  server dies that entry keeps sending the client's flow to it until it times out, and
  a client that roams gets a new entry decided afresh.)
- a ``tls12_cid`` record (UDP payload byte 0 = 25, bytes 1-2 = 0xfefd, long enough for
  an 8-byte CID at byte 11) is marked by its CID's first two bytes: a map of the
  prefixes of every server (256 per server; plain mode: byte 0 alone, a map of server
  ids).  A record whose prefix is no configured server's falls through to the hash.
- every other datagram (a ClientHello, a record without CID) is marked by a hash of the
  source address and port (``jhash ... mod N``), seeded from the fleet secret.
- each mark has an ``ip rule`` to a routing table whose one route sends the public
  address to that server's next hop.  Every server has the public address on a local
  interface (a dummy or loopback) and answers from it directly.

A health check moves a dead server's table, not the rules: ``--routes --down ID`` writes
the routes with the dead server's table spread over the live ones (a multipath route,
hashed per flow with ``fib_multipath_hash_policy = 1``).  Its clients' CID records then
reach a server that does not know them (dropped, counted as ``cid_foreign``); their
heartbeats go unanswered, they re-dial and resume with their tickets on whichever live
server their hash picks, and get that server's CIDs.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtlsvpn.cli.argtypes import ArgumentProblem
from dtlsvpn.config.model import DEFAULT_CONFDIR, config_path
from dtlsvpn.daemon.settings import load_config
from dtlsvpn.dtls.cid import CID_LENGTH, CID_OFFSET, CidMode, prefix_owners
from dtlsvpn.errors import ConfigError

TABLE = "dtlsvpn_fleet"
MARK_BASE = 0x6400  # mark = MARK_BASE | server id; the low byte must be free
TABLE_BASE = 4600  # routing table (and rule priority) = TABLE_BASE + server id
_UDP_HEADER_BITS = 64
_MIN_CID_UDP_LENGTH = 8 + 13 + CID_LENGTH  # UDP header + record header + CID


@dataclass(frozen=True)
class FleetSpec:
    """What the rules are made of: the public address, the servers, the CID mode."""

    vip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    mode: CidMode
    secret: bytes | None
    servers: tuple[tuple[int, str], ...]  # (server id, next hop), in id order
    mark_base: int = MARK_BASE
    table_base: int = TABLE_BASE

    @property
    def family(self) -> str:
        return "ip" if self.vip.version == 4 else "ip6"

    def mark(self, server_id: int) -> int:
        return self.mark_base | server_id

    def table(self, server_id: int) -> int:
        return self.table_base + server_id

    def hash_seed(self) -> int:
        """A seed the same for every run over the same fleet (and secret)."""
        digest = hmac.digest(self.secret or b"", b"dtlsvpn fleet hash seed", "sha256")
        return int.from_bytes(digest[:4], "big")


def _bit(byte_offset: int) -> int:
    """``@th`` bit offset of UDP payload byte ``byte_offset`` (after the 8-byte header)."""
    return _UDP_HEADER_BITS + 8 * byte_offset


def _cid_map(spec: FleetSpec) -> tuple[str, list[str]]:
    """The map's key expression and its elements (prefix → mark) for the configured ids."""
    ids = {sid for sid, _hop in spec.servers}
    if spec.mode is CidMode.PLAIN:
        key = f"@th,{_bit(CID_OFFSET)},8"
        return key, [f"{sid:#04x} : {spec.mark(sid):#06x}" for sid in sorted(ids)]
    key = f"@th,{_bit(CID_OFFSET)},16"
    owners = prefix_owners(spec.mode, spec.secret)
    return key, [f"{p:#06x} : {spec.mark(sid):#06x}" for p, sid in enumerate(owners) if sid in ids]


def render_rules(spec: FleetSpec) -> str:
    """The nftables script (``nft -f``): replaces the table atomically."""
    key, elements = _cid_map(spec)
    fam, vip, port = spec.family, spec.vip, spec.port
    n = len(spec.servers)
    buckets = ", ".join(f"{i} : {spec.mark(sid):#06x}" for i, (sid, _h) in enumerate(spec.servers))
    hops = ", ".join(f"{sid}={hop}" for sid, hop in spec.servers)
    lines = [
        "# dtlsvpn fleet balancer rules (written by `dtlsvpn fleet-rules`; README \"More than",
        "# one server\").  Apply with `nft -f FILE`; the routes come from `--routes`.",
        f"# public address {vip} port {port}; CID mode {spec.mode.value}; servers {hops}",
        f"# mark = {spec.mark_base:#06x} | server id -> ip rule -> table "
        f"{spec.table_base} + server id",
        f"table inet {TABLE} {{", "}", f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "\t# CID prefix -> server mark" + (" (the map is as secret as the fleet secret)"
                                            if spec.mode is CidMode.OBFUSCATED else ""),
        "\tmap cid_owner {",
        f"\t\ttypeof {key} : meta mark",
    ]
    lines += _elements(elements)
    lines += [
        "\t}",
        "",
        "\t# stateless: no conntrack entry can outlive a server",
        "\tchain raw {",
        "\t\ttype filter hook prerouting priority raw; policy accept;",
        f"\t\t{fam} daddr {vip} udp dport {port} notrack",
        f"\t\t{fam} saddr {vip} udp sport {port} notrack",
        "\t}",
        "",
        "\tchain steer {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
        f"\t\t{fam} daddr {vip} udp dport {port} jump pick",
        "\t}",
        "",
        "\tchain pick {",
        "\t\t# tls12_cid (25), DTLS 1.2 (0xfefd), a whole 8-byte CID: route by the CID",
        "\t\t# (the counters: datagrams routed by CID, and by hash)",
        f"\t\t@th,{_bit(0)},24 0x19fefd udp length >= {_MIN_CID_UDP_LENGTH} "
        f"meta mark set {key} map @cid_owner counter",
        f"\t\tmeta mark & 0xff00 == {spec.mark_base:#06x} accept",
        "\t\t# handshakes and everything else: a hash of the source address and port",
        f"\t\tmeta mark set jhash {fam} saddr . udp sport mod {n} seed {spec.hash_seed():#010x} "
        f"map {{ {buckets} }} counter",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _elements(elements: list[str]) -> list[str]:
    if not elements:
        return []
    out = ["\t\telements = {"]
    for i in range(0, len(elements), 4):
        chunk = ", ".join(elements[i:i + 4])
        out.append(f"\t\t\t{chunk}{',' if i + 4 < len(elements) else ''}")
    out.append("\t\t}")
    return out


def render_routes(spec: FleetSpec, down: frozenset[int] = frozenset()) -> str:
    """A shell script for the balancer's policy routing; ``down`` servers' tables are
    spread over the live servers (a per-flow multipath route)."""
    ipcmd = "ip" if spec.vip.version == 4 else "ip -6"
    prefix = f"{spec.vip}/{spec.vip.max_prefixlen}"
    live = [(sid, hop) for sid, hop in spec.servers if sid not in down]
    if not live:
        raise ArgumentProblem("--down names every server: nothing left to route to")
    sysctl = "ipv4" if spec.vip.version == 4 else "ipv6"
    lines = [
        "#!/bin/sh",
        "# dtlsvpn fleet balancer routes (written by `dtlsvpn fleet-rules --routes`)",
        f"# down: {', '.join(str(s) for s in sorted(down)) or 'none'}",
        "set -e",
        f"sysctl -qw net.{sysctl}.fib_multipath_hash_policy=1",
        "sysctl -qw net.ipv4.conf.all.rp_filter=2" if spec.vip.version == 4 else ":",
    ]
    # The main table's route: loose reverse-path filtering accepts the servers' replies
    # from the public address, and what is not steered (ICMP, other ports) reaches a
    # live server.
    lines.append(f"{ipcmd} route replace {prefix} via {live[0][1]}")
    for sid, hop in spec.servers:
        mark, table = spec.mark(sid), spec.table(sid)
        lines.append(f"{ipcmd} rule del fwmark {mark:#06x} lookup {table} 2>/dev/null || true")
        lines.append(f"{ipcmd} rule add fwmark {mark:#06x} lookup {table} priority {table}")
        if sid in down:
            hops = " ".join(f"nexthop via {h}" for _s, h in live)
            lines.append(f"{ipcmd} route replace {prefix} table {table} {hops}")
        else:
            lines.append(f"{ipcmd} route replace {prefix} table {table} via {hop}")
    return "\n".join(lines) + "\n"


# --- the command -----------------------------------------------------------------------


def _server(text: str) -> tuple[int, str]:
    sid_text, sep, hop = text.partition("=")
    try:
        sid = int(sid_text, 10)
        addr = ipaddress.ip_address(hop)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ID=NEXTHOP (a server id 0..255 and its address), got {text!r}") from None
    if not sep or not 0 <= sid <= 255:
        raise argparse.ArgumentTypeError(f"expected ID=NEXTHOP with ID 0..255, got {text!r}")
    return sid, str(addr)


def spec_from_args(args: argparse.Namespace) -> FleetSpec:
    path = config_path(args.config, Path(args.confdir))
    cfg = load_config(path)
    iface = cfg.interface
    fleet = iface.fleet
    if iface.role != "server" or fleet.server_id is None or iface.listen is None:
        raise ArgumentProblem(f"{path}: not a fleet server's config (expected Role = server "
                              f"and ServerId)")
    servers = sorted(args.server)
    ids = [sid for sid, _hop in servers]
    if len(set(ids)) != len(ids):
        raise ArgumentProblem("--server: a server id is given twice")
    if fleet.server_id not in ids:
        raise ArgumentProblem(f"--server: the config's own ServerId {fleet.server_id} is "
                              f"not among the servers")
    vip_text = args.vip if args.vip is not None else iface.listen[0]
    try:
        vip = ipaddress.ip_address(vip_text)
    except ValueError:
        raise ArgumentProblem(f"--vip: expected the public address, got {vip_text!r}") from None
    if vip.is_unspecified:
        raise ArgumentProblem(f"ListenAddress is {vip}: give the public address with --vip")
    for _sid, hop in servers:
        if ipaddress.ip_address(hop).version != vip.version:
            raise ArgumentProblem(f"--server: next hop {hop} is not of the public "
                                  f"address's family ({vip})")
    down = frozenset(args.down)
    if down and not args.routes:
        raise ArgumentProblem("--down changes the routes: use it with --routes")
    unknown = down - set(ids)
    if unknown:
        raise ArgumentProblem(f"--down: {min(unknown)} is not a configured server")
    return FleetSpec(vip, iface.listen[1], CidMode(fleet.cid_mode), fleet.secret,
                     tuple(servers))


def run_fleet_rules(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except ConfigError as exc:
        print(f"dtlsvpn fleet-rules: {exc}", file=sys.stderr)
        return 1
    text = (render_routes(spec, frozenset(args.down)) if args.routes
            else render_rules(spec))
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


def add_parsers(commands: Any) -> None:
    """Register ``fleet-rules``."""
    p = commands.add_parser(
        "fleet-rules", help="nftables rules and routes for a balancer in front of a fleet",
        description="Write the nftables rules (default) or the policy routes (--routes) of a "
                    "stateless balancer in front of several servers sharing one address: "
                    "CID records go to the server their CID names, everything else by a "
                    "hash of the source address and port.",
    )
    p.add_argument("config", metavar="NAME|FILE",
                   help="any fleet server's config (FleetCID, FleetSecretFile and "
                        "ListenAddress are the same on all)")
    p.add_argument("--confdir", metavar="DIR", default=str(DEFAULT_CONFDIR),
                   help=f"directory of NAME.conf files (default {DEFAULT_CONFDIR})")
    p.add_argument("--server", metavar="ID=NEXTHOP", type=_server, action="append",
                   required=True, help="a server's id and its address seen from the "
                                       "balancer (repeat for each server)")
    p.add_argument("--vip", metavar="ADDRESS",
                   help="the public address (default: the config's ListenAddress)")
    p.add_argument("--routes", action="store_true",
                   help="write the routing script instead of the nftables rules")
    p.add_argument("--down", metavar="ID", type=int, action="append", default=[],
                   help="with --routes: a dead server whose share goes to the live ones")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run_fleet_rules, parser_of_command=p)



def status_lines(iface: dict[str, Any]) -> list[str]:
    """The ``dtlsvpn status`` summary lines of a fleet server (none for a lone one)."""
    f = iface.get("fleet")
    if not f:
        return []
    role = "writer" if f["ticket_key_writer"] else "reader"
    return [f"  fleet: server id {f['server_id']} ({f['cid_mode']} CIDs), peers "
            f"{f['peers_digest']}, ticket key {f['ticket_key'] or '-'} ({role}, "
            f"{f['ticket_keys']} keys)",
            f"  other CIDs: {f['cid_foreign']} foreign (another server's), "
            f"{f['cid_forged']} forged, {f['unknown_cid']} unknown in all"]
