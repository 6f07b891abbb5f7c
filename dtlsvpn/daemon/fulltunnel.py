"""Full tunnel the way wg-quick does it: policy routing, and a mark on our own socket.

A client whose AllowedIPs (or Route) has ``0.0.0.0/0`` and/or ``::/0`` sends everything
of that family through the tunnel, while its own UDP keeps the real route:

- the client's UDP socket carries the firewall mark ``FwMark`` (SO_MARK, default 51820);
- table ``Table`` (default 51820) holds ``default dev TUN``;
- rule ``PRIORITY_MARK``: ``not fwmark FwMark lookup Table``: everything unmarked (all
  traffic but ours) goes to the tunnel;
- rule ``PRIORITY_SUPPRESS``, before it: ``lookup main suppress_prefixlength 0``: the
  main table still decides for anything it has a *more specific* route to than a
  default route (the LAN, on-link subnets, host routes), never by its default route.

Our socket is marked, so it skips the tunnel's rule and uses the main table's default
route; when the laptop moves (another default route in main), the socket follows it
(``netwatch.py`` asks the kernel with the mark).  Nothing in the main table changes.

``KillSwitch = yes`` adds ``unreachable default`` (lowest preference) to the table: if
the TUN device is gone (a crash: its route vanishes with it), unmarked traffic finds
"unreachable" instead of falling through to the main table's default route; after a
crash the rules stay until the next start or ``dtlsvpn`` cleans them.  Without it a
crashed daemon leaves rules pointing to an empty table: traffic takes the normal route.

``setup`` removes stale state first (our rules at our priorities, our table's routes:
what a crashed run left), ``teardown`` removes exactly what it added.  Every operation
is pyroute2's ``IPRoute``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("dtlsvpn")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_FWMARK = 51820
PRIORITY_SUPPRESS = 32760
PRIORITY_MARK = 32761
MAIN_TABLE = 254
FIB_RULE_INVERT = 0x2
KILL_METRIC = 4278198272  # below every real default route's preference
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_ANY = {4: "0.0.0.0/0", 6: "::/0"}


def full_families(routes: Iterable[Network]) -> set[int]:
    """The IP versions a /0 route asks to carry entirely."""
    return {net.version for net in routes if net.prefixlen == 0}


def main_table_routes(routes: Iterable[Network], *, client: bool) -> list[Network]:
    """The routes for the main table: a client's /0 routes are the full tunnel's."""
    return [r for r in routes if not (client and r.prefixlen == 0)]


@contextlib.contextmanager
def _iproute() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


class FullTunnel:
    """The rules and the table of one client's full tunnel."""

    def __init__(self, ifname: str, families: set[int], *, mark: int = DEFAULT_FWMARK,
                 table: int = DEFAULT_FWMARK, kill_switch: bool = False) -> None:
        self.ifname = ifname
        self.families = sorted(families)
        self.mark = mark
        self.table = table
        self.kill_switch = kill_switch
        self.active = False

    def setup(self) -> None:
        with _iproute() as ipr:
            stale = self._clean(ipr)
            if stale:
                log.info("full tunnel: removed %d stale rule(s)/route(s) of an earlier run",
                         stale)
            idx = ipr.link_lookup(ifname=self.ifname)
            if not idx:
                raise OSError(f"no interface {self.ifname}")
            for version in self.families:
                family = FAMILIES[version]
                ipr.route("add", dst=_ANY[version], oif=idx[0], table=self.table,
                          family=family)
                if self.kill_switch:
                    ipr.route("add", dst=_ANY[version], type="unreachable",
                              table=self.table, family=family, priority=KILL_METRIC)
                ipr.rule("add", family=family, priority=PRIORITY_MARK, table=self.table,
                         fwmark=self.mark, fwmask=0xFFFFFFFF, flags=FIB_RULE_INVERT)
                ipr.rule("add", family=family, priority=PRIORITY_SUPPRESS, table=MAIN_TABLE,
                         suppress_prefixlen=0)
        self.active = True
        log.info("full tunnel over %s for IPv%s: fwmark %#x, table %d%s", self.ifname,
                 " and IPv".join(map(str, self.families)), self.mark, self.table,
                 ", kill switch on" if self.kill_switch else "")

    def teardown(self) -> None:
        if not self.active:
            return
        with _iproute() as ipr:
            self._clean(ipr)
        self.active = False

    def _clean(self, ipr: Any) -> int:
        """Our rules (by priority and what they point to) and our table's routes."""
        removed = 0
        for version in (4, 6):
            family = FAMILIES[version]
            for rule in ipr.get_rules(family=family):
                if self._ours(rule):
                    with contextlib.suppress(NetlinkError):
                        ipr.rule("del", family=family, priority=rule.get("priority"),
                                 table=rule.get("FRA_TABLE") or rule["table"])
                        removed += 1
            try:
                routes = ipr.get_routes(family=family, table=self.table)
            except NetlinkError:
                routes = []
            for route in routes:
                if route.get("RTA_TABLE", route["table"]) != self.table:
                    continue
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", table=self.table, family=family,
                              dst=_ANY[version], type=route["type"],
                              priority=route.get("RTA_PRIORITY") or 0)
                    removed += 1
        return removed

    def _ours(self, rule: Any) -> bool:
        priority = rule.get("priority")
        table = rule.get("FRA_TABLE") or rule["table"]
        if priority == PRIORITY_MARK:
            return bool(table == self.table)
        return bool(priority == PRIORITY_SUPPRESS and table == MAIN_TABLE)
