"""Typed configuration for the dtlsvpn daemon, with validation.

Purpose: read ``/etc/dtlsvpn/NAME.conf`` (see :mod:`dtlsvpn.config.parser`
for the syntax) into frozen dataclasses, check everything that can be checked
without touching the system.  Turning the result into the DTLS core's settings is
the shell's work (:mod:`dtlsvpn.daemon.settings`): this package imports nothing of
``dtls/``.

Invariants:
- Every error is a :class:`~dtlsvpn.errors.ConfigError` naming the file, the
  line and the key, and saying what was expected
  (``office.conf:7: ListenAddress: expected HOST:PORT, got '198.18.0.1'``).
  A missing key is reported at the line of its section header.
- Relative paths resolve against the directory of the config file.
- ``Route`` defaults to the peer's ``AllowedIPs`` minus the prefixes that an
  ``Address`` already puts on-link (the kernel has that route already).
- Secret files (``PrivateKey``, ``PSKFile``) must be regular files that group
  and others cannot access at all (mode ``& 0o077 == 0``, as ssh requires);
  they are read and parsed at load time, like the certificate and CA files,
  so a config that loads has usable credentials.
- Durations: ``HeartbeatInterval``/``DeadPeerTimeout`` take seconds or ``ms``;
  ``RekeyInterval`` (default 3600) takes seconds, ``s``, ``m``, ``h`` or ``d`` from 1 s to
  7 days, and ``0``/``off`` for no renewal by time (the core still renews before the
  AEAD record limit).  It becomes ``DtlsConfig.rekey_interval``: a client starts a
  make-before-break renewal (``dtls/rekey.py``) when it runs out; a server accepts
  renewals whatever its own value, which only sizes how long it keeps old keys.
- ``ConnectionID`` (yes/no, default yes) negotiates RFC 9146 connection IDs, which let
  a roaming client change address without a handshake; ``no`` leaves them out of the
  hellos (a new client address then means a new, ticket-resumed association).
- Equality of :class:`PeerConfig` / :class:`InterfaceConfig` ignores
  ``source`` (line numbers), so a reload can tell which peers really changed.
  The loaded key and certificates live in :attr:`Config.credentials`, which is
  not compared either.

Authentication model (security.md): a server identifies each ``[Peer]`` by
its client certificate (``CommonName`` checked after a chain to ``CA``, or
``PeerKeyPin`` = SHA-256 of the SubjectPublicKeyInfo, or both) or by its PSK
identity.  The DTLS core accepts any client that passes the server-wide
check (the CA, or the union of pins when every certificate peer is pinned, or
a known PSK identity); ``daemon.settings.match_peer`` then names the ``[Peer]``, and the
daemon MUST close an association for which it returns None.  A client checks
its single ``[Peer]`` (the server) with ``CA`` (+ ``ServerName``), pins, or
its PSK; the core enforces all of that during the handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dtlsvpn.config import values
from dtlsvpn.config.parser import Entry, Section, parse, split_list
from dtlsvpn.config.values import IFNAMSIZ, MIN_MTU_IPV6, Interface, Network, Role
from dtlsvpn.config.values import spki_pin_text as spki_pin_text
from dtlsvpn.crypto.certs import (
    ChainVerifier,
    PrivateKey,
    load_certificates,
    load_private_key,
)
from dtlsvpn.errors import ConfigError, UsageError
from dtlsvpn.wire.constants import CipherSuite

T = TypeVar("T")

DEFAULT_CONFDIR = Path("/etc/dtlsvpn")
DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_DEAD_PEER_TIMEOUT = 8.0
DEFAULT_REKEY_INTERVAL = 3600.0  # like OpenVPN's reneg-sec
MIN_PSK_BYTES, MAX_PSK_BYTES = 16, 256
EXPIRY_WARNING = datetime.timedelta(days=30)

INTERFACE_KEYS = (
    "Role", "ListenAddress", "Device", "Address", "MTU", "Certificate", "PrivateKey", "CA",
    "Ciphers", "HeartbeatInterval", "DeadPeerTimeout", "TicketStore", "StatusSocket",
    "MSSClamp", "LogLevel", "RekeyInterval", "ConnectionID",
)
PEER_KEYS = (
    "Name", "Endpoint", "AllowedIPs", "Route", "PeerKeyPin", "CommonName", "PSKIdentity",
    "PSKFile", "ServerName",
)
MULTI_VALUED = frozenset({"Address", "AllowedIPs", "Route", "PeerKeyPin"})
VOCABULARY = {"Interface": INTERFACE_KEYS, "Peer": PEER_KEYS}
# Keys people bring from WireGuard and OpenVPN, with what to write instead.
HINTS = {
    "listenport": "use ListenAddress = HOST:PORT",
    "publickey": "peers authenticate by certificate (CommonName, PeerKeyPin) or by PSK "
                 "(PSKIdentity, PSKFile)",
    "presharedkey": "use PSKIdentity and PSKFile (a file holding the key in hex)",
    "persistentkeepalive": "use HeartbeatInterval in [Interface]",
    "dns": "dtlsvpn does not configure DNS",
    "key": "use PrivateKey",
    "cert": "use Certificate",
}


# --- the typed configuration ------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a section starts: the file and the line of its ``[Header]``."""

    path: str
    line: int


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    """One ``[Peer]``: for a server a client it accepts, for a client its server."""

    name: str
    endpoint: tuple[str, int] | None
    allowed_prefixes: tuple[Network, ...]
    routes: tuple[Network, ...]
    pinned_spki_sha256: frozenset[bytes]
    certificate_name: str | None
    psk_identity: bytes | None
    psk: bytes | None = field(repr=False)
    server_name: str | None
    source: Source = field(compare=False)

    @property
    def uses_certificate(self) -> bool:
        """True when this peer may authenticate by certificate (name or pin)."""
        return bool(self.pinned_spki_sha256) or self.certificate_name is not None


