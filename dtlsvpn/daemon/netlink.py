"""Kernel configuration of the tunnel interface through pyroute2's public ``IPRoute`` API.

The daemon's loop is a plain epoll loop, not asyncio, so the synchronous ``IPRoute`` is
safe to use at any time (pyroute2 ≥ 0.9 runs an event loop of its own per thread; only a
*running asyncio loop* in the same thread would clash).  Each operation opens and closes
its own ``IPRoute``: configuration changes are rare (start, MTU change, reload, stop).

``Netlink`` remembers what it added so that ``teardown`` removes exactly that: routes
first, then addresses.  The TUN device itself goes away when its descriptor is closed
(see ``tun.py``); ``wait_gone`` polls for that instead of sleeping.

``NetlinkMonitor`` is the other direction: a non-blocking rtnetlink socket subscribed to
the kernel's link, address and route groups (pyroute2's ``RTMGRP_*``), registered with
the daemon's own epoll loop; ``drain`` parses what arrived with pyroute2's rtnl marshal
and counts the changes.  ``route_source`` asks the kernel which source address it would
pick towards a destination now (``ip route get``), the address a fresh socket gets.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger("dtlsvpn")

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


@contextlib.contextmanager
def _iproute() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise OSError(errno.ENODEV, f"no interface {ifname}")
    return int(found[0])


class Netlink:
    """Link state, MTU, addresses and routes of one interface."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.addresses: list[Interface] = []
        self.routes: list[Network] = []

    def configure(self, mtu: int, addresses: Iterable[Interface],
                  routes: Iterable[Network]) -> None:
        """MTU, link up, addresses, then routes not already covered by an address."""
        with _iproute() as ipr:
            idx = _index(ipr, self.ifname)
            ipr.link("set", index=idx, mtu=mtu)
            ipr.link("set", index=idx, state="up")
            for iface in addresses:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                self.addresses.append(iface)
            self._add_routes(ipr, idx, routes)

    def _add_routes(self, ipr: Any, idx: int, routes: Iterable[Network]) -> None:
        connected = {a.network for a in self.addresses}
        for net in routes:
            if net in connected or net in self.routes:
                continue  # the kernel's connected route already covers it
            try:
                ipr.route("add", dst=str(net), oif=idx)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                log.warning("route %s already exists; left as it is", net)
                continue
            self.routes.append(net)

    def set_addresses(self, addresses: Iterable[Interface]) -> None:
        """Reload: remove the addresses no longer wanted, add the new ones (the kernel's
        connected routes follow them)."""
        wanted = list(addresses)
        with _iproute() as ipr:
            idx = _index(ipr, self.ifname)
            for iface in [a for a in self.addresses if a not in wanted]:
                with contextlib.suppress(NetlinkError):
                    ipr.addr("del", index=idx, address=str(iface.ip),
                             prefixlen=iface.network.prefixlen)
                self.addresses.remove(iface)
            for iface in [a for a in wanted if a not in self.addresses]:
                ipr.addr("add", index=idx, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
                self.addresses.append(iface)

    def add_routes(self, routes: Iterable[Network]) -> None:
        with _iproute() as ipr:
            self._add_routes(ipr, _index(ipr, self.ifname), routes)

    def remove_routes(self, routes: Iterable[Network]) -> None:
        with _iproute() as ipr:
            for net in list(routes):
                if net not in self.routes:
                    continue
                self.routes.remove(net)
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", dst=str(net), oif=_index(ipr, self.ifname))

    def set_mtu(self, mtu: int) -> None:
        with _iproute() as ipr:
            ipr.link("set", index=_index(ipr, self.ifname), mtu=mtu)

    def mtu(self) -> int:
        with _iproute() as ipr:
            link = ipr.link("get", index=_index(ipr, self.ifname))[0]
            return int(link.get("mtu"))

    def teardown(self) -> None:
        """Remove our routes and addresses; tolerate an interface that is already gone."""
        try:
            with _iproute() as ipr:
                found = ipr.link_lookup(ifname=self.ifname)
                if found:
                    idx = found[0]
                    for net in reversed(self.routes):
                        with contextlib.suppress(NetlinkError):
                            ipr.route("del", dst=str(net), oif=idx)
                    for iface in reversed(self.addresses):
                        with contextlib.suppress(NetlinkError):
                            ipr.addr("del", index=idx, address=str(iface.ip),
                                     prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise
        self.routes.clear()
        self.addresses.clear()

    def wait_gone(self, timeout: float = 5.0) -> bool:
        """Poll until the interface no longer exists (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with _iproute() as ipr:
            while ipr.link_lookup(ifname=self.ifname):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
        return True


def route_mtu(dst: str) -> int | None:
    """MTU of the route the kernel would use towards ``dst`` (route metric, else the link's)."""
    try:
        with _iproute() as ipr:
            routes = ipr.route("get", dst=dst)
            if not routes:
                return None
            route = routes[0]
            metrics = route.get("RTA_METRICS")
            if metrics is not None:
                mtu = metrics.get("RTAX_MTU")
                if mtu:
                    return int(mtu)
            oif = route.get("RTA_OIF")
            if oif is None:
                return None
            return int(ipr.link("get", index=oif)[0].get("mtu"))
    except (NetlinkError, OSError, IndexError, ValueError):
        return None


# --- watching the kernel ---------------------------------------------------------------

MONITOR_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
                  | RTMGRP_IPV6_ROUTE)
CHANGES = frozenset({"RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR", "RTM_DELADDR",
                     "RTM_NEWROUTE", "RTM_DELROUTE"})
_MONITOR_BUFFER = 1 << 20


class NetlinkMonitor:
    """The kernel's link, address and route notifications on a descriptor of our loop."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MONITOR_BUFFER)
            sock.bind((0, MONITOR_GROUPS))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._marshal = MarshalRtnl()

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every queued notification; the number of link/address/route changes (an
        overrun, ENOBUFS, counts as one: something changed, the details were lost)."""
        changes = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return changes
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    changes += 1
                    continue
                raise
            try:
                messages = self._marshal.parse(data)
            except Exception:  # pyroute2 raises what it likes on a bad message
                changes += 1
                continue
            changes += sum(1 for msg in messages if msg.get("event") in CHANGES)

    def close(self) -> None:
        self.sock.close()


def route_source(dst: str, mark: int = 0) -> str | None:
    """The source address the kernel picks towards ``dst`` now (with firewall ``mark``),
    or None when it has no route."""
    try:
        with _iproute() as ipr:
            kwargs: dict[str, Any] = {"dst": dst}
            if mark:
                kwargs["mark"] = mark
            routes = ipr.route("get", **kwargs)
            if not routes:
                return None
            src = routes[0].get("RTA_PREFSRC")
            return str(src) if src else None
    except (NetlinkError, OSError, IndexError, ValueError):
        return None
