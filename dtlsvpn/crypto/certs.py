"""Certificates and peer chain verification.

Purpose: load our certificates and decide whether a peer's certificate chain is
acceptable: chained to a configured CA, pinned, or both.  Keys and the handshake
signatures are in ``signing.py`` (re-exported here).

Invariants:
- Keys: ECDSA P-256/P-384, Ed25519, RSA >= 2048 bits (protocol.md); anything
  else in a peer's leaf is unsupported_certificate.
- Signature schemes use the RFC 8446 §4.2.3 code points, which TLS 1.2 reads
  as (hash, signature) pairs (RFC 5246 §7.4.1.4.1). In TLS 1.2 an ECDSA scheme
  is not bound to a curve, so either ECDSA scheme fits either curve.
  RSA-PSS uses MGF1 with the same hash and a salt as long as the hash
  (RFC 8446 §4.2.3). A scheme that does not fit the key is illegal_parameter;
  a signature that does not verify is decrypt_error (RFC 5246 §7.2.2).
- Chains are verified with ``cryptography.x509.verification`` against the
  configured CAs at the caller's ``now`` (no clock is read here). The WebPKI
  defaults are relaxed for private VPN PKIs: a missing EKU is accepted
  (RFC 5280 §4.2.1.12 treats it as "any"), a present EKU must allow the peer's
  role (serverAuth / clientAuth) or be anyExtendedKeyUsage; a CA needs
  basicConstraints cA=TRUE (RFC 5280 §4.2.1.9) but it may be non-critical, and
  keyCertSign only when keyUsage is present (RFC 5280 §4.2.1.3); the leaf needs
  no SAN and no AKI unless a server name is checked. If the leaf has keyUsage,
  digitalSignature must be set (RFC 5246 §7.4.2, §7.4.6).
- A server is checked against ``server_name`` when one is configured; without
  one the chain is checked to the CA and no name is checked (a VPN server's
  certificate often names nothing the client knows).
- ``cryptography``'s verifier refuses Ed25519 CAs (WebPKI algorithm list, not
  configurable from Python: pyca/cryptography issue 13391). Chains with an
  Ed25519 signature are therefore checked by a small RFC 5280 §6.1 subset
  below: signatures, validity, basicConstraints and pathLenConstraint,
  keyUsage, EKU, unknown critical extensions, and the server name.
- Pinning compares SHA-256 of the leaf's SubjectPublicKeyInfo. With pins and
  no CA, the pin alone decides; with both, both must pass.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
from collections.abc import Callable, Collection, Sequence
from typing import TypeAlias, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, SignatureAlgorithmOID

from dtlsvpn.crypto.signing import CURVES as _CURVES
from dtlsvpn.crypto.signing import (
    MIN_RSA_BITS,
    PrivateKey,
    PublicKey,
    load_private_key,
    schemes_for_key,
    sign,
    verify_signature,
)
from dtlsvpn.errors import (
    Alert,
    BadCertificate,
    CertificateExpired,
    UnknownCa,
    UnsupportedCertificate,
    UsageError,
)
from dtlsvpn.wire.constants import MAX_CERT_CHAIN

__all__ = [  # (the signing names are re-exported: callers import them from here)
    "MIN_RSA_BITS", "ChainVerifier", "PrivateKey", "PublicKey", "certs_sha256",
    "load_certificates", "load_private_key", "schemes_for_key", "sign", "spki_sha256",
    "verify_signature",
]

_E = TypeVar("_E", bound=x509.ExtensionType)


# --- loading -----------------------------------------------------------------


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order (ValueError if there is none)."""
    return x509.load_pem_x509_certificates(pem)


def spki_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER SubjectPublicKeyInfo (the pin)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


@functools.lru_cache(maxsize=32)
def certs_sha256(certs: tuple[x509.Certificate, ...]) -> bytes:
    """SHA-256 over the certificates' DER, each length-prefixed, in order: which set of
    certificates this is (a CA set or a chain), for the ticket bindings.  Cached: the
    sets are a configuration's, asked about at every handshake."""
    h = hashlib.sha256()
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        h.update(len(der).to_bytes(4, "big") + der)
    return h.digest()


# --- chain verification ----------------------------------------------------------

_EKU_ANY = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
_ED25519_SIG = SignatureAlgorithmOID.ED25519
_GOOD_SIGNATURE_ALGS = frozenset({
    SignatureAlgorithmOID.ECDSA_WITH_SHA256, SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512, SignatureAlgorithmOID.RSA_WITH_SHA256,
    SignatureAlgorithmOID.RSA_WITH_SHA384, SignatureAlgorithmOID.RSA_WITH_SHA512,
    SignatureAlgorithmOID.RSASSA_PSS, SignatureAlgorithmOID.ED25519,
})
_HANDLED_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
})