@dataclass(frozen=True, kw_only=True)
class InterfaceConfig:
    """The ``[Interface]`` section: this host's side of the tunnel."""

    role: Role
    listen: tuple[str, int] | None
    device: str
    addresses: tuple[Interface, ...]
    mtu: int | None
    certificate: Path | None
    private_key: Path | None
    ca: Path | None
    cipher_suites: tuple[CipherSuite, ...] | None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    dead_peer_timeout: float = DEFAULT_DEAD_PEER_TIMEOUT
    ticket_store: Path
    status_socket: Path
    mss_clamp: bool = True
    log_level: str = "info"
    rekey_interval: float | None = DEFAULT_REKEY_INTERVAL  # None: no time-based renewal
    connection_id: bool = True  # RFC 9146 connection IDs (roaming without a handshake)
    source: Source = field(compare=False)


@dataclass(frozen=True)
class Credentials:
    """The loaded contents of Certificate, PrivateKey and CA (not compared)."""

    certificate_chain: tuple[x509.Certificate, ...] = ()
    private_key: PrivateKey | None = field(default=None, repr=False)
    ca_certs: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class Config:
    """A whole validated configuration file.

    ``warnings`` lists things that work but look wrong (an unused credential,
    a certificate close to expiry); ``check-config`` prints them.
    """

    path: str
    name: str
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    credentials: Credentials = field(default_factory=Credentials, compare=False, repr=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def peer(self, name: str) -> PeerConfig | None:
        """The ``[Peer]`` called ``name``, if any."""
        return next((p for p in self.peers if p.name == name), None)


# --- public API ----------------------------------------------------------------------


def config_path(name_or_file: str, confdir: Path = DEFAULT_CONFDIR) -> Path:
    """``office`` → ``confdir/office.conf``; a name with ``/`` or ending in ``.conf`` is a file."""
    if "/" in name_or_file or name_or_file.endswith(".conf"):
        return Path(name_or_file)
    return confdir / f"{name_or_file}.conf"


def load_config(
    path: str | Path, *, name: str | None = None, now: datetime.datetime | None = None,
    check: Callable[[Config], object] | None = None,
) -> Config:
    """Read, parse and validate a config file, loading its credentials; ConfigError if bad.

    ``name`` (default: the file name without ``.conf``) is the instance name used
    for the defaults of Device, TicketStore and StatusSocket. ``now`` (default:
    the current time) is when certificate validity is checked.  ``check`` is the
    caller's last word on the loaded configuration (the daemon passes the DTLS core's
    own validation, :func:`dtlsvpn.daemon.settings.load_config`): a ``UsageError`` it
    raises becomes a ConfigError at ``Ciphers`` (or ``[Interface]``).
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
    sections = parse(text, spath, VOCABULARY, HINTS)
    base = Path(os.path.abspath(p)).parent
    instance = name if name is not None else (p.name[:-5] if p.name.endswith(".conf") else p.name)
    when = now if now is not None else datetime.datetime.now(datetime.UTC)
    return _Loader(spath, base, instance, when).load(sections, check)


# --- files: certificates, keys and secrets ---------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def read_secret_file(path: Path) -> bytes:
    """Contents of a secret file; ValueError if it is missing, not a file, or too open."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"expected a regular file, got {path}")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise ValueError(f"{path} has mode {mode:04o}; a secret file must not be "
                                 f"accessible by group or others (chmod 600 {path})")
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def _certificates(path: Path) -> tuple[x509.Certificate, ...]:
    data = _read(path)
    try:
        certs = load_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"expected PEM certificates in {path}, found none")
    return tuple(certs)


