"""Debian packages the bench needs, installed on first use.

``apt-get update`` runs only when a program is missing, then one
``apt-get install --no-install-recommends`` for the packages that provide the
missing programs.  A failed install is not fatal here: the systems that needed the
program are then reported missing, with the reason, by :mod:`bench.systems`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from bench.procs import BenchError, run

# program -> Debian package providing it
PACKAGES: dict[str, str] = {
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "ip": "iproute2",
    "openssl": "openssl",
    "openvpn": "openvpn",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "ocserv": "ocserv",
    "openconnect": "openconnect",
}

COMMON = ("iperf3", "ping", "ip", "openssl")


def missing(programs: list[str]) -> list[str]:
    return [p for p in programs if shutil.which(p) is None]


def ensure(programs: list[str], say: Callable[[str], None] = print) -> str | None:
    """Install what provides the missing ``programs``; None or the error text."""
    absent = missing(programs)
    if not absent:
        return None
    packages = sorted({PACKAGES[p] for p in absent})
    if os.geteuid() != 0:
        return f"missing {', '.join(absent)} and not root: apt-get install {' '.join(packages)}"
    say(f"installing from Debian: {' '.join(packages)} (missing: {', '.join(absent)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    try:
        run(["apt-get", *lock, "update", "-q"], timeout=600, env=env)
        run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *packages],
            timeout=900, env=env)
    except BenchError as exc:
        return str(exc)
    still = missing(programs)
    return f"still missing after apt-get install: {', '.join(still)}" if still else None
