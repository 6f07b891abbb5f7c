"""daemon/tcpgate.py: the caps on TCP connections in their TLS handshake."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtlsvpn.daemon.loop import Throttle
from dtlsvpn.daemon.tcpgate import Pending, TcpLimits, source_of


@pytest.mark.parametrize("addr, source", [
    (("198.18.0.2", 4433), "198.18.0.2"),
    (("::ffff:198.18.0.2", 4433, 0, 0), "198.18.0.2"),  # dual-stack listener: IPv4
    (("2001:db8:1:2:aaaa::1", 4433, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff:ffff:ffff:ffff", 1, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:3::1", 1, 0, 0), "2001:db8:1:3::/64"),
    (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
])
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(addr: tuple[object, ...],
                                                          source: str) -> None:
    assert source_of(addr) == source


def test_caps_per_source_and_in_all() -> None:
    p = Pending(TcpLimits(max_pending=5, max_pending_per_source=2))
    links = [object() for _ in range(8)]
    assert p.refuse("a") is None
    p.opened(links[0], "a")
    p.opened(links[1], "a")
    assert p.refuse("a") == "tcp_source_limited" and p.refuse("b") is None
    for i, src in ((2, "b"), (3, "c"), (4, "d")):
        p.opened(links[i], src)
    assert len(p) == 5 and p.refuse("e") == "tcp_pending_full"
    p.done(links[0])
    p.done(links[0])  # (twice: the handshake completed, then the link closed)
    assert len(p) == 4 and p.from_source("a") == 1
    assert p.refuse("a") is None and p.refuse("e") is None
    p.done(links[1])
    assert p.from_source("a") == 0 and len(p) == 3


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        TcpLimits(max_pending_per_source=0)
    with pytest.raises(ValueError):
        TcpLimits(accept_backoff=0.0)


def test_throttle_logs_the_first_then_once_per_interval_with_the_count() -> None:
    t = Throttle(every=60.0)
    assert t.ready(0.0) and t.take() == 0
    assert [t.ready(x) for x in (1.0, 30.0, 59.9)] == [False] * 3
    assert t.ready(60.0) and t.take() == 3
    assert not t.ready(61.0) and t.since == 1


def test_the_unit_gives_room_above_the_caps() -> None:
    """``LimitNOFILE=`` in the systemd unit: a descriptor per TCP connection, so the
    soft limit stays well above what the pending caps let in (the default 1024 did not
    leave four times 256)."""
    unit = Path(__file__).resolve().parents[2] / "systemd" / "dtlsvpn@.service"
    values = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
              if line.startswith("LimitNOFILE=")]
    assert len(values) == 1, values
    soft = int(values[0].split(":")[0])
    assert soft >= 16 * TcpLimits().max_pending
