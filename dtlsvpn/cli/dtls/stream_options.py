"""The flags of the debug tools' TLS-over-TCP mode (``stream_tool.py``)."""

from __future__ import annotations

import argparse


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcp", action="store_true",
                   help="TLS 1.2 over TCP instead of DTLS 1.2 over UDP")
    p.add_argument("--sp", action="store_true",
                   help="with --tcp: SP framing (protocol header, then length-prefixed "
                        "messages) as the daemon's TCP fallback speaks it")