# What lazily parsed extensions raise when they are malformed (verify() also
# has a catch-all for the rest).
_MALFORMED = (
    ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

_Validator: TypeAlias = Callable[[xv.Policy, x509.Certificate, x509.ExtendedKeyUsage | None], None]


def _eku_ok(eku: x509.ExtendedKeyUsage | None, expected: x509.ObjectIdentifier) -> bool:
    if eku is None:
        return True  # RFC 5280 §4.2.1.12: no EKU, no restriction
    usages = list(eku)
    return expected in usages or _EKU_ANY in usages


def _eku_validator(expected: x509.ObjectIdentifier) -> _Validator:
    def check(
        _policy: xv.Policy, _cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None
    ) -> None:
        if not _eku_ok(ext, expected):
            raise ValueError(f"extendedKeyUsage does not allow {expected.dotted_string}")

    return check


def _ca_basic_constraints(
    _policy: xv.Policy, _cert: x509.Certificate, ext: x509.BasicConstraints
) -> None:
    # RFC 5280 §4.2.1.9: only cA=TRUE certificates may issue; pathLen is
    # enforced by the verifier itself.
    if not ext.ca:
        raise ValueError("issuer is not a CA (basicConstraints cA is FALSE)")


def _ca_key_usage(
    _policy: xv.Policy, _cert: x509.Certificate, ext: x509.KeyUsage | None
) -> None:
    # RFC 5280 §4.2.1.3: keyCertSign MUST be set to verify certificate signatures.
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("issuer keyUsage lacks keyCertSign")


def _ee_basic_constraints(
    _policy: xv.Policy, _cert: x509.Certificate, ext: x509.BasicConstraints | None
) -> None:
    if ext is not None and ext.ca:
        raise ValueError("leaf certificate is a CA")


def _ee_key_usage(
    _policy: xv.Policy, _cert: x509.Certificate, ext: x509.KeyUsage | None
) -> None:
    # RFC 5246 §7.4.2 / §7.4.6: the key signs the handshake, so digitalSignature
    # MUST be set when keyUsage is present.
    if ext is not None and not ext.digital_signature:
        raise ValueError("leaf keyUsage lacks digitalSignature")


def _policies(
    expected: x509.ObjectIdentifier, name_check: bool
) -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    agnostic = xv.Criticality.AGNOSTIC
    ca = (
        xv.ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, agnostic, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _eku_validator(expected))
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
    )
    ee = (
        xv.ExtensionPolicy.permit_all()
        .may_be_present(x509.BasicConstraints, agnostic, _ee_basic_constraints)
        .may_be_present(x509.KeyUsage, agnostic, _ee_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _eku_validator(expected))
    )
    if name_check:
        # cryptography matches the SAN against the subject itself; it only asks
        # that the policy requires the extension.
        ee = ee.require_present(x509.SubjectAlternativeName, agnostic, None)
    return ca, ee


def _utc(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.UTC)
    return now.astimezone(datetime.UTC)


