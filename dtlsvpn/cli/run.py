"""``dtlsvpn run NAME|FILE``: run the VPN daemon for one configuration.

``NAME`` means ``CONFDIR/NAME.conf`` (default ``/etc/dtlsvpn``), as in
``systemctl start dtlsvpn@NAME``; anything with a ``/`` or ending in ``.conf`` is a
file.  The daemon never forks: it stays in the foreground, logs to stderr (each line
with a timestamp) or to the journal under systemd, and reports readiness with sd_notify
when ``NOTIFY_SOCKET`` is set; ``--log-level`` overrides ``LogLevel``.  ``--foreground``
is accepted for scripts that spell it out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dtlsvpn.config import DEFAULT_CONFDIR, config_path


def add_parsers(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="run the VPN daemon for a configuration",
        description="Bring up the tunnel described by NAME (CONFDIR/NAME.conf) or FILE and "
                    "keep it up until SIGTERM; SIGHUP re-reads the [Peer] sections.",
    )
    run.add_argument("config", metavar="NAME|FILE")
    run.add_argument("--confdir", metavar="DIR", type=Path, default=DEFAULT_CONFDIR,
                     help=f"directory of NAME.conf files (default {DEFAULT_CONFDIR})")
    run.add_argument("--log-level", metavar="LEVEL", type=str.lower,
                     choices=("debug", "info", "warning", "error"),
                     help="debug, info, warning or error (overrides LogLevel in the file)")
    run.add_argument("--foreground", action="store_true",
                     help="stay in the foreground (always the case; for compatibility)")
    run.set_defaults(func=run_command, parser_of_command=run)


def run_command(args: argparse.Namespace) -> int:
    from dtlsvpn.daemon.daemon import run_daemon

    path = config_path(args.config, args.confdir)
    name = None if path.name != f"{args.config}.conf" else args.config
    return run_daemon(path, name, args.log_level)
