"""Events the core reports to its shell.

Events are frozen, slotted, keyword-only dataclasses named in the past tense,
all subclasses of :class:`CoreEvent`.  ``Event`` is the union of every event
the core emits (an Association's, and ``Rekeyed`` from ``RekeyingClient``), so
a shell can ``match`` on it and have mypy check that no case is missing
(``typing.assert_never`` in the default case); ``EVENT_TYPES`` lists the same
classes for a table keyed by type.  Decrypted application data is *not* an
event: ``receive_datagram`` returns it directly, so the data path allocates no
object per packet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509

from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.wire.constants import CipherSuite


class CoreEvent:
    """The base of every event the core emits."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted(CoreEvent):
    """Both Finished messages verified; application data may flow."""

    suite: CipherSuite
    suite_name: str
    ems: bool
    resumed: bool
    peer_certificate: x509.Certificate | None
    psk_identity: bytes | None
    heartbeat: bool = False  # the peer accepts our HeartbeatRequests (RFC 6520 §2)
    # RFC 9146 connection IDs when negotiated: on records to us, on records we send.
    rx_cid: bytes | None = None
    tx_cid: bytes | None = None
    # The DER chain the peer presented in this handshake (leaf first), as it was verified;
    # empty when resumed or PSK (the shell checks it again when the trust is reloaded).
    peer_chain: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionTicketReceived(CoreEvent):
    """Client: the server issued a ticket (RFC 5077 §3.3); keep it to resume later."""

    session: ClientSession


@dataclass(frozen=True, slots=True, kw_only=True)
class PathMtuChanged(CoreEvent):
    """DPLPMTUD (RFC 8899) settled on a new PLPMTU.

    ``plpmtu`` is the outer IP packet size that gets through; ``inner_mtu`` is
    PLPMTU minus the outer IP, UDP and record overhead of the negotiated suite:
    the MTU to put on the TUN device.  ``search_complete``: the search ended at this
    PLPMTU with this report (SEARCH_COMPLETE, RFC 8899 §5.2), so no further raise
    follows it soon; a report that only moves the search on leaves it False.
    """

    plpmtu: int
    inner_mtu: int
    search_complete: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerUnresponsive(CoreEvent):
    """Nothing authenticated arrived for the heartbeat timeout (RFC 6520 §3)."""

    silent_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAlive(CoreEvent):
    """An unresponsive peer was heard again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAnswered(CoreEvent):
    """One of our HeartbeatRequests was answered; ``probe_size`` for PMTU probes."""

    rtt: float
    probe_size: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAddressChanged(CoreEvent):
    """RFC 9146 §6: an authenticated, newer record came from a new address."""

    old: object
    new: object


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertReceived(CoreEvent):
    """An authenticated (or, during the handshake, plaintext) alert from the peer."""

    level: int
    description: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociationClosed(CoreEvent):
    """The association ended; nothing more is processed on it.

    ``local`` is True when we ended it (our alert, timeout, close()), False
    when the peer did (close_notify or a fatal alert).  When the handshake never
    completed (``handshake``), ``failure`` names the check that failed in a stable
    snake_case word (``unknown_ca``, ``no_client_certificate``, ``wrong_key``,
    ``timeout``, ``peer_alert``, ...) and ``peer_identity`` says who the peer claimed
    to be (``PSK identity alice``, ``certificate CN=laptop-2``), when it got that far.
    """

    local: bool
    reason: str
    alert: int | None
    handshake: bool = False
    failure: str | None = None
    peer_identity: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rekeyed(CoreEvent):
    """``RekeyingClient``: the association was replaced by a freshly keyed one
    (make-before-break); ``generation`` counts the renewals."""

    generation: int


Event = (
    HandshakeCompleted | SessionTicketReceived | PathMtuChanged | PeerUnresponsive | PeerAlive
    | PeerAddressChanged | HeartbeatAnswered | AlertReceived | AssociationClosed | Rekeyed
)

EVENT_TYPES: Final[tuple[type[CoreEvent], ...]] = (
    HandshakeCompleted, SessionTicketReceived, PathMtuChanged, PeerUnresponsive, PeerAlive,
    PeerAddressChanged, HeartbeatAnswered, AlertReceived, AssociationClosed, Rekeyed,
)
