"""The configuration's model: frozen dataclasses, the key vocabulary and the defaults.

Purpose: what a loaded ``/etc/dtlsvpn/NAME.conf`` *is* once :mod:`dtlsvpn.config.loader`
has validated it: one :class:`Config` holding an :class:`InterfaceConfig`, its
:class:`PeerConfig` list and the loaded :class:`Credentials`.  Turning it into the DTLS
core's settings is the shell's work (:mod:`dtlsvpn.daemon.settings`): this package
imports nothing of ``dtls/``.

Invariants:
- Every instance here passed the loader's checks; the classes do not check again.
- Equality of :class:`PeerConfig` / :class:`InterfaceConfig` ignores
  ``source`` (line numbers), so a reload can tell which peers really changed.
  The loaded key and certificates live in :attr:`Config.credentials`, which is
  not compared either.
- ``RekeyInterval`` (default 3600 s) becomes ``DtlsConfig.rekey_interval``: a client
  starts a make-before-break renewal (``dtls/rekey.py``) when it runs out; a server
  accepts renewals whatever its own value, which only sizes how long it keeps old keys.
  None means no renewal by time (the core still renews before the AEAD record limit).
- ``ConnectionID`` (yes/no, default yes) negotiates RFC 9146 connection IDs, which let
  a roaming client change address without a handshake; ``no`` leaves them out of the
  hellos (a new client address then means a new, ticket-resumed association).
- ``Transport`` (auto/udp/tcp, default auto), ``TCPPort`` (default: the same port number
  as UDP) and ``TCPFallbackAfter`` (seconds, default 3): the TCP fallback.  A client in
  ``auto`` dials DTLS first and moves to TLS over TCP when UDP gets no answer for that
  long, moving back when a background UDP dial succeeds; ``udp``/``tcp`` force one.  A
  server listens on TCP too unless ``udp``; ``tcp`` means TCP only.
- ``UDPOffload`` (yes/no, default yes) lets the data path batch with the kernel's UDP
  GSO/GRO where the kernel has them; ``no`` is one system call per datagram (the same
  bytes on the wire either way).
- ``CompiledLane`` (yes/no, default yes): when the compiled module was built
  (daemon/compiled.py), lone packets of an established tunnel are forwarded by the
  compiled lane (``dtlsvpn/daemon/_lane.c``, daemon/lane.py) without waking the
  interpreter, the TUN is offered TSO on read and what goes to it is coalesced in C
  (``_vnet.c``, daemon/tun.py), and batches of data records are sealed in C
  (``DtlsConfig.record_sealer``); ``no`` keeps every packet in Python (the same bytes
  on the wire either way).
- ``TUNOffload`` (auto/on/off, default auto) opens the TUN with its virtio-net header so
  that TCP segments received from a peer reach the kernel coalesced (vpn/gro.py);
  ``auto`` falls back to a plain TUN when the kernel refuses, ``on`` makes that an error.

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

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from dtlsvpn.config.values import Interface, Network, Role
from dtlsvpn.crypto.certs import PrivateKey
from dtlsvpn.wire.constants import CipherSuite

DEFAULT_CONFDIR = Path("/etc/dtlsvpn")
DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_DEAD_PEER_TIMEOUT = 8.0
DEFAULT_REKEY_INTERVAL = 3600.0  # like OpenVPN's reneg-sec
DEFAULT_FWMARK = 51820  # roam: FwMark and Table of a full tunnel, as wg-quick's (0xca6c)

INTERFACE_KEYS: tuple[str, ...] = (
    "Role", "ListenAddress", "Device", "Address", "MTU", "Certificate", "PrivateKey", "CA",
    "Ciphers", "HeartbeatInterval", "DeadPeerTimeout", "TicketStore", "StatusSocket",
    "MSSClamp", "LogLevel", "RekeyInterval", "ConnectionID", "UDPOffload", "TUNOffload",
    "CompiledLane",
    # roam (issue 11): a client's DNS, full tunnel and kill switch
    "DNS", "FwMark", "Table", "KillSwitch",
    # --- TCP fallback (issue 12, daemon/transport.py) ---
    "Transport", "TCPPort", "TCPFallbackAfter",
)
PEER_KEYS = (
    "Name", "Endpoint", "AllowedIPs", "Route", "PeerKeyPin", "CommonName", "PSKIdentity",
    "PSKFile", "ServerName",
)

# --- fleet: several servers behind one address (issue 15, README "More than one server") ---
# [Interface] keys of a server in a fleet; each has a default that keeps a lone server as
# it was (no key set: random CIDs, ticket keys in TicketStore/ticket.keys, rotated here).
#   ServerId = 0..255         this server's id, written into the CIDs it issues
#   FleetCID = obfuscated|plain  obfuscated (default): the id hidden with the fleet secret;
#                             plain: the id in CID byte 0, for a trusted network
#   FleetSecretFile = PATH    the fleet secret, hex, 16..64 bytes, mode 0600; required
#                             with obfuscated CIDs, optional (keys the CID tag) with plain
#   TicketKeyFile = PATH      the ticket key file (default TicketStore/ticket.keys); the
#                             same file (or a copy of it) on every server of the fleet
#   TicketKeyRotation = yes|no  yes (default): this server rotates and writes the file;
#                             no: it only reads it, following the writer's changes
FLEET_KEYS = ("ServerId", "FleetCID", "FleetSecretFile", "TicketKeyFile", "TicketKeyRotation")
INTERFACE_KEYS += FLEET_KEYS
FLEET_CID_MODES = ("obfuscated", "plain")
TICKET_KEY_RELOAD = 5.0  # seconds between a reader's looks (one stat) at TicketKeyFile


@dataclass(frozen=True)
class FleetConfig:
    """The fleet keys of [Interface]; all None/defaults on a lone server."""

    server_id: int | None = None
    cid_mode: str = "obfuscated"
    secret: bytes | None = field(default=None, repr=False)
    ticket_key_file: Path | None = None
    ticket_key_rotation: bool = True
# --- end of the fleet block ---

MULTI_VALUED = frozenset({"Address", "AllowedIPs", "Route", "PeerKeyPin", "DNS"})
VOCABULARY = {"Interface": INTERFACE_KEYS, "Peer": PEER_KEYS}
# Keys people bring from WireGuard and OpenVPN, with what to write instead.
HINTS = {
    "listenport": "use ListenAddress = HOST:PORT",
    "publickey": "peers authenticate by certificate (CommonName, PeerKeyPin) or by PSK "
                 "(PSKIdentity, PSKFile)",
    "presharedkey": "use PSKIdentity and PSKFile (a file holding the key in hex)",
    "persistentkeepalive": "use HeartbeatInterval in [Interface]",
    "key": "use PrivateKey",
    "cert": "use Certificate",
}


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
    udp_offload: bool = True  # UDP GSO/GRO batching where the kernel has it
    tun_offload: str = "auto"  # auto/on/off: the TUN's virtio-net header (daemon/tun.py)
    compiled_lane: bool = True  # the compiled module when built: lane.py; tun.py's offloads
    fleet: FleetConfig = field(default_factory=FleetConfig)  # fleet keys (block above)
    # --- roam (issue 11): a client's resolvers, full tunnel and kill switch -----------
    # DNS: the tunnel's resolvers (IP addresses) and search domains (the other entries),
    #   set with resolvectl or resolvconf while the tunnel runs (daemon/dns.py).
    # FwMark: SO_MARK of the client's UDP socket when AllowedIPs/Route has a /0 (full
    #   tunnel, daemon/fulltunnel.py); Table: the policy routing table (default FwMark).
    # KillSwitch: with a full tunnel, nothing leaves outside it while it is down, even
    #   after a crash (an unreachable default route in Table).
    dns: tuple[str, ...] = ()
    fwmark: int = DEFAULT_FWMARK
    table: int = DEFAULT_FWMARK
    kill_switch: bool = False
    # --- end roam -----------------------------------------------------------------------
    # --- TCP fallback (issue 12): TLS 1.2 over TCP with SP framing, daemon/transport.py ---
    transport: str = "auto"  # auto | udp | tcp: client carrier policy; server: udp = no TCP
    tcp_port: int | None = None  # None: the UDP port number (Endpoint's or ListenAddress's)
    tcp_fallback_after: float = 3.0  # client, auto: seconds of unanswered/silent UDP
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



def config_path(name_or_file: str, confdir: Path = DEFAULT_CONFDIR) -> Path:
    """``office`` → ``confdir/office.conf``; a name with ``/`` or ending in ``.conf`` is a file."""
    if "/" in name_or_file or name_or_file.endswith(".conf"):
        return Path(name_or_file)
    return confdir / f"{name_or_file}.conf"
