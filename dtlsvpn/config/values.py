"""Value converters: the text of one configuration value → a typed value.

Purpose: the meaning of every value syntax the configuration (and the command-line
tools, which take the same spellings) understands: ``HOST:PORT``, durations, prefixes,
pins, names.  Each converter takes the text and returns the value, or raises
``ValueError("expected …, got '…'")``; the caller adds the file, line and key
(:class:`dtlsvpn.config.fields.Fields`) or the option name.

Invariants:
- A converter never guesses: anything it does not accept in full is a ValueError
  whose message says what was expected and quotes what it got.
- Nothing here reads a file or the clock; the limits below are the whole policy.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Literal, TypeAlias

from dtlsvpn.config.parser import split_list, suggest
from dtlsvpn.crypto.suites import SUITES, suite_by_name
from dtlsvpn.wire.constants import CipherSuite

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Role: TypeAlias = Literal["server", "client"]

MIN_REKEY_INTERVAL, MAX_REKEY_INTERVAL = 1.0, 7 * 86400.0
MIN_MTU, MAX_MTU, MIN_MTU_IPV6 = 576, 9000, 1280  # RFC 791 §3.1 / RFC 8200 §5
IFNAMSIZ = 16  # Linux: interface names hold at most 15 bytes plus NUL
MAX_PSK_IDENTITY = 128  # RFC 4279 §5.3: identities up to 128 bytes MUST be supported
LOG_LEVELS = ("debug", "info", "warning", "error")

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
_DEVICE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SECONDS_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?$")
_INTERVAL_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(s|m|h|d)?$")
_INTERVAL_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")


# --- predicates -------------------------------------------------------------------------


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    """True for a DNS name (RFC 1123 labels); all-digit dotted text is not one."""
    return bool(_HOSTNAME_RE.match(text)) and not text.replace(".", "").isdigit()


def is_device_name(text: str) -> bool:
    """True for a name the kernel takes as a network interface name."""
    return (len(text.encode()) < IFNAMSIZ and bool(_DEVICE_RE.match(text))
            and text not in (".", ".."))


# --- addresses ------------------------------------------------------------------------------


def hostport(text: str, *, ip_only: bool, min_port: int = 1) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port); the address in canonical form.

    ``ip_only`` refuses host names; ``min_port`` 0 lets a listener ask for any port.
    """
    what = "HOST:PORT"
    if text.startswith("["):
        host, port_text = _bracketed(text)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected {what}, got {text!r}")
        if ":" in host:
            raise ValueError(f"expected [IPV6]:PORT (brackets around IPv6), got {text!r}")
        host = _v4_or_name(host, text, ip_only=ip_only)
    if not port_text.isdigit() or not min_port <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from {min_port} to 65535 in {what}, got {text!r}")
    return host, int(port_text)


def _bracketed(text: str) -> tuple[str, str]:
    host, sep, rest = text[1:].partition("]")
    port_text = rest[1:] if rest.startswith(":") else ""
    if not sep or not port_text:
        raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
    try:
        return str(ipaddress.IPv6Address(host)), port_text
    except ValueError:
        raise ValueError(f"expected an IPv6 address inside [...], got {text!r}") from None


def _v4_or_name(host: str, text: str, *, ip_only: bool) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if ip_only:
        raise ValueError(f"expected HOST:PORT with HOST an IP address, got {text!r}")
    if not is_hostname(host):
        raise ValueError(f"expected HOST:PORT with a host name or address, got {text!r}")
    return host


def listen(text: str) -> tuple[str, int]:
    """ListenAddress: ``ADDRESS:PORT`` with an IP address."""
    return hostport(text, ip_only=True)


# --- TCP fallback (issue 12) ---
TRANSPORTS = ("auto", "udp", "tcp")


def transport(text: str) -> str:
    """Transport: auto, udp or tcp."""
    v = text.strip().lower()
    if v not in TRANSPORTS:
        raise ValueError(f"expected one of {', '.join(TRANSPORTS)}, got {text!r}")
    return v


def tun_offload(text: str) -> str:
    """TUNOffload: auto, or yes/no (on/off) meaning ``on``/``off``."""
    v = text.strip().lower()
    if v == "auto":
        return v
    try:
        return "on" if boolean(v) else "off"
    except ValueError:
        raise ValueError(f"expected auto, on or off, got {text!r}") from None


def port(text: str) -> int:
    """TCPPort: 1..65535."""
    try:
        n = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= n <= 65535:
        raise ValueError(f"expected a port number 1-65535, got {text!r}")
    return n


def endpoint(text: str) -> tuple[str, int]:
    """Endpoint: ``HOST:PORT`` with an address or a host name."""
    return hostport(text, ip_only=False)


def interface_address(text: str) -> Interface:
    """Address: a unicast host address with its prefix, ``100.64.0.1/24``."""
    example = "ADDRESS/PREFIX such as 100.64.0.1/24 or fd00::1/64"
    if "/" not in text:
        raise ValueError(f"expected {example}, got {text!r}")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"expected {example}, got {text!r}") from None
    ip = iface.ip
    for bad, kind in ((ip.is_unspecified, "unspecified"), (ip.is_loopback, "loopback"),
                      (ip.is_multicast, "multicast"), (ip.is_link_local, "link-local")):
        if bad:
            raise ValueError(f"expected a unicast tunnel address, got {text!r} ({kind})")
    net = iface.network
    if (isinstance(iface, ipaddress.IPv4Interface) and net.prefixlen < 31
            and ip in (net.network_address, net.broadcast_address)):
        raise ValueError(f"expected a host address, got {text!r} "
                         f"(the network or broadcast address of {net})")
    return iface


