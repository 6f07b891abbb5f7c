"""The ``dtlsvpn`` command line: one argparse tree of subcommands.

Each command module registers its own subparsers through an ``add_parsers``
function and sets ``func`` (a callable taking the parsed namespace and
returning an exit status) on every leaf. ``main`` never raises for bad
arguments: argparse's exit status (2 for usage errors, 0 for ``--help``) is
returned instead, so tests can call it in-process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from dtlsvpn import __version__
from dtlsvpn.cli import dtls as dtls_tools
from dtlsvpn.cli.argtypes import ArgumentProblem

# Top-level command modules: each has ``add_parsers(commands)`` that adds its
# subcommands to the tree.  Add a module here when it lands.
COMMAND_MODULES: tuple[str, ...] = ("check", "keys", "probe", "run", "status")
COMMAND_MODULES += ("fleet",)  # fleet-rules (engineer fleet, issue 15)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="dtlsvpn", description="A userspace VPN over DTLS 1.2, and its debug tools."
    )
    parser.add_argument("--version", action="version", version=f"dtlsvpn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dtls = commands.add_parser(
        "dtls", help="DTLS 1.2 debug tools (a plain DTLS client and server)",
        description="DTLS 1.2 debug tools driving the project's DTLS core over a real socket.",
    )
    dtls_commands = dtls.add_subparsers(dest="dtls_command", metavar="TOOL", required=True)
    dtls_tools.add_parsers(dtls_commands)
    for name in COMMAND_MODULES:
        importlib.import_module(f"dtlsvpn.cli.{name}").add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command named by ``argv`` (default ``sys.argv[1:]``); return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors (2) and --help (0) this way
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler = args.func
    try:
        return handler(args)
    except ArgumentProblem as exc:
        args.parser_of_command.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `dtlsvpn ... | head`: the reader went away; no traceback, and none at exit
        # either (the interpreter's final flush would hit the closed pipe again).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, as a shell reports a command a pipe ended


if __name__ == "__main__":
    raise SystemExit(main())