def _private_key(path: Path) -> PrivateKey:
    data = read_secret_file(path)
    try:
        return load_private_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"expected an unencrypted PEM private key (ECDSA P-256/P-384, "
                         f"Ed25519, RSA >= 2048) in {path}: {exc}") from None


def _psk(path: Path) -> bytes:
    text = read_secret_file(path).decode("ascii", errors="replace")
    digits = "".join(text.split())
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"expected the PSK as hex digits in {path} (as written by "
                         f"`dtlsvpn genpsk`)") from None
    if not MIN_PSK_BYTES <= len(key) <= MAX_PSK_BYTES:
        raise ValueError(f"expected a PSK of {MIN_PSK_BYTES} to {MAX_PSK_BYTES} bytes in "
                         f"{path}, got {len(key)}")
    return key


def _spki(key: PrivateKey | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _when(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


# --- the loader ---------------------------------------------------------------------------


class _Fields:
    """The entries of one section by key, with conversion and error reporting."""

    def __init__(self, path: str, section: Section) -> None:
        self.path = path
        self.section = section
        self.by_key: dict[str, list[Entry]] = {}
        for entry in section.entries:
            self.by_key.setdefault(entry.key, []).append(entry)
        for key, entries in self.by_key.items():
            if key not in MULTI_VALUED and len(entries) > 1:
                raise ConfigError(path, entries[1].line, key,
                                  f"set twice (first at line {entries[0].line}); "
                                  f"expected one value")

    def has(self, key: str) -> bool:
        return key in self.by_key

    def line(self, key: str) -> int:
        """The line of ``key``, or of the section header when it is absent."""
        entries = self.by_key.get(key)
        return entries[0].line if entries else self.section.line

    def error(self, key: str | None, message: str, line: int | None = None) -> ConfigError:
        where = line if line is not None else (self.line(key) if key else self.section.line)
        return ConfigError(self.path, where, key, message)

    def missing(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.path, self.section.line, key, f"missing; expected {expected}")

    def get(self, key: str, convert: Callable[[str], T], default: T) -> T:
        entries = self.by_key.get(key)
        if not entries:
            return default
        try:
            return convert(entries[0].value)
        except ValueError as exc:
            raise ConfigError(self.path, entries[0].line, key, str(exc)) from None

    def many(self, key: str, convert: Callable[[str], T]) -> list[tuple[T, int]]:
        out: list[tuple[T, int]] = []
        for entry in self.by_key.get(key, []):
            try:
                for item in split_list(entry.value):
                    out.append((convert(item), entry.line))
            except ValueError as exc:
                raise ConfigError(self.path, entry.line, key, str(exc)) from None
        return out

    def load(self, key: str, path: Path | None, loader: Callable[[Path], T]) -> T | None:
        if path is None:
            return None
        try:
            return loader(path)
        except ValueError as exc:
            raise ConfigError(self.path, self.line(key), key, str(exc)) from None


@dataclass
class _PeerDraft:
    config: PeerConfig
    fields: _Fields
    allowed: list[tuple[Network, int]]


class _Loader:
    def __init__(self, path: str, base: Path, name: str, now: datetime.datetime) -> None:
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
        f = _Fields(self.path, interfaces[0])
        iface = self._interface(f)
        creds = self._credentials(f, iface)
        drafts = [self._peer(_Fields(self.path, s), i, iface, creds)
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
        if role is None:
            raise f.missing("Role", "'server' or 'client'")
        listen = f.get("ListenAddress", values.listen, None)
        if role == "server" and listen is None:
            raise f.missing("ListenAddress", "ADDRESS:PORT to listen on, e.g. 198.18.0.1:4433 "
                                             "or [::]:4433")
        default_device = f"dtv-{self.name}"
        if not f.has("Device") and not values.is_device_name(default_device):
            raise f.missing("Device", f"an interface name: the default {default_device!r} is "
                                      f"not a valid name of at most {IFNAMSIZ - 1} characters")
        device = f.get("Device", values.device, default_device)
        addresses = f.many("Address", values.interface_address)
        if not addresses:
            raise f.missing("Address", "the tunnel address(es) of this host, e.g. "
                                       "100.64.0.1/24, fd00::1/64")
        seen: dict[object, int] = {}
        for addr, line in addresses:
            if addr.ip in seen:
                raise f.error("Address", f"{addr.ip} listed twice (first at line "
                                         f"{seen[addr.ip]}); expected distinct addresses", line)
            seen[addr.ip] = line
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
            source=Source(self.path, f.section.line),
        )

    def _credentials(self, f: _Fields, iface: InterfaceConfig) -> Credentials:
        if iface.certificate is not None and iface.private_key is None:
            raise f.missing("PrivateKey", "the private key of Certificate")
        if iface.private_key is not None and iface.certificate is None:
            raise f.missing("Certificate", "the certificate of PrivateKey")
        chain = f.load("Certificate", iface.certificate, _certificates) or ()
        key = f.load("PrivateKey", iface.private_key, _private_key)
        ca = f.load("CA", iface.ca, _certificates) or ()
        if key is not None and chain and _spki(key) != _spki(chain[0]):
            raise f.error("PrivateKey", f"expected the private key of {iface.certificate}, "
                                        f"but {iface.private_key} holds another key")
        for cert in ca:
            if not _is_ca(cert):
                raise f.error("CA", f"expected CA certificates in {iface.ca}, but "
                                    f"{_subject(cert)} is not one (basicConstraints cA)")
            self._check_validity(f, "CA", cert)
        if chain:
            self._check_validity(f, "Certificate", chain[0])
            if _is_ca(chain[0]):
                raise f.error("Certificate", f"expected a leaf certificate first in "
                                             f"{iface.certificate}, got the CA "
                                             f"{_subject(chain[0])}")
        return Credentials(chain, key, ca)

    def _check_validity(self, f: _Fields, key: str, cert: x509.Certificate) -> None:
        after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
        if self.now > after:
            raise f.error(key, f"{_subject(cert)} expired at {_when(after)}; "
                               f"expected a valid certificate")
        where = f"{self.path}:{f.line(key)}: {key}"
        if self.now < before:
            self.warnings.append(f"{where}: {_subject(cert)} is not valid before {_when(before)}")
        elif after - self.now < EXPIRY_WARNING:
            self.warnings.append(f"{where}: {_subject(cert)} expires at {_when(after)}")

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
            if endpoint is not None:
                raise f.error("Endpoint", "a server does not dial its peers; expected no "
                                          "Endpoint in a server's [Peer]")
            if server_name is not None:
                raise f.error("ServerName", "only a client checks a server name; expected "
                                            "CommonName to name a client certificate")
            if common_name is not None and not creds.ca_certs:
                raise f.error("CommonName", "expected CA in [Interface] to verify the "
                                            "certificate that carries this name")
        else:
            if endpoint is None:
                raise f.missing("Endpoint", "HOST:PORT of the server to dial, e.g. "
                                            "198.18.0.1:4433 or [2001:db8::1]:4433")
            if common_name is not None:
                raise f.error("CommonName", "a client checks its server with ServerName "
                                            "(subjectAltName) or PeerKeyPin; expected no "
                                            "CommonName")
            if server_name is not None:
                if not creds.ca_certs:
                    raise f.error("ServerName", "expected CA in [Interface]: the name is "
                                                "checked in a certificate chained to it")
                try:
                    ChainVerifier(creds.ca_certs, (), server_name)
                except UsageError as exc:
                    raise f.error("ServerName", str(exc)) from None

        if psk_identity is not None and psk_path is None:
            raise f.error("PSKIdentity", "expected PSKFile = PATH in the same [Peer]")
        if psk_path is not None and psk_identity is None:
            raise f.error("PSKFile", "expected PSKIdentity = NAME in the same [Peer]")
        psk = f.load("PSKFile", psk_path, _psk)

        cert_auth = bool(pins) or common_name is not None
        if role == "client":
            cert_auth = cert_auth or bool(creds.ca_certs)
        if not cert_auth and psk is None:
            what = "CommonName (with CA)" if role == "server" else "CA in [Interface]"
            raise f.error("[Peer]", f"no way to authenticate peer {name!r}; expected {what}, "
                                    f"PeerKeyPin, or PSKIdentity + PSKFile")

        if not allowed:
            raise f.missing("AllowedIPs", "the prefixes this peer may use as source "
                                          "addresses, e.g. 100.64.0.2/32, fd00::2/128")
        seen: dict[Network, int] = {}
        for net, line in allowed:
            if net in seen:
                raise f.error("AllowedIPs", f"{net} listed twice (first at line "
                                            f"{seen[net]})", line)
            seen[net] = line
        for net, line in routes:
            if not any(_inside(net, a) for a, _ in allowed):
                raise f.error("Route", f"expected a prefix inside this peer's AllowedIPs, "
                                       f"got {net}", line)
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
            if ip.version == net.version and ip in net:
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
