"""``dtlsvpn status [NAME]``: ask running daemons for their state over the status socket.

Without NAME, every ``*.sock`` in the run directory (``/run/dtlsvpn``) is asked.  The
default output is a ``wg show``-like summary; ``--json`` prints one document in every
mode, ``{"version": 1, "tunnels": [...], "errors": [...]}`` (schema/status.schema.json),
``--raw`` its ``key=value`` lines and ``--prometheus`` Prometheus text-format metrics
(format 0.0.4, one family per metric across every daemon asked: the output of one run can
go to node_exporter's textfile collector, written to a temporary file and renamed).
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import sys
from pathlib import Path
from typing import Any

from dtlsvpn.cli.fleet import status_lines as fleet_status_lines
from dtlsvpn.daemon.status import format_prometheus, query

DEFAULT_RUNDIR = Path("/run/dtlsvpn")
JSON_VERSION = 1  # of the `--json` document; schema/status.schema.json


def add_parsers(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="show running tunnels and their peers",
        description="Query the status socket of one daemon (NAME) or of every daemon.",
    )
    status.add_argument("name", metavar="NAME", nargs="?",
                        help="instance name (RUNDIR/NAME.sock), or a status socket's path")
    status.add_argument("--socket", metavar="PATH", type=Path,
                        help="status socket path (overrides NAME)")
    status.add_argument("--rundir", metavar="DIR", type=Path, default=DEFAULT_RUNDIR,
                        help=f"directory of status sockets (default {DEFAULT_RUNDIR})")
    fmt = status.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--raw", action="store_true", help="print the key=value lines")
    fmt.add_argument("--prometheus", action="store_true",
                     help="print Prometheus text-format metrics (format 0.0.4)")
    status.set_defaults(func=status_command, parser_of_command=status)


def _sockets(args: argparse.Namespace) -> list[Path]:
    if args.socket is not None:
        return [args.socket]
    if args.name is not None:
        if "/" in args.name:  # a socket's path given as NAME (StatusSocket = /some/path)
            return [Path(args.name)]
        return [args.rundir / f"{args.name}.sock"]
    return sorted(args.rundir.glob("*.sock"))


def _why(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return (f"{exc.strerror}: is the tunnel running? (`systemctl status "
                f"dtlsvpn@{path.stem}`)")
    return exc.strerror or str(exc)


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{datetime.timedelta(seconds=round(seconds))} ago"


def _drops(drops: dict[str, int]) -> str:
    nonzero = {k: v for k, v in sorted(drops.items()) if v}
    return ", ".join(f"{k}={v}" for k, v in nonzero.items()) if nonzero else "none"


def summary(snap: dict[str, Any]) -> str:
    i = snap["interface"]
    out = [f"interface: {i['name']} ({i['device']})",
           f"  role: {i['role']}" + (f", listening on {i['listen']}" if i.get("listen") else ""),
           f"  addresses: {', '.join(i['addresses']) or '-'}",
           f"  mtu: {i['mtu']} ({i['mtu_policy']})"]
    clamp = i.get("mss_clamp")
    if "mss_clamp" in i:
        out.append("  tcp mss clamp: " + (f"{clamp['ipv4']} (IPv4), {clamp['ipv6']} (IPv6), "
                                          f"{i.get('mss_clamped', 0)} SYNs clamped"
                                          if clamp else "off"))
    if "compiled_lane" in i:
        lane = i["compiled_lane"]
        out.append("  compiled lane: " + (
            f"on, {lane['flows']} peer(s); {lane['tx_packets']} packets sent and "
            f"{lane['rx_packets']} received in C, {lane['handed_back']} left to Python"
            if lane else "off"))
    if "tun_offload" in i:
        out.append("  tun offload: " + (
            f"on, TSO on read {i.get('tun_tso', 'off')}; {i.get('tun_tso_reads', 0)} "
            f"super-packets read, {i.get('tun_gso_writes', 0)} written "
            f"({i.get('tun_gso_segments', 0)} segments)" if i["tun_offload"] == "on"
            else "off"))
    if i.get("icmp_too_big_sent") or i.get("fragmented"):
        out.append(f"  too big: {i.get('icmp_too_big_sent', 0)} ICMP errors sent, "
                   f"{i.get('fragmented', 0)} IPv4 packets fragmented")
    if i.get("handshake_failures"):
        out.append(f"  failed handshakes: {_drops(i['handshake_failures'])}")
    if i.get("untrusted_closes"):
        out.append(f"  closed by a trust reload: {i['untrusted_closes']}")
    out.append(f"  drops: {_drops(i.get('drops', {}))}")
    out += fleet_status_lines(i)  # issue 15: server id, shared keys, foreign CIDs
    for p in snap["peers"]:
        out += ["", f"peer: {p['name']}",
                f"  state: {p['state']}",
                f"  endpoint: {p['endpoint'] or '-'} ({p['transport']})",
                f"  allowed ips: {', '.join(p['allowed_ips'])}",
                f"  suite: {p.get('suite') or '-'}"]
        out.append(f"  latest handshake: {_ago(p.get('last_handshake_ago'))}"
                   + (f" ({'resumed' if p['resumed'] else 'full'})"
                      if p.get("last_handshake") else ""))
        if p.get("rekeys"):
            out.append(f"  key renewals: {p['rekeys']}, last {_ago(p.get('last_rekey_ago'))}"
                       + (" (renewing now)" if p.get("rekeying") else ""))
        rtt = p.get("heartbeat_rtt_ms")
        tcp = p.get("transport") == "tcp" and p["state"] == "established"
        out.append(f"  heartbeat rtt: {rtt} ms" if rtt is not None
                   else "  heartbeat rtt: not measured yet")
        if p.get("plpmtu"):
            out.append(f"  path mtu: {p['plpmtu']}, inner mtu: {p['inner_mtu']}")
        elif tcp:
            out.append("  path mtu: -, TCP carries (its segments fit the path by themselves)")
        else:
            out.append("  path mtu: unknown (no discovery yet)")
        out.append(f"  transfer: {_bytes(p['rx_bytes'])} received ({p['rx_packets']} packets), "
                   f"{_bytes(p['tx_bytes'])} sent ({p['tx_packets']} packets)")
        out.append(f"  drops: {_drops(p.get('drops', {}))}")
        if p.get("last_error") and p["state"] != "established":
            out.append(f"  last error: {p['last_error']}")
    return "\n".join(out) + "\n"


def status_command(args: argparse.Namespace) -> int:
    paths = _sockets(args)
    scanned = args.socket is None and args.name is None
    if not paths:
        print(f"dtlsvpn: no running tunnels (no sockets in {args.rundir})", file=sys.stderr)
        if args.json:
            print(json.dumps({"version": JSON_VERSION, "tunnels": [], "errors": []}, indent=2))
        return 1
    rc = 0
    docs: list[Any] = []
    errors: list[dict[str, str]] = []
    for path in paths:
        try:
            text = query(path, as_json=not args.raw)
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE and scanned:
                continue  # a datagram socket in the directory: not a status socket
            message = _why(exc, path)
            print(f"dtlsvpn: {path}: {message}", file=sys.stderr)
            errors.append({"socket": str(path), "error": message})
            rc = 1
            continue
        if args.raw:
            sys.stdout.write(text)
            continue
        snap = json.loads(text)
        if args.json or args.prometheus:
            docs.append(snap)
        else:
            sys.stdout.write(summary(snap))
    if args.json:
        # One shape in every mode (schema/status.schema.json, README "Status and metrics").
        print(json.dumps({"version": JSON_VERSION, "tunnels": docs, "errors": errors},
                         indent=2))
    elif args.prometheus:
        sys.stdout.write(format_prometheus(docs))
    return rc