def _check_validity(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    # RFC 5280 §6.1.3 (a)(2): the certificate validity period includes now.
    if now < cert.not_valid_before_utc:
        raise CertificateExpired(f"{what} is not valid before {cert.not_valid_before_utc}")
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(f"{what} expired at {cert.not_valid_after_utc}")


def _check_leaf_key(cert: x509.Certificate) -> None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UnsupportedCertificate(f"unusable public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, _CURVES):
            return
        raise UnsupportedCertificate(f"unsupported curve {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return
        raise UnsupportedCertificate(f"RSA key of {key.key_size} bits is too short")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise UnsupportedCertificate(f"unsupported key type {type(key).__name__}")


def _parse_chain(chain_der: Sequence[bytes]) -> list[x509.Certificate]:
    if not chain_der:
        raise BadCertificate("empty certificate chain")
    if len(chain_der) > MAX_CERT_CHAIN:
        raise BadCertificate(f"certificate chain longer than {MAX_CERT_CHAIN}")
    certs = []
    for i, der in enumerate(chain_der):
        try:
            certs.append(x509.load_der_x509_certificate(bytes(der)))
        except ValueError as exc:
            raise BadCertificate(f"certificate {i} does not parse: {exc}") from None
    return certs


class ChainVerifier:
    """Decides whether a peer's certificate chain is acceptable.

    Built once per configuration; ``verify`` is called with the peer's DER
    chain (leaf first, RFC 5246 §7.4.2) and the wall-clock time.
    """

    __slots__ = ("_ca_certs", "_name_ip", "_pins", "_policies", "_server_name", "_store",
                 "_subject")

    def __init__(
        self,
        ca_certs: Sequence[x509.Certificate],
        pins: Collection[bytes] = (),
        server_name: str | None = None,
    ) -> None:
        self._ca_certs = tuple(ca_certs)
        self._store = xv.Store(list(self._ca_certs)) if self._ca_certs else None
        self._pins = frozenset(bytes(p) for p in pins)
        if any(len(p) != 32 for p in self._pins):
            raise UsageError("SPKI pins are SHA-256 digests (32 bytes)")
        self._server_name = server_name
        self._name_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._subject: xv.Subject | None = None
        if server_name is not None:
            try:
                self._name_ip = ipaddress.ip_address(server_name)
                self._subject = x509.IPAddress(self._name_ip)
            except ValueError:
                self._subject = x509.DNSName(server_name)
            if self._store is not None:
                try:  # rejects names the verifier cannot match, once, here
                    xv.PolicyBuilder().store(self._store).build_server_verifier(self._subject)
                except ValueError as exc:
                    raise UsageError(f"bad server name {server_name!r}: {exc}") from None
        self._policies = {
            True: _policies(_SERVER_AUTH, self._subject is not None),
            False: _policies(_CLIENT_AUTH, False),
        }

    def verify(
        self, chain_der: Sequence[bytes], now: datetime.datetime, *, peer_is_server: bool
    ) -> x509.Certificate:
        """The peer's leaf certificate, or an Alert saying why the chain is refused.

        Raises only Alert subclasses on remote input. ``cryptography`` parses
        certificate fields lazily and a malformed field can surface later as
        almost any exception (ValueError, DuplicateExtension, even KeyError for
        an unknown string tag in a Name), so everything else is bad_certificate.
        """
        try:
            return self._verify(chain_der, now, peer_is_server)
        except Alert:
            raise
        except Exception as exc:
            raise BadCertificate(f"malformed certificate: {exc!r}") from None

    def _verify(
        self, chain_der: Sequence[bytes], now: datetime.datetime, peer_is_server: bool
    ) -> x509.Certificate:
        certs = _parse_chain(chain_der)
        leaf = certs[0]
        _check_leaf_key(leaf)
        if self._pins and spki_sha256(leaf) not in self._pins:
            raise BadCertificate("the peer's public key matches no configured pin")
        if self._store is None:
            if self._pins:
                return leaf
            raise UnknownCa("no CA certificates and no pins configured")
        now = _utc(now)
        _check_validity(leaf, now, "the peer's certificate")
        expected = _SERVER_AUTH if peer_is_server else _CLIENT_AUTH
        subject = self._subject if peer_is_server else None
        if any(c.signature_algorithm_oid == _ED25519_SIG for c in certs):
            self._verify_subset(certs, now, expected, check_name=subject is not None)
        else:
            self._verify_webpki(certs, now, peer_is_server, subject)
        return leaf

    def _verify_webpki(
        self,
        certs: list[x509.Certificate],
        now: datetime.datetime,
        peer_is_server: bool,
        subject: xv.Subject | None,
    ) -> None:
        assert self._store is not None
        ca_policy, ee_policy = self._policies[peer_is_server]
        builder = (
            xv.PolicyBuilder()
            .store(self._store)
            .time(now)
            .max_chain_depth(MAX_CERT_CHAIN)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        )
        try:
            if subject is not None:
                builder.build_server_verifier(subject).verify(certs[0], certs[1:])
            else:
                builder.build_client_verifier().verify(certs[0], certs[1:])
        except xv.VerificationError as exc:
            raise self._explain(certs, now, str(exc)) from None

    def _explain(
        self, certs: list[x509.Certificate], now: datetime.datetime, message: str
    ) -> Alert:
        """Map a verifier failure to the alert RFC 5246 §7.2.2 names for it.

        The verifier's messages are not an API, so the cause is worked out from
        the certificates where possible and the message is only a hint.
        """
        issuers = {c.issuer for c in certs}
        anchors = [a for a in self._ca_certs if a.subject in issuers]
        for cert in certs[1:] + anchors:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                return CertificateExpired(
                    f"{cert.subject.rfc4514_string()} is outside its validity period"
                )
        if "validation time" in message:
            return CertificateExpired(message)
        if not anchors:
            return UnknownCa(f"issuer {_issuer_of(certs)} is not a configured CA")
        if not any(_issued_by(c, a) for c in certs for a in anchors):
            # A CA of the same name (two `dtlsvpn gencert` CAs both called so) whose key
            # did not sign: the verifier says "candidates exhausted", we say this.
            return UnknownCa(f"issuer {_issuer_of(certs)}: a configured CA has that name "
                             "but another key")
        if "subjectAltName" in message and self._server_name is not None:
            try:
                self._match_name(certs[0])
            except BadCertificate as exc:
                return exc  # expected and presented names, not the verifier's words
        return BadCertificate(message)

    # -- the RFC 5280 §6.1 subset for chains cryptography's policy refuses (Ed25519) --

    def _verify_subset(
        self,
        certs: list[x509.Certificate],
        now: datetime.datetime,
        expected: x509.ObjectIdentifier,
        *,
        check_name: bool,
    ) -> None:
        leaf = certs[0]
        _check_extensions(leaf, "the peer's certificate")
        bc = _ext(leaf, x509.BasicConstraints)
        if bc is not None and bc.ca:
            raise BadCertificate("the peer's certificate is a CA certificate")
        ku = _ext(leaf, x509.KeyUsage)
        if ku is not None and not ku.digital_signature:  # RFC 5246 §7.4.2
            raise BadCertificate("the peer's keyUsage lacks digitalSignature")
        if not _eku_ok(_ext(leaf, x509.ExtendedKeyUsage), expected):
            raise BadCertificate("the peer's extendedKeyUsage does not allow its role")
        if check_name:
            self._match_name(leaf)
        pool = list(certs[1:])
        child = leaf
        for depth in range(MAX_CERT_CHAIN + 1):
            _check_signature_alg(child)
            anchor = next((a for a in self._ca_certs if _issued_by(child, a)), None)
            if anchor is not None:
                _check_issuer(anchor, depth, expected, now)
                return
            issuer = next((c for c in pool if _issued_by(child, c)), None)
            if issuer is None:
                raise UnknownCa("no chain to a configured CA")
            _check_issuer(issuer, depth, expected, now)
            pool.remove(issuer)
            child = issuer
        raise BadCertificate("certificate chain too long")

    def _match_name(self, leaf: x509.Certificate) -> None:
        san = _ext(leaf, x509.SubjectAlternativeName)
        if san is None:
            raise BadCertificate("the server certificate has no subjectAltName")
        if self._name_ip is not None:
            if self._name_ip in san.get_values_for_type(x509.IPAddress):
                return
        else:
            assert self._server_name is not None
            want = self._server_name.lower().rstrip(".")
            for pattern in san.get_values_for_type(x509.DNSName):
                if _dns_match(pattern.lower().rstrip("."), want):
                    return
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        raise BadCertificate(f"the server certificate does not name {self._server_name!r} "
                             f"(ServerName); its subjectAltName names "
                             f"{', '.join(names) or 'nothing'}")


def _issuer_of(certs: list[x509.Certificate]) -> str:
    return certs[-1].issuer.rfc4514_string()


def _dns_match(pattern: str, name: str) -> bool:
    # RFC 6125 §6.4.3: a wildcard is only the whole left-most label.
    if pattern == name:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except _MALFORMED as exc:  # duplicate or malformed extensions
        raise BadCertificate(f"bad certificate extensions: {exc}") from None


def _check_extensions(cert: x509.Certificate, what: str) -> None:
    try:
        exts = list(cert.extensions)
    except _MALFORMED as exc:
        raise BadCertificate(f"{what}: bad extensions: {exc}") from None
    for ext in exts:
        if ext.oid == ExtensionOID.NAME_CONSTRAINTS:
            raise UnsupportedCertificate(f"{what}: name constraints are not supported here")
        # RFC 5280 §4.2: an unrecognised critical extension MUST be refused.
        if ext.critical and ext.oid not in _HANDLED_CRITICAL:
            raise BadCertificate(f"{what}: unhandled critical extension {ext.oid.dotted_string}")


def _check_signature_alg(cert: x509.Certificate) -> None:
    if cert.signature_algorithm_oid not in _GOOD_SIGNATURE_ALGS:
        raise BadCertificate(
            f"signature algorithm {cert.signature_algorithm_oid.dotted_string} not accepted"
        )


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_issuer(
    cert: x509.Certificate, depth: int, expected: x509.ObjectIdentifier, now: datetime.datetime
) -> None:
    what = f"issuer {cert.subject.rfc4514_string()}"
    _check_validity(cert, now, what)
    _check_extensions(cert, what)
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:  # RFC 5280 §6.1.4 (k)
        raise BadCertificate(f"{what} is not a CA")
    if bc.path_length is not None and depth > bc.path_length:  # RFC 5280 §6.1.4 (m)
        raise BadCertificate(f"{what}: path length constraint violated")
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:  # RFC 5280 §6.1.4 (n)
        raise BadCertificate(f"{what}: keyUsage lacks keyCertSign")
    if not _eku_ok(_ext(cert, x509.ExtendedKeyUsage), expected):
        raise BadCertificate(f"{what}: extendedKeyUsage does not allow the peer's role")
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise BadCertificate(f"{what}: RSA key too short")
