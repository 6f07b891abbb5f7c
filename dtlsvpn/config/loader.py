"""The loader: a config file's sections → a validated :class:`~dtlsvpn.config.model.Config`.

Purpose: check everything about ``/etc/dtlsvpn/NAME.conf`` that can be checked without
touching the system: each value (:mod:`dtlsvpn.config.values`), each section's keys
together, the credentials (:mod:`dtlsvpn.config.credentials`) and the rules across
peers (unique names, identities and pins; disjoint AllowedIPs).

Invariants:
- Every error is a :class:`~dtlsvpn.errors.ConfigError` naming the file, the
  line and the key, and saying what was expected
  (``office.conf:7: ListenAddress: expected HOST:PORT, got '198.18.0.1'``).
  A missing key is reported at the line of its section header.
- Relative paths resolve against the directory of the config file.
- ``Route`` defaults to the peer's ``AllowedIPs`` minus the prefixes that an
  ``Address`` already puts on-link (the kernel has that route already).
- Warnings (things that work but look wrong) are collected in file order into
  :attr:`Config.warnings`, each prefixed with ``file:line:``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dtlsvpn.config import values
from dtlsvpn.config.credentials import (
    CredentialError,
    load_credentials,
    read_psk,
)
from dtlsvpn.config.fields import Fields as _Fields
from dtlsvpn.config.fleet_keys import load_fleet
from dtlsvpn.config.model import (
    DEFAULT_DEAD_PEER_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_REKEY_INTERVAL,
    HINTS,
    VOCABULARY,
    Config,
    Credentials,
    FleetConfig,
    InterfaceConfig,
    PeerConfig,
    Source,
)
from dtlsvpn.config.parser import Section, parse
from dtlsvpn.config.roaming_keys import nat_warning, roaming_keys
from dtlsvpn.config.values import IFNAMSIZ, MIN_MTU_IPV6, Network, Role, spki_pin_text
from dtlsvpn.crypto.certs import ChainVerifier
from dtlsvpn.errors import ConfigError, UsageError

T = TypeVar("T")


def load_config(
    path: str | Path, *, name: str | None = None, now: datetime.datetime | None = None,
    check: Callable[[Config], object] | None = None,
    errors: list[ConfigError] | None = None,
) -> Config:
    """Read, parse and validate a config file, loading its credentials; ConfigError if bad.

    ``name`` (default: the file name without ``.conf``) is the instance name used
    for the defaults of Device, TicketStore and StatusSocket. ``now`` (default:
    the current time) is when certificate validity is checked.  ``check`` is the
    caller's last word on the loaded configuration (the daemon passes the DTLS core's
    own validation, :func:`dtlsvpn.daemon.settings.load_config`): a ``UsageError`` it
    raises becomes a ConfigError at ``Ciphers`` (or ``[Interface]``).
    ``errors`` (check-config): malformed lines and bad values are appended there and
    the loading goes on with defaults, so that one run finds every such mistake; a
    mistake the loading cannot go on from is still raised.  The caller must treat a
    non-empty ``errors`` as a failure (the returned Config is not usable then).
    """
    p = Path(path)
    spath = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(spath, None, None, f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a leading BOM (Windows editors) is dropped
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(spath, line, None, "expected UTF-8 text") from None
    sections = parse(text, spath, VOCABULARY, HINTS, errors)
    base = Path(os.path.abspath(p)).parent
    instance = name if name is not None else (p.name[:-5] if p.name.endswith(".conf") else p.name)
    when = now if now is not None else datetime.datetime.now(datetime.UTC)
    return _Loader(spath, base, instance, when, errors).load(sections, check)


@dataclass
class _PeerDraft:
    config: PeerConfig
    fields: _Fields
    allowed: list[tuple[Network, int]]


class _Loader:
    def __init__(self, path: str, base: Path, name: str, now: datetime.datetime,
                 errors: list[ConfigError] | None = None) -> None:
        self.errors = errors
        self.path = path
        self.base = base
        self.name = name
        self.now = now
        self.warnings: list[str] = []

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p

    def load(self, sections: list[Section],
             check: Callable[[Config], object] | None = None) -> Config:
        interfaces = [s for s in sections if s.name == "Interface"]
        if not interfaces:
            raise ConfigError(self.path, None, "[Interface]",
                              "missing; expected one [Interface] section")
        if len(interfaces) > 1:
            raise ConfigError(self.path, interfaces[1].line, "[Interface]",
                              f"second section (first at line {interfaces[0].line}); "
                              f"expected exactly one")
        f = _Fields(self.path, interfaces[0], self.errors)
        iface = self._interface(f)
        creds = self._credentials(f, iface)
        drafts = [self._peer(_Fields(self.path, s, self.errors), i, iface, creds)
                  for i, s in enumerate((s for s in sections if s.name == "Peer"), start=1)]
        self._check_peer_count(f, iface.role, drafts)
        self._check_unique(drafts)
        self._check_credentials_needed(f, iface.role, creds, drafts)
        cfg = Config(self.path, self.name, iface, tuple(d.config for d in drafts), creds,
                     tuple(self.warnings))
        if check is None:
            return cfg
        try:
            check(cfg)
        except UsageError as exc:
            key = "Ciphers" if f.has("Ciphers") else "[Interface]"
            raise f.error(key, f"unusable with these credentials: {exc}") from None
        return cfg

    # -- [Interface] --

    def _interface(self, f: _Fields) -> InterfaceConfig:
        role = f.get("Role", values.role, None)
        if role is None and f.reported("Role"):
            role = "server" if f.has("ListenAddress") else "client"
        if role is None:
            raise f.missing("Role", "'server' or 'client'")
        listen = f.get("ListenAddress", values.listen, None)
        if listen is None and f.reported("ListenAddress"):
            listen = ("0.0.0.0", 1)
        if role == "server" and listen is None:
            raise f.missing("ListenAddress", "ADDRESS:PORT to listen on, e.g. 198.18.0.1:4433 "
                                             "or [::]:4433")
        default_device = f"dtv-{self.name}"
        if not f.has("Device") and not values.is_device_name(default_device):
            raise f.missing("Device", f"an interface name: the default {default_device!r} is "
                                      f"not a valid name of at most {IFNAMSIZ - 1} characters")
        device = f.get("Device", values.device, default_device)
        addresses = f.many("Address", values.interface_address)
        if not addresses and not f.reported("Address"):
            raise f.missing("Address", "the tunnel address(es) of this host, e.g. "
                                       "100.64.0.1/24, fd00::1/64")
        repeat = _first_repeat((addr.ip, line) for addr, line in addresses)
        if repeat is not None:
            ip, line, first = repeat
            raise f.error("Address", f"{ip} listed twice (first at line {first}); expected "
                                     f"distinct addresses", line)
        mtu = f.get("MTU", values.mtu, None)
        if mtu is not None and mtu < MIN_MTU_IPV6 and any(a.version == 6 for a, _ in addresses):
            raise f.error("MTU", f"expected at least {MIN_MTU_IPV6} with an IPv6 Address "
                                 f"(RFC 8200 §5), got {mtu}")
        heartbeat = f.get("HeartbeatInterval", values.seconds, DEFAULT_HEARTBEAT_INTERVAL)
        dead = f.get("DeadPeerTimeout", values.seconds, DEFAULT_DEAD_PEER_TIMEOUT)
        if dead <= heartbeat:
            key = "DeadPeerTimeout" if f.has("DeadPeerTimeout") else "HeartbeatInterval"
            raise f.error(key, f"expected DeadPeerTimeout ({dead:g}s) longer than "
                               f"HeartbeatInterval ({heartbeat:g}s)")
        self.warnings += nat_warning(f, role, heartbeat)  # (roam)
        default_rekey: float | None = DEFAULT_REKEY_INTERVAL
        rekey = f.get("RekeyInterval", values.interval, default_rekey)
        return InterfaceConfig(
            role=role,
            listen=listen,
            device=device,
            addresses=tuple(a for a, _ in addresses),
            mtu=mtu,
            certificate=f.get("Certificate", self._path, None),
            private_key=f.get("PrivateKey", self._path, None),
            ca=f.get("CA", self._path, None),
            cipher_suites=f.get("Ciphers", values.ciphers, None),
            heartbeat_interval=heartbeat,
            dead_peer_timeout=dead,
            ticket_store=f.get("TicketStore", self._path, Path(f"/var/lib/dtlsvpn/{self.name}")),
            status_socket=f.get("StatusSocket", self._path,
                                Path(f"/run/dtlsvpn/{self.name}.sock")),
            mss_clamp=f.get("MSSClamp", values.boolean, True),
            log_level=f.get("LogLevel", values.log_level, "info"),
            rekey_interval=rekey,
            connection_id=f.get("ConnectionID", values.boolean, True),
            udp_offload=f.get("UDPOffload", values.boolean, True),
            tun_offload=f.get("TUNOffload", values.tun_offload, "auto"),
            compiled_lane=f.get("CompiledLane", values.boolean, True),
            fleet=self._fleet(f, role),  # fleet keys: the block at the end of this file
            **roaming_keys(f, role),
            # --- TCP fallback (issue 12) ---
            transport=f.get("Transport", values.transport, "auto"),
            tcp_port=f.get("TCPPort", values.port, None),
            tcp_fallback_after=self._fallback_after(f),
            source=Source(self.path, f.section.line),
        )

    def _fleet(self, f: _Fields, role: Role) -> FleetConfig:
        return load_fleet(f, role, self._path)

    @staticmethod
    def _fallback_after(f: _Fields) -> float:
        """TCPFallbackAfter (TCP fallback, issue 12): 0.5 to 60 seconds."""
        after = f.get("TCPFallbackAfter", values.seconds, 3.0)
        if not 0.5 <= after <= 60:
            raise f.error("TCPFallbackAfter", f"expected 0.5 to 60 seconds, got {after:g}")
        return after

    def _credentials(self, f: _Fields, iface: InterfaceConfig) -> Credentials:
        if iface.certificate is not None and iface.private_key is None:
            raise f.missing("PrivateKey", "the private key of Certificate")
        if iface.private_key is not None and iface.certificate is None:
            raise f.missing("Certificate", "the certificate of PrivateKey")
        try:
            creds, warnings = load_credentials(iface, self.now)
        except CredentialError as exc:
            raise f.error(exc.key, exc.message) from None
        self.warnings += [f"{self.path}:{f.line(key)}: {key}: {text}" for key, text in warnings]
        return creds

    # -- [Peer] --

    def _peer(
        self, f: _Fields, index: int, iface: InterfaceConfig, creds: Credentials
    ) -> _PeerDraft:
        role = iface.role
        name = f.get("Name", values.peer_name, f"peer{index}")
        endpoint = f.get("Endpoint", values.endpoint, None)
        allowed = f.many("AllowedIPs", values.network)
        routes = f.many("Route", values.network)
        pins = f.many("PeerKeyPin", values.pin)
        common_name = f.get("CommonName", values.common_name, None)
        psk_identity = f.get("PSKIdentity", values.psk_identity, None)
        psk_path = f.get("PSKFile", self._path, None)
        server_name = f.get("ServerName", values.server_name, None)

        if role == "server":
            _check_server_peer(f, endpoint, server_name, common_name, creds)
        else:
            _check_client_peer(f, endpoint, server_name, common_name, creds)
        psk = _peer_psk(f, psk_identity, psk_path)
        cert_auth = bool(pins) or common_name is not None
        if role == "client":
            cert_auth = cert_auth or bool(creds.ca_certs)
        if not cert_auth and psk is None:
            what = "CommonName (with CA)" if role == "server" else "CA in [Interface]"
            raise f.error("[Peer]", f"no way to authenticate peer {name!r}; expected {what}, "
                                    f"PeerKeyPin, or PSKIdentity + PSKFile")
        _check_prefixes(f, allowed, routes)
        if endpoint is not None:
            self._warn_endpoint_routed(f, endpoint, routes or allowed)

        # The default routes leave out prefixes that Address already puts on-link.
        on_link = {a.network for a in iface.addresses}
        config = PeerConfig(
            name=name,
            endpoint=endpoint,
            allowed_prefixes=tuple(a for a, _ in allowed),
            routes=tuple(r for r, _ in routes) if routes else tuple(
                a for a, _ in allowed if a not in on_link),
            pinned_spki_sha256=frozenset(p for p, _ in pins),
            certificate_name=common_name,
            psk_identity=psk_identity,
            psk=psk,
            server_name=server_name,
            source=Source(self.path, f.section.line),
        )
        return _PeerDraft(config, f, allowed)

    def _warn_endpoint_routed(
        self, f: _Fields, endpoint: tuple[str, int], routes: Iterable[tuple[Network, int]]
    ) -> None:
        try:
            ip = ipaddress.ip_address(endpoint[0])
        except ValueError:
            return
        for net, line in routes:
            # (a client's /0 is a full tunnel: its socket is marked, daemon/fulltunnel.py)
            if ip.version == net.version and ip in net and net.prefixlen > 0:
                self.warnings.append(
                    f"{self.path}:{line}: the endpoint {ip} is inside {net}, routed through "
                    f"the tunnel: the daemon must keep a route to it outside the tunnel")
                return

    # -- whole-file checks --

    def _check_peer_count(self, f: _Fields, role: Role, drafts: list[_PeerDraft]) -> None:
        if not drafts:
            what = "exactly one [Peer] (the server to dial)" if role == "client" else \
                "at least one [Peer] (a client it accepts)"
            raise ConfigError(self.path, f.section.line, "[Peer]", f"missing; a {role} needs "
                                                                  f"{what}")
        if role == "client" and len(drafts) > 1:
            second = drafts[1].fields.section.line
            raise ConfigError(self.path, second, "[Peer]",
                              f"a client has exactly one [Peer] (the server it dials); the "
                              f"first is at line {drafts[0].fields.section.line}")

    def _check_unique(self, drafts: list[_PeerDraft]) -> None:
        names: dict[str, int] = {}
        identities: dict[bytes, int] = {}
        common: dict[str, int] = {}
        pins: dict[bytes, int] = {}
        owners: list[tuple[Network, int, str]] = []
        for d in drafts:
            p, f = d.config, d.fields
            key = "Name" if f.has("Name") else "[Peer]"
            _unique(f, key, p.name, p.name, names, "peer name")
            if p.psk_identity is not None:
                _unique(f, "PSKIdentity", p.psk_identity,
                        p.psk_identity.decode(errors="replace"), identities, "PSK identity")
            if p.certificate_name is not None:
                _unique(f, "CommonName", p.certificate_name, p.certificate_name, common,
                        "CommonName")
            for pin in p.pinned_spki_sha256:
                _unique(f, "PeerKeyPin", pin, spki_pin_text(pin), pins, "pin")
            for net, line in d.allowed:
                for other, other_line, owner in owners:
                    if net.version == other.version and net.overlaps(other):
                        raise f.error("AllowedIPs", f"{net} overlaps {other} of peer {owner!r} "
                                                    f"(line {other_line}); expected disjoint "
                                                    f"prefixes per peer", line)
            owners += [(net, line, p.name) for net, line in d.allowed]

    def _check_credentials_needed(
        self, f: _Fields, role: Role, creds: Credentials, drafts: list[_PeerDraft]
    ) -> None:
        peers = [d.config for d in drafts]
        if role == "server":
            cert_peers = [d for d in drafts if d.config.uses_certificate]
            if cert_peers and creds.private_key is None:
                first = cert_peers[0]
                raise f.missing("Certificate", f"Certificate and PrivateKey: peer "
                                               f"{first.config.name!r} (line "
                                               f"{first.fields.section.line}) authenticates "
                                               f"by certificate")
            if not cert_peers and (creds.private_key is not None or creds.ca_certs):
                self.warnings.append(f"{self.path}:{f.section.line}: Certificate/CA are unused: "
                                     f"no [Peer] authenticates by certificate")
        else:
            server = peers[0]
            if creds.ca_certs and server.server_name is None and not server.pinned_spki_sha256:
                self.warnings.append(
                    f"{self.path}:{drafts[0].fields.section.line}: [Peer]: any certificate "
                    f"from CA is accepted as the server; set ServerName or PeerKeyPin")
            if server.psk is None and creds.private_key is None:
                raise f.missing("Certificate", "Certificate and PrivateKey (the server "
                                               "identifies its clients by certificate), or "
                                               "PSKIdentity + PSKFile in [Peer]")


def _unique(f: _Fields, key: str, value: T, shown: str, seen: dict[T, int], what: str) -> None:
    if value in seen:
        raise ConfigError(f.path, f.line(key), key, f"{what} {shown!r} already used by the "
                                                    f"[Peer] at line {seen[value]}; expected "
                                                    f"one per peer")
    seen[value] = f.section.line


def _inside(net: Network, outer: Network) -> bool:
    if isinstance(net, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return net.subnet_of(outer)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return net.subnet_of(outer)
    return False


# --- the checks of one [Peer] -------------------------------------------------------------


def _check_server_peer(
    f: _Fields, endpoint: tuple[str, int] | None, server_name: str | None, common_name: str | None,
    creds: Credentials,
) -> None:
    if endpoint is not None:
        raise f.error("Endpoint", "a server does not dial its peers; expected no "
                                  "Endpoint in a server's [Peer]")
    if server_name is not None:
        raise f.error("ServerName", "only a client checks a server name; expected "
                                    "CommonName to name a client certificate")
    if common_name is not None and not creds.ca_certs:
        raise f.error("CommonName", "expected CA in [Interface] to verify the "
                                    "certificate that carries this name")


def _check_client_peer(
    f: _Fields, endpoint: tuple[str, int] | None, server_name: str | None, common_name: str | None,
    creds: Credentials,
) -> None:
    if endpoint is None:
        raise f.missing("Endpoint", "HOST:PORT of the server to dial, e.g. "
                                    "198.18.0.1:4433 or [2001:db8::1]:4433")
    if common_name is not None:
        raise f.error("CommonName", "a client checks its server with ServerName "
                                    "(subjectAltName) or PeerKeyPin; expected no "
                                    "CommonName")
    if server_name is None:
        return
    if not creds.ca_certs:
        raise f.error("ServerName", "expected CA in [Interface]: the name is "
                                    "checked in a certificate chained to it")
    try:
        ChainVerifier(creds.ca_certs, (), server_name)
    except UsageError as exc:
        raise f.error("ServerName", str(exc)) from None


def _peer_psk(f: _Fields, identity: bytes | None, path: Path | None) -> bytes | None:
    if identity is not None and path is None:
        raise f.error("PSKIdentity", "expected PSKFile = PATH in the same [Peer]")
    if path is not None and identity is None:
        raise f.error("PSKFile", "expected PSKIdentity = NAME in the same [Peer]")
    return f.load("PSKFile", path, read_psk)


def _check_prefixes(
    f: _Fields, allowed: list[tuple[Network, int]], routes: list[tuple[Network, int]]
) -> None:
    if not allowed:
        raise f.missing("AllowedIPs", "the prefixes this peer may use as source "
                                      "addresses, e.g. 100.64.0.2/32, fd00::2/128")
    repeat = _first_repeat(allowed)
    if repeat is not None:
        net, line, first = repeat
        raise f.error("AllowedIPs", f"{net} listed twice (first at line {first})", line)
    for net, line in routes:
        if not any(_inside(net, a) for a, _ in allowed):
            raise f.error("Route", f"expected a prefix inside this peer's AllowedIPs, "
                                   f"got {net}", line)


def _first_repeat(items: Iterable[tuple[T, int]]) -> tuple[T, int, int] | None:
    """The first item seen before, with its line and the line of its first mention."""
    seen: dict[T, int] = {}
    for item, line in items:
        if item in seen:
            return item, line, seen[item]
        seen[item] = line
    return None
