"""``dtlsvpn dtls server|client``: debug tools around the sans-I/O DTLS core.

A deliberately small real-socket shell (architecture.md, "Keep the shell tiny"): one UDP
socket and stdin on the daemon's event loop (``daemon/loop.py``), which reads the
monotonic clock (the core's ``now``) and the wall clock (certificate and ticket checks)
once per iteration.  The modules:

- ``options``: the flags, and the DtlsConfig they make (files read, conflicts refused);
- ``output``: every line the tools print and its exact format (the interop tests parse
  it; README "DTLS debug tools" documents it);
- ``server`` and ``client``: one role each, on the loop;
- ``stream_tool``: both roles over TLS 1.2 on TCP (``--tcp``, with ``--sp`` framing).

Exit status: 2 for bad arguments or unreadable files; the client exits 0 only if its
handshake completed; ``server --once`` exits 0 only if the association it served
completed its handshake.
"""

from __future__ import annotations

from typing import Any

from dtlsvpn.cli.dtls.client import run_client
from dtlsvpn.cli.dtls.options import add_client_parser, add_server_parser
from dtlsvpn.cli.dtls.server import run_server
from dtlsvpn.cli.dtls.stream_tool import either


def add_parsers(commands: Any) -> None:
    """Register ``server`` and ``client`` on an argparse subparsers object."""
    add_server_parser(commands, either(run_server))  # either: --tcp runs stream_tool
    add_client_parser(commands, either(run_client))
