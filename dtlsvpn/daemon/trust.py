"""Credentials on reload: what changed, and whether an established peer is still trusted.

``Certificate``, ``PrivateKey`` and ``CA`` are read again at every reload (``load_config``
reads and checks the files: contents count, not paths).  The new ones serve every
handshake from then on (full, resumed, a client's renewals); established associations
keep their keys.  :func:`describe` is the one log line that says what changed.

When the trust changed (the ``CA`` contents: the pins and ``CommonName`` are ``[Peer]``
keys, and a changed peer is removed and added again), :func:`recheck` judges each
established association's peer certificate again, by the chain it presented in its
handshake, against the new trust at the wall-clock time: the chain to the new CA, the
validity periods, the pins and (a client) the ServerName.  The role ends the ones that fail
with that alert (``Association.abort``); the others are untouched.  What cannot be judged
fails: a client's association resumed from a ticket holds no server certificate, and a
server's resumed one holds the client's leaf alone (the ticket carries no intermediates),
so they close and the redial is a full handshake (the old tickets do not resume: their
digests name the old CA, ``ticketstore.trust_digest`` and the server's ticket binding).
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from dtlsvpn.config.model import Credentials
from dtlsvpn.crypto.certs import ChainVerifier, certs_sha256, spki_sha256
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import HandshakeCompleted
from dtlsvpn.errors import Alert, BadCertificate


def _when(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _leaf(cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    return (f"{subject}, serial {cert.serial_number:x}, "
            f"expires {_when(cert.not_valid_after_utc)}")


def ca_changed(old: Credentials, new: Credentials) -> bool:
    """The CA certificates' contents differ (the order counts for nothing)."""
    return set(_ders(old.ca_certs)) != set(_ders(new.ca_certs))


def _ders(certs: tuple[x509.Certificate, ...]) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in certs]


def describe(old: Credentials, new: Credentials, *, ca: bool | None = None) -> str | None:
    """What changed between two loads, in one line (None: nothing); ``ca`` is
    :func:`ca_changed`'s answer when the caller has it already."""
    parts: list[str] = []
    if certs_sha256(old.certificate_chain) != certs_sha256(new.certificate_chain):
        if new.certificate_chain:
            extra = len(new.certificate_chain) - 1
            same = _spki(old.certificate_chain) == _spki(new.certificate_chain)
            parts.append(f"Certificate {_leaf(new.certificate_chain[0])}"
                         + (f", {extra} more in the chain" if extra else "")
                         + (", same key" if same else ", new key"))
        else:
            parts.append("Certificate removed")
    if ca_changed(old, new) if ca is None else ca:
        n = len(new.ca_certs)
        parts.append(f"CA: {n} certificate{'' if n == 1 else 's'}")
    return "; ".join(parts) or None


def _spki(chain: tuple[x509.Certificate, ...]) -> bytes | None:
    return spki_sha256(chain[0]) if chain else None


def recheck(conf: DtlsConfig, result: HandshakeCompleted | None, wall: float) -> Alert | None:
    """None when the peer of this handshake still passes ``conf``'s certificate checks
    (or authenticated by PSK, or has not completed); else the alert to end it with."""
    if result is None or result.psk_identity is not None:
        return None
    chain = result.peer_chain
    if not chain and result.peer_certificate is not None:
        chain = (result.peer_certificate.public_bytes(Encoding.DER),)
    if not chain:
        return BadCertificate("no peer certificate to check (a resumed session)")
    now = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    try:
        ChainVerifier(conf.ca_certs, conf.pinned_spki_sha256, conf.server_name).verify(
            chain, now, peer_is_server=conf.is_client)
    except Alert as exc:
        return exc
    return None
