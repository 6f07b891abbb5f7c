"""DtlsConfig: one validated, immutable settings object per association role.

Everything the core needs from the outside world that is not a datagram or a
time comes through here: credentials, policy, timer constants and the
``random_bytes`` seam that tests seed for reproducible transcripts.
``validate()`` runs once at construction so that a misconfiguration is a
:class:`UsageError` at start-up, never a surprise mid-handshake.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509

from dtlsvpn.crypto.certs import PrivateKey
from dtlsvpn.crypto.keyexchange import KeyShareFactory
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.dtls.cid import CID_LENGTH, CidLayout
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.pmtu_settings import PmtuSettings
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import CipherSuite, KeyExchangeKind, NamedGroup, SignatureScheme

if TYPE_CHECKING:
    from dtlsvpn.crypto.tickets import TicketKeyRing

DEFAULT_GROUPS = (NamedGroup.x25519, NamedGroup.secp256r1, NamedGroup.secp384r1)
DEFAULT_SIGNATURE_SCHEMES = (
    SignatureScheme.ecdsa_secp256r1_sha256,
    SignatureScheme.ecdsa_secp384r1_sha384,
    SignatureScheme.ed25519,
    SignatureScheme.rsa_pss_rsae_sha256,
    SignatureScheme.rsa_pkcs1_sha256,
    SignatureScheme.rsa_pss_rsae_sha384,
    SignatureScheme.rsa_pkcs1_sha384,
)
# Suites used when the config names none: certificate suites when a certificate
# or a trust anchor is configured, forward-secret PSK when a PSK is.
DEFAULT_CERT_SUITES = (
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
)
DEFAULT_PSK_SUITES = (CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,)

MIN_MTU = 200  # smallest UDP payload we fragment a handshake to


@dataclass(frozen=True)
class DtlsConfig:
    is_client: bool
    cipher_suites: tuple[CipherSuite, ...] | None = None
    groups: tuple[NamedGroup, ...] = DEFAULT_GROUPS
    signature_schemes: tuple[SignatureScheme, ...] = DEFAULT_SIGNATURE_SCHEMES
    certificate_chain: tuple[x509.Certificate, ...] = ()
    private_key: PrivateKey | None = field(default=None, repr=False)
    ca_certs: tuple[x509.Certificate, ...] = ()
    pinned_spki_sha256: frozenset[bytes] = frozenset()
    server_name: str | None = None
    verify_peer: bool = True
    require_client_cert: bool = False
    psk: bytes | None = field(default=None, repr=False)  # security.md: no secret in a repr
    psk_identity: bytes | None = None
    psk_lookup: Callable[[bytes], bytes | None] | None = None
    mtu: int = 1400
    cookie_exchange: bool = True
    random_bytes: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    key_share_factory: KeyShareFactory | None = field(default=None, repr=False)
    initial_timeout: float = 1.0
    max_timeout: float = 60.0
    max_retransmissions: int = 10
    keylog: Callable[[str], None] | None = field(default=None, repr=False)
    require_extended_master_secret: bool = True
    heartbeat: bool = True  # offer/accept RFC 6520 with mode peer_allowed_to_send
    heartbeat_settings: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    pmtu: PmtuSettings | None = field(default_factory=PmtuSettings)  # None: no PMTU discovery
    connection_id: bool = True  # negotiate RFC 9146 connection IDs when the peer does
    cid_length: int | None = None  # CID we ask the peer to send; None: client 0, server 8
    cid_layout: CidLayout | None = None  # server in a fleet: CIDs that name it (dtls/cid.py)
    rekey_interval: float | None = 3600.0  # seconds between key renewals (OpenVPN reneg-sec)
    rekey_records: int | None = None  # records per direction before renewal; None: per AEAD
    # A compiled batch sealer of data records (``FastSeal``): called as ``record_sealer(
    # key=, gcm=, nonce_high=, nonce_xor=, cid=)``, its ``seal(payloads, es)`` must give
    # FastSeal's own bytes (the daemon's ``_lane.Sealer``); None: Python's loop.
    record_sealer: Callable[..., Any] | None = field(default=None, repr=False)
    session_tickets: bool = True  # client: offer RFC 5077 (with resume_session's ticket)
    resume_session: ClientSession | None = None  # client: the session to resume
    ticket_keys: TicketKeyRing | None = field(default=None, repr=False)  # server: issue/accept

    def __post_init__(self) -> None:
        self.validate()

    @property
    def suites(self) -> tuple[CipherSuite, ...]:
        """The suites actually offered or accepted, in preference order."""
        if self.cipher_suites is not None:
            return self.cipher_suites
        out: list[CipherSuite] = []
        if self.has_psk:
            out += DEFAULT_PSK_SUITES
        if self.is_client:
            if self.verify_peer is False or self.ca_certs or self.pinned_spki_sha256:
                out += DEFAULT_CERT_SUITES
        elif self.private_key is not None:
            out += DEFAULT_CERT_SUITES
        return tuple(out)

    @property
    def own_cid_length(self) -> int | None:
        """Length of the CID we ask for (RFC 9146 §3), or None when CIDs are off."""
        if not self.connection_id:
            return None
        if self.cid_length is not None:
            return self.cid_length
        return 0 if self.is_client else 8

    @property
    def has_psk(self) -> bool:
        return self.psk is not None or self.psk_lookup is not None

    def validate(self) -> None:
        """Raise UsageError for the first inconsistent setting (checked in this order)."""
        if not self.mtu >= MIN_MTU:
            raise UsageError(f"mtu {self.mtu} is below the minimum of {MIN_MTU}")
        if self.mtu > 65507:
            raise UsageError(f"mtu {self.mtu} exceeds the largest UDP payload")
        self._validate_suites()
        self._validate_credentials()
        self._validate_limits()

    def _validate_suites(self) -> None:
        if self.cipher_suites is not None:
            for s in self.cipher_suites:
                if int(s) not in SUITES:
                    raise UsageError(f"unsupported cipher suite {s!r}")
        if not self.suites:
            raise UsageError("no cipher suite usable with the configured credentials")

    def _validate_credentials(self) -> None:
        kinds = {SUITES[int(s)].kx for s in self.suites}
        psk_kinds = {KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK}
        if kinds & psk_kinds and not self.has_psk:
            raise UsageError("PSK suites configured without a PSK")
        cert_kinds = kinds - psk_kinds
        if self.is_client:
            if self.psk is not None and self.psk_identity is None:
                raise UsageError("a client PSK needs a psk_identity")
            if cert_kinds and self.verify_peer and not (self.ca_certs or self.pinned_spki_sha256):
                raise UsageError("certificate suites need ca_certs or pins (or verify_peer=False)")
        else:
            if cert_kinds and self.private_key is None:
                raise UsageError("certificate suites need a certificate and private key")
            if self.require_client_cert and not (self.ca_certs or self.pinned_spki_sha256):
                raise UsageError("require_client_cert needs ca_certs or pins")
        if (self.private_key is None) != (not self.certificate_chain):
            raise UsageError("certificate_chain and private_key go together")

    def _validate_limits(self) -> None:
        if self.initial_timeout <= 0 or self.max_timeout < self.initial_timeout:
            raise UsageError("bad timer constants")
        if not self.groups:
            raise UsageError("no groups configured")
        if self.rekey_interval is not None and self.rekey_interval <= 0:
            raise UsageError("rekey_interval must be positive (or None)")
        if self.rekey_records is not None and not 0 < self.rekey_records < 2**48:
            raise UsageError("rekey_records must be in 1..2^48-1")
        if self.cid_length is not None and not 0 <= self.cid_length <= 32:
            raise UsageError("cid_length must be 0..32")
        if self.cid_layout is not None and self.own_cid_length not in (None, CID_LENGTH):
            raise UsageError(f"a fleet CID layout needs cid_length {CID_LENGTH}")

    def lookup_psk(self, identity: bytes) -> bytes | None:
        """The server's PSK for ``identity`` (RFC 4279 §5.1), or None."""
        if self.psk_lookup is not None:
            return self.psk_lookup(identity)
        if self.psk is None:
            return None
        if self.psk_identity is not None and identity != self.psk_identity:
            return None
        return self.psk
