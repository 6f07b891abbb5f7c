"""Site-to-site needs IP forwarding: say so when it is off.

A ``[Peer]`` whose ``AllowedIPs`` or ``Route`` carry a subnet beyond the tunnel (not
inside one of the interface's ``Address`` networks, and not a default route) links
LANs: a server forwards packets between its LAN and the clients' subnets, a gateway
client between its LAN and the server's.  The kernel does that only with
``net.ipv4.ip_forward = 1`` (IPv4) and ``net.ipv6.conf.all.forwarding = 1`` (IPv6);
without it the gateways reach each other and the LAN hosts lose every packet.

dtlsvpn does not change sysctls itself (the unit's ``ProtectKernelTunables=`` makes
``/proc/sys`` read-only, and forwarding is the host's policy, with its firewall):
:func:`problems` returns the sentences the daemon logs at WARNING on start-up and that
``check-config`` prints.  A client with only a default route (a full tunnel for a
laptop) needs no forwarding and gets no warning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from dtlsvpn.config import Config
from dtlsvpn.config.values import Network

SYSCTLS = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


def _proc_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    """The value of a sysctl, or None when it cannot be read (a sandbox hides /proc/sys)."""
    with contextlib.suppress(OSError):
        return _proc_path(name).read_text().strip()
    return None


def beyond_tunnel(cfg: Config) -> dict[int, list[tuple[str, Network]]]:
    """(peer name, prefix) of every AllowedIPs/Route prefix outside the tunnel's networks,
    by IP version (default routes left out)."""
    tunnels = [a.network for a in cfg.interface.addresses]
    out: dict[int, list[tuple[str, Network]]] = {}
    for peer in cfg.peers:
        seen: set[Network] = set()
        for net in (*peer.allowed_prefixes, *peer.routes):
            if net in seen or net.prefixlen == 0:
                continue
            seen.add(net)
            inside = any(t.version == net.version and net.subnet_of(t)  # type: ignore[arg-type]
                         for t in tunnels)
            if not inside:
                out.setdefault(net.version, []).append((peer.name, net))
    return out


def problems(cfg: Config, read: Callable[[str], str | None] = read_sysctl, *,
             unreadable: bool = True) -> list[str]:
    """What is missing for the subnets beyond the tunnel to be forwarded (empty: nothing).
    ``unreadable=False`` leaves out the sysctls that could not be read (the daemon under
    the unit: ``ProcSubset=pid`` hides /proc/sys, and check-config checks from outside)."""
    out: list[str] = []
    for version, items in sorted(beyond_tunnel(cfg).items()):
        name = SYSCTLS[version]
        value = read(name)
        if value == "1" or (value is None and not unreadable):
            continue
        shown = ", ".join(f"{net} ([Peer] {peer})" for peer, net in items[:4])
        if len(items) > 4:
            shown += f" and {len(items) - 4} more"
        state = (f"{name} is {value}" if value is not None
                 else f"{name} could not be read here")
        out.append(f"{cfg.path}: {shown} lie beyond the tunnel (site-to-site), but {state}: "
                   f"hosts of those subnets and of this side's LAN reach each other only "
                   f"with forwarding on: `sysctl -w {name}=1`, and "
                   f"`{name} = 1` in /etc/sysctl.d/90-dtlsvpn.conf to keep it")
    return out
