"""The daemon's NAME.conf text, built from keyword arguments.

One ``[Interface]`` section and any number of ``[Peer]`` sections, each a list of
``Key = value`` lines in the order the keywords were given, as the README's
"Configuring a tunnel" documents.  A keyword is the key in snake case
(``listen_address`` -> ``ListenAddress``; the acronyms ``mtu``, ``ca``,
``allowed_ips``, ``psk_identity``, ``psk_file``, ``mss_clamp`` and ``connection_id``
keep their README spelling).  Values: ``None`` leaves the key out, ``True``/``False``
are ``yes``/``no``, a list or tuple is comma-separated, anything else is ``str()``.

The builder checks nothing about meaning: a test that wants a broken file can
build one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

Value = str | int | float | bool | Path | Sequence[str | Path] | None

_SPELLING = {
    "mtu": "MTU",
    "ca": "CA",
    "allowed_ips": "AllowedIPs",
    "psk_identity": "PSKIdentity",
    "psk_file": "PSKFile",
    "mss_clamp": "MSSClamp",
    "connection_id": "ConnectionID",
    "tun_offload": "TUNOffload",
}


def key_name(keyword: str) -> str:
    """The README's spelling of a keyword: ``dead_peer_timeout`` -> ``DeadPeerTimeout``."""
    return _SPELLING.get(keyword) or "".join(part.capitalize() for part in keyword.split("_"))


def render_value(value: Value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float | Path):
        return str(value)
    assert value is not None
    return ", ".join(str(v) for v in value)


def section(kind: str, **keys: Value) -> str:
    """One ``[kind]`` section: its header and a ``Key = value`` line per keyword."""
    lines = [f"[{kind}]"]
    lines += [f"{key_name(k)} = {render_value(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"


def peer_section(**keys: Value) -> str:
    """A ``[Peer]`` section, e.g. to append to a file for a reload."""
    return section("Peer", **keys)


class TunnelConf:
    """A whole NAME.conf: an optional ``#`` comment, ``[Interface]``, then ``[Peer]``s."""

    def __init__(self, *, comment: str | None = None, **interface: Value) -> None:
        self.comment = comment
        self.interface: dict[str, Value] = dict(interface)
        self.peers: list[dict[str, Value]] = []

    def set(self, **interface: Value) -> TunnelConf:
        """Add or change ``[Interface]`` keys (a changed key keeps its place)."""
        self.interface.update(interface)
        return self

    def peer(self, **keys: Value) -> TunnelConf:
        """Add a ``[Peer]`` section."""
        self.peers.append(dict(keys))
        return self

    def render(self) -> str:
        head = [f"# {self.comment}\n"] if self.comment else []
        parts = [section("Interface", **self.interface)]
        parts += [section("Peer", **p) for p in self.peers]
        return "".join(head) + "\n".join(parts)

    def write(self, path: Path) -> Path:
        """Write the text to ``path`` and return the path."""
        path.write_text(self.render())
        return path
