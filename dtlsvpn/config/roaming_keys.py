"""A roaming client's keys of [Interface]: DNS, FwMark, Table, KillSwitch (README "A roaming
laptop"), and the NAT keepalive warning; read by ``loader.py``."""

from __future__ import annotations

from typing import Any

from dtlsvpn.config import values
from dtlsvpn.config.fields import Fields
from dtlsvpn.config.model import DEFAULT_FWMARK
from dtlsvpn.config.values import Role

# --- roam (issue 11): DNS, FwMark, Table, KillSwitch -------------------------------------

_RESERVED_TABLES = {0, 253, 254, 255}  # unspec, default, main, local


def _dns_entry(text: str) -> str:
    """A resolver's IP address, or a search domain."""
    if values.is_ip_literal(text) or values.is_hostname(text.rstrip(".")):
        return text
    raise ValueError(f"expected a resolver's IP address or a search domain, got {text!r}")


def _mark(text: str) -> int:
    """A 32-bit firewall mark or table number, decimal or 0x hex, not 0."""
    try:
        n = int(text, 0)
    except ValueError:
        raise ValueError(f"expected a number from 1 to 4294967295 (or 0x...), got {text!r}"
                         ) from None
    if not 0 < n < 1 << 32:
        raise ValueError(f"expected a number from 1 to 4294967295, got {text}")
    return n


NAT_UDP_TIMEOUT = 30.0  # seconds: a common NAT's idle timeout for a UDP mapping


def nat_warning(f: Fields, role: Role, heartbeat: float) -> list[str]:
    """A client's idle heartbeats keep its NAT mapping alive only if they come more often
    than the NAT forgets it (30 s is common; the 2 s default is well inside)."""
    if role != "client" or heartbeat < NAT_UDP_TIMEOUT * 0.8:
        return []
    return [f"{f.path}:{f.line('HeartbeatInterval')}: HeartbeatInterval: {heartbeat:g}s "
            f"between idle heartbeats: a NAT that forgets a UDP mapping after "
            f"{NAT_UDP_TIMEOUT:g}s would drop the tunnel while it is idle"]


def roaming_keys(f: Fields, role: Role) -> dict[str, Any]:
    if role == "server":
        for key in ("DNS", "FwMark", "Table", "KillSwitch"):
            if f.has(key):
                raise f.error(key, "only for a client (a server's own routes and resolvers "
                                   "are the system's)")
    mark = f.get("FwMark", _mark, DEFAULT_FWMARK)
    table = f.get("Table", _mark, mark)
    if table in _RESERVED_TABLES:
        raise f.error("Table", f"expected a table of our own, not {table} (main, local or "
                               f"default)")
    return {"dns": tuple(d for d, _ in f.many("DNS", _dns_entry)), "fwmark": mark,
            "table": table, "kill_switch": f.get("KillSwitch", values.boolean, False)}
