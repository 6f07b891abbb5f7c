"""``dtlsvpn check-config NAME|FILE``: validate a configuration without touching the system.

Loads the file exactly as the daemon would (syntax, values, cross-checks,
credential files and their modes) but opens no socket, device or netlink
handle and resolves no host name.

Output contract:
- success: one line for the interface, then one line per ``[Peer]`` on
  stdout; warnings as ``warning: FILE:LINE: ...`` on stderr; exit status 0.
- error: ``FILE:LINE: KEY: message`` on stderr for every mistake found (malformed
  lines and bad values do not stop the check; a missing section or key that the rest
  depends on does), then ``FILE: N mistakes`` when there are several; exit status 1.
- site-to-site prefixes with IP forwarding off: a warning (``daemon/forwarding.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dtlsvpn.cli.argtypes import format_hostport
from dtlsvpn.config import (
    DEFAULT_CONFDIR,
    Config,
    PeerConfig,
    config_path,
    spki_pin_text,
)
from dtlsvpn.daemon import forwarding
from dtlsvpn.daemon.settings import load_config
from dtlsvpn.errors import ConfigError


def _join(items: tuple[object, ...]) -> str:
    return ", ".join(str(i) for i in items) if items else "-"


def describe_interface(cfg: Config) -> str:
    """One line: role, device, listen address, tunnel addresses, MTU policy."""
    iface = cfg.interface
    where = f" on {format_hostport(iface.listen)}" if iface.listen is not None else ""
    mtu = "auto" if iface.mtu is None else str(iface.mtu)
    return (f"{cfg.name}: {iface.role}{where}, device {iface.device}, "
            f"address {_join(iface.addresses)}, mtu {mtu}, {len(cfg.peers)} peer(s)")


def describe_peer(cfg: Config, peer: PeerConfig) -> str:
    """One line: name, endpoint, how it authenticates, allowed prefixes and routes."""
    auth: list[str] = []
    if cfg.credentials.ca_certs and (peer.certificate_name is not None
                                     or cfg.interface.role == "client"):
        auth.append("CA")
    if peer.certificate_name is not None:
        auth.append(f"CN={peer.certificate_name}")
    auth += [f"pin {spki_pin_text(p)}" for p in sorted(peer.pinned_spki_sha256)]
    if peer.server_name is not None:
        auth.append(f"name {peer.server_name}")
    if peer.psk_identity is not None:
        auth.append(f"PSK {peer.psk_identity.decode(errors='replace')!r}")
    endpoint = f" endpoint {format_hostport(peer.endpoint)}," if peer.endpoint is not None else ""
    return (f"peer {peer.name}:{endpoint} auth {' + '.join(auth)}, "
            f"allowed {_join(peer.allowed_prefixes)}, routes {_join(peer.routes)}")


def _mistakes(errors: list[ConfigError]) -> list[ConfigError]:
    """Each mistake once: a later error about a key already reported (a bad value, then
    that key "missing") is its consequence, not another mistake."""
    seen: set[tuple[int | None, str | None]] = set()
    keys: set[str] = set()
    out = []
    for exc in errors:
        if (exc.line, exc.key) in seen or (exc.key is not None and exc.key in keys
                                           and exc.msg.startswith("missing")):
            continue
        seen.add((exc.line, exc.key))
        if exc.key is not None:
            keys.add(exc.key)
        out.append(exc)
    return out


def run_check(args: argparse.Namespace) -> int:
    path = config_path(args.config, Path(args.confdir))
    errors: list[ConfigError] = []
    cfg = None
    try:
        cfg = load_config(path, errors=errors)
    except ConfigError as exc:
        errors.append(exc)
    if errors or cfg is None:
        mistakes = sorted(_mistakes(errors), key=lambda e: e.line or 0)
        for mistake in mistakes:
            print(mistake, file=sys.stderr)
        if len(mistakes) > 1:
            print(f"{path}: {len(mistakes)} mistakes", file=sys.stderr)
        return 1
    for warning in (*cfg.warnings, *forwarding.problems(cfg)):
        print(f"warning: {warning}", file=sys.stderr)
    print(describe_interface(cfg))
    for peer in cfg.peers:
        print(describe_peer(cfg, peer))
    return 0


def add_parsers(commands: Any) -> None:
    """Register ``check-config``."""
    check = commands.add_parser(
        "check-config", help="validate a configuration file without touching the system",
        description="Validate /etc/dtlsvpn/NAME.conf (or FILE) as the daemon would load it, "
                    "credential files included, without opening sockets or devices. Prints a "
                    "summary per peer; on error prints FILE:LINE: KEY: message and exits 1.",
    )
    check.add_argument("config", metavar="NAME|FILE",
                       help="instance name (CONFDIR/NAME.conf) or a path to a .conf file")
    check.add_argument("--confdir", metavar="DIR", default=str(DEFAULT_CONFDIR),
                       help=f"directory of NAME.conf files (default {DEFAULT_CONFDIR})")
    check.set_defaults(func=run_check, parser_of_command=check)