def network(text: str) -> Network:
    """AllowedIPs, Route: a prefix without host bits."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected a prefix such as 100.64.0.2/32 or fd00::/64, "
                         f"got {text!r}") from None
    raise ValueError(f"expected a prefix without host bits, got {text!r} (did you mean {loose}?)")


# --- numbers, durations, switches ---------------------------------------------------------


def mtu(text: str) -> int | None:
    """MTU: ``auto`` (None) or an integer from MIN_MTU to MAX_MTU."""
    if text.lower() == "auto":
        return None
    if not text.isdigit() or not MIN_MTU <= int(text) <= MAX_MTU:
        raise ValueError(f"expected 'auto' or an integer from {MIN_MTU} to {MAX_MTU}, "
                         f"got {text!r}")
    return int(text)


def seconds(text: str) -> float:
    """HeartbeatInterval, DeadPeerTimeout: ``2``, ``2.5s``, ``500ms``; 0.05 s to one day."""
    m = _SECONDS_RE.match(text.lower())
    value = -1.0
    if m is not None:
        value = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if not 0.05 <= value <= 86400:
        raise ValueError(f"expected a duration from 0.05 to 86400 seconds (e.g. 2, 2.5s, "
                         f"500ms), got {text!r}")
    return value


def interval(text: str) -> float | None:
    """RekeyInterval: seconds between key renewals (``3600``, ``90s``, ``60m``, ``1h``,
    ``1d``); ``0`` or ``off``: None, no renewal by time (the record limits of the AEAD
    still force one)."""
    v = text.strip().lower()
    if v == "off":
        return None
    m = _INTERVAL_RE.match(v)
    if m is not None:
        value = float(m.group(1)) * _INTERVAL_UNITS[m.group(2)]
        if value == 0:
            return None
        if MIN_REKEY_INTERVAL <= value <= MAX_REKEY_INTERVAL:
            return value
    raise ValueError(f"expected a duration from {MIN_REKEY_INTERVAL:g} second to "
                     f"{MAX_REKEY_INTERVAL / 86400:g} days (e.g. 3600, 90s, 60m, 1h), or 0 / "
                     f"off to renew keys only at the record limit, got {text!r}")


def boolean(text: str) -> bool:
    """yes/no, true/false, on/off, 1/0."""
    v = text.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


# --- names --------------------------------------------------------------------------------


def role(text: str) -> Role:
    """Role: ``server`` or ``client``."""
    v = text.lower()
    if v == "server":
        return "server"
    if v == "client":
        return "client"
    raise ValueError(f"expected 'server' or 'client', got {text!r}")


def log_level(text: str) -> str:
    """LogLevel: one of LOG_LEVELS (``warn`` for warning)."""
    v = text.lower()
    if v == "warn":
        v = "warning"
    if v not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return v


def device(text: str) -> str:
    """Device: a network interface name."""
    if not is_device_name(text):
        raise ValueError(f"expected an interface name of 1 to {IFNAMSIZ - 1} letters, digits, "
                         f"'-', '_' or '.', got {text!r}")
    return text


def ciphers(text: str) -> tuple[CipherSuite, ...]:
    """Ciphers: suite names, IANA or OpenSSL spelling, comma-separated, each once."""
    out: list[CipherSuite] = []
    names = [s.name for s in SUITES.values()] + [s.openssl_name for s in SUITES.values()]
    for item in split_list(text):
        try:
            code = CipherSuite(suite_by_name(item).code)
        except KeyError:
            close = suggest(item, names)
            hint = f" (did you mean {close}?)" if close else ""
            raise ValueError(f"expected cipher suite names (IANA or OpenSSL spelling), "
                             f"got {item!r}{hint}") from None
        if code in out:
            raise ValueError(f"expected each cipher suite once, got {item!r} twice")
        out.append(code)
    return tuple(out)


def pin(text: str) -> bytes:
    """PeerKeyPin: ``sha256/BASE64`` or 64 hex digits (colons allowed) → the 32-byte digest."""
    expected = "expected sha256/BASE64 (as printed by `dtlsvpn genkey`) or 64 hex digits"
    if text.lower().startswith("sha256/"):
        try:
            digest = base64.b64decode(text[7:], validate=True)
        except (binascii.Error, ValueError):
            digest = b""
    else:
        try:
            digest = bytes.fromhex(text.replace(":", ""))
        except ValueError:
            digest = b""
    if len(digest) != 32:
        raise ValueError(f"{expected}, got {text!r}")
    return digest


def spki_pin_text(digest: bytes) -> str:
    """``sha256/BASE64``: how PeerKeyPin values and the key tools spell a pin."""
    return "sha256/" + base64.b64encode(digest).decode("ascii")


def common_name(text: str) -> str:
    """CommonName: at most 64 characters (RFC 5280 Appendix A, ub-common-name)."""
    if len(text) > 64:
        raise ValueError(f"expected a common name of at most 64 characters, got {text!r}")
    return text


def psk_identity(text: str) -> bytes:
    """PSKIdentity: UTF-8, at most MAX_PSK_IDENTITY bytes."""
    data = text.encode("utf-8")
    if len(data) > MAX_PSK_IDENTITY:
        raise ValueError(f"expected at most {MAX_PSK_IDENTITY} bytes, got {len(data)}")
    return data


def server_name(text: str) -> str:
    """ServerName: an IP address or a DNS name, in the form subjectAltName matching uses."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not is_hostname(text):
        raise ValueError(f"expected a DNS name or IP address as in the server certificate's "
                         f"subjectAltName, got {text!r}")
    return text.rstrip(".").lower()


def peer_name(text: str) -> str:
    """Name: letters, digits and ``_.@+-``, at most 64."""
    if not _NAME_RE.match(text):
        raise ValueError(f"expected a name of letters, digits and '_.@+-' (at most 64), "
                         f"got {text!r}")
    return text
