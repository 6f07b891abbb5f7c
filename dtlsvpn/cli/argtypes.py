"""Option values of the command-line tools: argparse ``type=`` functions and HOST:PORT text.

Purpose: the tools take the configuration file's spellings, so their option values go
through the same converters (:mod:`dtlsvpn.config.values`); this module turns a
converter's ValueError into an argparse error, reports the problems found after parsing
one way, and prints an address back the way it is written.

Invariants:
- A value argparse cannot convert raises ``argparse.ArgumentTypeError`` with the
  converter's message (argparse prints the usage and exits 2); a problem found once the
  options are parsed (options that exclude each other, an unreadable file) raises
  :class:`ArgumentProblem`, which ``cli.main`` reports the same way, exit status 2.
- ``HOST:PORT`` takes ``[IPV6]:PORT`` for IPv6, port 0 (a listener's "any port") and
  ``:PORT`` (any address); :func:`format_hostport` writes the same form back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from dtlsvpn.config import values

T = TypeVar("T")


class ArgumentProblem(Exception):
    """A bad option value or an unreadable file: reported with exit status 2."""


def _converted(convert: Callable[[str], T], text: str) -> T:
    try:
        return convert(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT``; a host name or address; port 0 allowed."""
    if text.startswith(":") and ":" not in text[1:]:
        port = _converted(lambda t: values.hostport(t, ip_only=True, min_port=0),
                          "0.0.0.0" + text)[1]
        return "", port
    return _converted(lambda t: values.hostport(t, ip_only=False, min_port=0), text)


def seconds(text: str) -> float:
    """A duration (``2``, ``2.5s``, ``500ms``): timeouts and intervals."""
    return _converted(values.seconds, text)


def format_hostport(addr: tuple[object, ...]) -> str:
    """``HOST:PORT`` of the first two fields, brackets around an IPv6 host."""
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_file(path: str, what: str = "") -> bytes:
    """The bytes of ``path``; ArgumentProblem naming the file (and ``what`` it is)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        name = f"{what} {path}" if what else path
        raise ArgumentProblem(f"cannot read {name}: {exc.strerror}") from None
