"""Option values of the command-line tools: argparse ``type=`` functions and HOST:PORT text.

Purpose: the spellings the tools share (``HOST:PORT``, seconds) parsed once, the problems
found after parsing reported one way, and an address printed back the way it is written.

Invariants:
- A value argparse cannot convert raises ``argparse.ArgumentTypeError`` (argparse prints
  the usage and exits 2); a problem found once the options are parsed (options that
  exclude each other, an unreadable file) raises :class:`ArgumentProblem`, which
  ``cli.main`` reports the same way with the same exit status 2.
- ``HOST:PORT`` takes ``[IPV6]:PORT`` for IPv6 and an empty host for "any address";
  :func:`format_hostport` writes the same form back.
"""

from __future__ import annotations

import argparse
import ipaddress


class ArgumentProblem(Exception):
    """A bad option value or an unreadable file: reported with exit status 2."""


def hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port); port 0 is allowed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise argparse.ArgumentTypeError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def format_hostport(addr: tuple[object, ...]) -> str:
    """``HOST:PORT`` of the first two fields, brackets around an IPv6 host."""
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def seconds(text: str) -> float:
    """A positive number of seconds (below a million): timeouts and intervals."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 address, not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def read_file(path: str, what: str = "") -> bytes:
    """The bytes of ``path``; ArgumentProblem naming the file (and ``what`` it is)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        name = f"{what} {path}" if what else path
        raise ArgumentProblem(f"cannot read {name}: {exc.strerror}") from None
