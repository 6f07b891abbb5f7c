"""The value converters the config loader and the command-line tools share."""

from __future__ import annotations

import re

import pytest

from dtlsvpn.config import hostport, interval, is_ip_literal, pin, seconds, spki_pin_text
from dtlsvpn.config.values import is_device_name


@pytest.mark.parametrize(
    ("text", "ip_only", "expected"),
    [
        ("198.18.0.1:4433", True, ("198.18.0.1", 4433)),
        ("[2001:db8::0:1]:443", True, ("2001:db8::1", 443)),
        ("vpn.example.org:4433", False, ("vpn.example.org", 4433)),
    ],
)
def test_hostport_accepts(text: str, ip_only: bool, expected: tuple[str, int]) -> None:
    assert hostport(text, ip_only=ip_only) == expected


@pytest.mark.parametrize(
    ("text", "ip_only", "message"),
    [
        ("198.18.0.1", True, "expected HOST:PORT, got '198.18.0.1'"),
        ("::1:443", True, "expected [IPV6]:PORT (brackets around IPv6), got '::1:443'"),
        ("[::1]", True, "expected [IPV6]:PORT, got '[::1]'"),
        ("[nope]:1", True, "expected an IPv6 address inside [...], got '[nope]:1'"),
        ("host:1", True, "expected HOST:PORT with HOST an IP address, got 'host:1'"),
        ("-bad-:1", False, "expected HOST:PORT with a host name or address, got '-bad-:1'"),
        ("1.2.3.4:0", True, "expected a port from 1 to 65535 in HOST:PORT, got '1.2.3.4:0'"),
        ("1.2.3.4:65536", True, "expected a port from 1 to 65535 in HOST:PORT"),
    ],
)
def test_hostport_refuses(text: str, ip_only: bool, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        hostport(text, ip_only=ip_only)


def test_hostport_port_zero_on_request() -> None:
    assert hostport("127.0.0.1:0", ip_only=True, min_port=0) == ("127.0.0.1", 0)


def test_durations() -> None:
    assert seconds("2") == 2.0 and seconds("2.5s") == 2.5 and seconds("500ms") == 0.5
    with pytest.raises(ValueError, match=r"got '0\.01'"):
        seconds("0.01")
    assert interval("1h") == 3600.0 and interval("90s") == 90.0 and interval("1d") == 86400.0
    assert interval("0") is None and interval("off") is None
    with pytest.raises(ValueError, match="got '8d'"):
        interval("8d")


def test_pin_round_trip() -> None:
    digest = bytes(range(32))
    assert pin(spki_pin_text(digest)) == digest
    assert pin(digest.hex()) == digest
    assert pin(":".join(f"{b:02x}" for b in digest)) == digest
    with pytest.raises(ValueError, match=r"^expected sha256/BASE64"):
        pin("sha256/AAAA")


def test_predicates() -> None:
    assert is_ip_literal("::1") and is_ip_literal("10.0.0.1")
    assert not is_ip_literal("example.org")
    assert is_device_name("dtv-office") and not is_device_name("x" * 16)
    assert not is_device_name("..") and not is_device_name("a b")
