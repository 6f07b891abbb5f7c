"""dtlsvpn.crypto.certs: signatures, pinning and chain verification on throwaway PKIs."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.crypto.certs import (
    ChainVerifier,
    PrivateKey,
    load_certificates,
    load_private_key,
    schemes_for_key,
    sign,
    spki_sha256,
    verify_signature,
)
from dtlsvpn.errors import (
    Alert,
    BadCertificate,
    CertificateExpired,
    DecryptError,
    IllegalParameter,
    UnknownCa,
    UnsupportedCertificate,
    UsageError,
)
from dtlsvpn.wire.constants import SignatureScheme

UTC = datetime.UTC
NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)
KINDS = ["p256", "p384", "ed25519", "rsa2048"]


@cache
def key_of(kind: str, n: int = 0) -> PrivateKey:
    """Keys are cached per (kind, n): RSA generation is slow."""
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())  # type: ignore[return-value]
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    raise AssertionError(kind)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _hash_for(key: object) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def issue(
    cn: str,
    key: PrivateKey,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    bc_critical: bool = True,
    key_usage: bool = True,
    eku: list[x509.ObjectIdentifier] | None = None,
    san: list[x509.GeneralName] | None = None,
    not_before: datetime.datetime = NOW - 30 * DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
    extra: Callable[[x509.CertificateBuilder], x509.CertificateBuilder] | None = None,
) -> Issued:
    signer_key = issuer.key if issuer else key
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=bc_critical)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if key_usage:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if extra is not None:
        b = extra(b)
    return Issued(b.sign(signer_key, _hash_for(signer_key)), key)  # type: ignore[arg-type]


@cache
def pki(kind: str) -> tuple[Issued, Issued]:
    """A CA and a leaf (SAN vpn.example.net, no EKU), both of ``kind``."""
    ca = issue(f"{kind} test CA", key_of(kind, 0), ca=True)
    leaf = issue(f"{kind} leaf", key_of(kind, 1), ca,
                 san=[x509.DNSName("vpn.example.net"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))])
    return ca, leaf


# --- signatures -----------------------------------------------------------------


SCHEMES_BY_KIND = {
    "p256": [SignatureScheme.ecdsa_secp256r1_sha256, SignatureScheme.ecdsa_secp384r1_sha384],
    "p384": [SignatureScheme.ecdsa_secp384r1_sha384, SignatureScheme.ecdsa_secp256r1_sha256],
    "ed25519": [SignatureScheme.ed25519],
    "rsa2048": [SignatureScheme.rsa_pss_rsae_sha256, SignatureScheme.rsa_pss_rsae_sha384,
                SignatureScheme.rsa_pkcs1_sha256, SignatureScheme.rsa_pkcs1_sha384],
}


@pytest.mark.parametrize("kind", KINDS)
def test_schemes_for_key(kind: str) -> None:
    key = key_of(kind)
    assert schemes_for_key(key) == SCHEMES_BY_KIND[kind]
    assert schemes_for_key(key.public_key()) == SCHEMES_BY_KIND[kind]


def test_schemes_for_weak_or_odd_keys() -> None:
    assert schemes_for_key(key_of("rsa1024")) == []
    assert schemes_for_key(key_of("p521")) == []


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [(k, s) for k in KINDS for s in SCHEMES_BY_KIND[k]],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_sign_verify_round_trip(kind: str, scheme: SignatureScheme) -> None:
    key = key_of(kind)
    data = b"client_random + server_random + params"
    sig = sign(key, scheme, data)
    verify_signature(key.public_key(), scheme, sig, data)
    verify_signature(key.public_key(), int(scheme), sig, data)
    with pytest.raises(DecryptError):
        verify_signature(key.public_key(), scheme, sig, data + b"x")
    with pytest.raises(DecryptError):
        verify_signature(key.public_key(), scheme, bytes([sig[0] ^ 1]) + sig[1:], data)
    with pytest.raises(DecryptError):
        verify_signature(key.public_key(), scheme, b"", data)
    with pytest.raises(DecryptError):
        verify_signature(key_of(kind, 1).public_key(), scheme, sig, data)


def test_rsa_pss_salt_is_digest_length() -> None:
    # RFC 8446 §4.2.3: MGF1 with the same hash, salt length = digest length.
    key = key_of("rsa2048")
    assert isinstance(key, rsa.RSAPrivateKey)
    sig = sign(key, SignatureScheme.rsa_pss_rsae_sha256, b"data")
    key.public_key().verify(
        sig, b"data", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [
        ("p256", SignatureScheme.ed25519),
        ("p256", SignatureScheme.rsa_pss_rsae_sha256),
        ("ed25519", SignatureScheme.ecdsa_secp256r1_sha256),
        ("rsa2048", SignatureScheme.ecdsa_secp256r1_sha256),
        ("rsa2048", SignatureScheme.ed25519),
    ],
)
def test_mismatched_scheme(kind: str, scheme: SignatureScheme) -> None:
    key = key_of(kind)
    with pytest.raises(IllegalParameter):
        verify_signature(key.public_key(), scheme, b"\x00" * 64, b"data")
    with pytest.raises(UsageError):
        sign(key, scheme, b"data")


def test_unknown_scheme_code() -> None:
    with pytest.raises(IllegalParameter):
        verify_signature(key_of("p256").public_key(), 0x0201, b"sig", b"data")  # ecdsa_sha1
    with pytest.raises(IllegalParameter):
        verify_signature(object(), SignatureScheme.ed25519, b"sig", b"data")


# --- loading and pins ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_load_pem(kind: str) -> None:
    ca, leaf = pki(kind)
    bundle = b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca))
    assert load_certificates(bundle) == [leaf.cert, ca.cert]
    pem = leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    loaded = load_private_key(pem)
    assert loaded.public_key() == leaf.key.public_key()


def test_load_unsupported_key() -> None:
    for kind in ("p521", "rsa1024"):
        pem = key_of(kind).private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        with pytest.raises(ValueError):
            load_private_key(pem)
    with pytest.raises(ValueError):
        load_certificates(b"no certificates here")


def test_spki_sha256() -> None:
    _, leaf = pki("p256")
    spki = leaf.key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki_sha256(leaf.cert) == hashlib.sha256(spki).digest()


def test_pin_only() -> None:
    _, leaf = pki("p256")
    _, other = pki("p384")
    v = ChainVerifier([], pins=[spki_sha256(leaf.cert)])
    assert v.verify([leaf.der], NOW, peer_is_server=True) == leaf.cert
    # Only the pin decides: validity dates do not matter here.
    assert v.verify([leaf.der], NOW + 365 * DAY, peer_is_server=False) == leaf.cert
    with pytest.raises(BadCertificate):
        v.verify([other.der], NOW, peer_is_server=True)


def test_pin_and_ca_must_both_pass() -> None:
    ca, leaf = pki("p256")
    _, leaf2 = pki("p384")
    v = ChainVerifier([ca.cert], pins=[spki_sha256(leaf.cert), spki_sha256(leaf2.cert)])
    assert v.verify([leaf.der], NOW, peer_is_server=True) == leaf.cert
    with pytest.raises((UnknownCa, BadCertificate)):
        v.verify([leaf2.der], NOW, peer_is_server=True)  # pinned, wrong CA
    v2 = ChainVerifier([ca.cert], pins=[spki_sha256(leaf2.cert)])
    with pytest.raises(BadCertificate):
        v2.verify([leaf.der], NOW, peer_is_server=True)  # right CA, not pinned


def test_nothing_configured() -> None:
    _, leaf = pki("p256")
    with pytest.raises(UnknownCa):
        ChainVerifier([]).verify([leaf.der], NOW, peer_is_server=True)


def test_bad_pin_length() -> None:
    with pytest.raises(UsageError):
        ChainVerifier([], pins=[b"short"])


# --- chains ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("peer_is_server", [True, False])
def test_chain_ok(kind: str, peer_is_server: bool) -> None:
    ca, leaf = pki(kind)
    v = ChainVerifier([ca.cert])
    assert v.verify([leaf.der], NOW, peer_is_server=peer_is_server) == leaf.cert
    # The peer may send the root too.
    assert v.verify([leaf.der, ca.der], NOW, peer_is_server=peer_is_server) == leaf.cert
    # A naive datetime is read as UTC.
    assert v.verify([leaf.der], NOW.replace(tzinfo=None), peer_is_server=peer_is_server)


@pytest.mark.parametrize("kind", KINDS)
def test_chain_with_name(kind: str) -> None:
    ca, leaf = pki(kind)
    assert ChainVerifier([ca.cert], server_name="vpn.example.net").verify(
        [leaf.der], NOW, peer_is_server=True
    ) == leaf.cert
    assert ChainVerifier([ca.cert], server_name="192.0.2.7").verify(
        [leaf.der], NOW, peer_is_server=True
    ) == leaf.cert
    for wrong in ("other.example.net", "192.0.2.8", "example.net"):
        with pytest.raises(BadCertificate):
            ChainVerifier([ca.cert], server_name=wrong).verify([leaf.der], NOW,
                                                               peer_is_server=True)
    # The server name is not applied to client certificates.
    assert ChainVerifier([ca.cert], server_name="other.example.net").verify(
        [leaf.der], NOW, peer_is_server=False
    ) == leaf.cert


@pytest.mark.parametrize("kind", ["p256", "ed25519"])
def test_wildcard_name(kind: str) -> None:
    ca, _ = pki(kind)
    leaf = issue("wild", key_of(kind, 2), ca, san=[x509.DNSName("*.example.net")])
    v = ChainVerifier([ca.cert], server_name="vpn.example.net")
    assert v.verify([leaf.der], NOW, peer_is_server=True) == leaf.cert
    for name in ("a.b.example.net", "example.net"):
        with pytest.raises(BadCertificate):
            ChainVerifier([ca.cert], server_name=name).verify([leaf.der], NOW,
                                                              peer_is_server=True)


@pytest.mark.parametrize("kind", KINDS)
def test_server_without_san_and_no_name_configured(kind: str) -> None:
    ca, _ = pki(kind)
    leaf = issue("bare server", key_of(kind, 2), ca)
    assert ChainVerifier([ca.cert]).verify([leaf.der], NOW, peer_is_server=True) == leaf.cert
    with pytest.raises(BadCertificate):
        ChainVerifier([ca.cert], server_name="vpn.example.net").verify(
            [leaf.der], NOW, peer_is_server=True
        )


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_ca(kind: str) -> None:
    _, leaf = pki(kind)
    other_ca = issue("unrelated CA", key_of(kind, 3), ca=True)
    with pytest.raises(UnknownCa):
        ChainVerifier([other_ca.cert]).verify([leaf.der], NOW, peer_is_server=True)
    # Same CA name, different key (e.g. a regenerated CA).
    ca, _ = pki(kind)
    impostor = issue(ca.cert.subject.rfc4514_string()[3:], key_of(kind, 3), ca=True)
    with pytest.raises((UnknownCa, BadCertificate)):
        ChainVerifier([impostor.cert]).verify([leaf.der], NOW, peer_is_server=False)


@pytest.mark.parametrize("kind", KINDS)
def test_expired_and_not_yet_valid(kind: str) -> None:
    ca, leaf = pki(kind)
    v = ChainVerifier([ca.cert])
    with pytest.raises(CertificateExpired):
        v.verify([leaf.der], NOW + 31 * DAY, peer_is_server=True)
    with pytest.raises(CertificateExpired):
        v.verify([leaf.der], NOW - 31 * DAY, peer_is_server=False)
    old_ca = issue("old CA", key_of(kind, 3), ca=True, not_after=NOW - DAY)
    leaf2 = issue("leaf", key_of(kind, 1), old_ca)
    with pytest.raises(CertificateExpired):
        ChainVerifier([old_ca.cert]).verify([leaf2.der], NOW, peer_is_server=True)


@pytest.mark.parametrize("kind", KINDS)
def test_intermediate(kind: str) -> None:
    ca, _ = pki(kind)
    inter = issue("intermediate", key_of(kind, 4), ca, ca=True, path_length=0)
    leaf = issue("leaf", key_of(kind, 5), inter)
    v = ChainVerifier([ca.cert])
    assert v.verify([leaf.der, inter.der], NOW, peer_is_server=True) == leaf.cert
    with pytest.raises((UnknownCa, BadCertificate)):
        v.verify([leaf.der], NOW, peer_is_server=True)  # intermediate missing
    # pathLenConstraint 0 on the intermediate forbids another CA below it.
    sub = issue("sub", key_of(kind, 6), inter, ca=True)
    leaf3 = issue("leaf3", key_of(kind, 7), sub)
    with pytest.raises((BadCertificate, UnknownCa)):
        v.verify([leaf3.der, sub.der, inter.der], NOW, peer_is_server=True)


@pytest.mark.parametrize("kind", KINDS)
def test_leaf_cannot_issue(kind: str) -> None:
    # basicConstraints cA=FALSE: a valid leaf must not be able to mint certificates.
    ca, leaf = pki(kind)
    forged = issue("forged", key_of(kind, 6), leaf)
    with pytest.raises((BadCertificate, UnknownCa)):
        ChainVerifier([ca.cert]).verify([forged.der, leaf.der], NOW, peer_is_server=True)


@pytest.mark.parametrize("kind", KINDS)
def test_eku(kind: str) -> None:
    ca, _ = pki(kind)
    v = ChainVerifier([ca.cert])
    server = issue("s", key_of(kind, 2), ca, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    client = issue("c", key_of(kind, 3), ca, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    both = issue("b", key_of(kind, 4), ca,
                 eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    assert v.verify([server.der], NOW, peer_is_server=True) == server.cert
    assert v.verify([client.der], NOW, peer_is_server=False) == client.cert
    assert v.verify([both.der], NOW, peer_is_server=True) == both.cert
    assert v.verify([both.der], NOW, peer_is_server=False) == both.cert
    with pytest.raises(BadCertificate):
        v.verify([client.der], NOW, peer_is_server=True)
    with pytest.raises(BadCertificate):
        v.verify([server.der], NOW, peer_is_server=False)


@pytest.mark.parametrize("kind", KINDS)
def test_openssl_style_ca_without_key_usage(kind: str) -> None:
    # `openssl req -x509` CAs often lack keyUsage and may carry a non-critical basicConstraints.
    ca = issue("plain CA", key_of(kind, 3), ca=True, key_usage=False, bc_critical=False)
    leaf = issue("client", key_of(kind, 4), ca, key_usage=False)
    assert ChainVerifier([ca.cert]).verify([leaf.der], NOW, peer_is_server=False) == leaf.cert


@pytest.mark.parametrize("kind", KINDS)
def test_leaf_key_usage_needs_digital_signature(kind: str) -> None:
    ca, _ = pki(kind)

    def ku_encipher_only(b: x509.CertificateBuilder) -> x509.CertificateBuilder:
        return b.add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )

    leaf = issue("kx only", key_of(kind, 2), ca, key_usage=False, extra=ku_encipher_only)
    with pytest.raises(BadCertificate):
        ChainVerifier([ca.cert]).verify([leaf.der], NOW, peer_is_server=True)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_critical_extension(kind: str) -> None:
    ca, _ = pki(kind)

    def odd(b: x509.CertificateBuilder) -> x509.CertificateBuilder:
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
        return b.add_extension(ext, critical=True)

    leaf = issue("odd", key_of(kind, 2), ca, extra=odd)
    with pytest.raises(BadCertificate):
        ChainVerifier([ca.cert]).verify([leaf.der], NOW, peer_is_server=True)


def test_unsupported_leaf_keys() -> None:
    ca, _ = pki("p256")
    for kind in ("p521", "rsa1024"):
        leaf = issue(kind, key_of(kind), ca)
        with pytest.raises(UnsupportedCertificate):
            ChainVerifier([ca.cert]).verify([leaf.der], NOW, peer_is_server=True)


def test_ed25519_leaf_under_ecdsa_ca() -> None:
    ca, _ = pki("p256")
    leaf = issue("ed leaf", key_of("ed25519", 2), ca)
    assert ChainVerifier([ca.cert]).verify([leaf.der], NOW, peer_is_server=True) == leaf.cert


def test_ecdsa_leaf_under_ed25519_ca() -> None:
    ca, _ = pki("ed25519")
    leaf = issue("ec leaf", key_of("p256", 2), ca, san=[x509.DNSName("vpn.example.net")])
    v = ChainVerifier([ca.cert], server_name="vpn.example.net")
    assert v.verify([leaf.der], NOW, peer_is_server=True) == leaf.cert


def test_garbage_chains() -> None:
    ca, leaf = pki("p256")
    v = ChainVerifier([ca.cert])
    with pytest.raises(BadCertificate):
        v.verify([], NOW, peer_is_server=True)
    with pytest.raises(BadCertificate):
        v.verify([b"\x30\x03\x02\x01\x00"], NOW, peer_is_server=True)
    with pytest.raises(BadCertificate):
        v.verify([leaf.der, b"garbage"], NOW, peer_is_server=True)
    with pytest.raises(BadCertificate):
        v.verify([leaf.der] * 11, NOW, peer_is_server=True)


def test_bad_server_name() -> None:
    ca, _ = pki("p256")
    with pytest.raises(UsageError):
        ChainVerifier([ca.cert], server_name="not a dns name!")


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), pos=st.integers(0, 10_000), bit=st.integers(0, 7),
       server=st.booleans(), extra=st.binary(max_size=40))
def test_mutated_chains_only_raise_alerts(kind: str, pos: int, bit: int, server: bool,
                                          extra: bytes) -> None:
    ca, leaf = pki(kind)
    der = bytearray(leaf.der)
    der[pos % len(der)] ^= 1 << bit
    v = ChainVerifier([ca.cert], server_name="vpn.example.net")
    for chain in ([bytes(der)], [leaf.der, bytes(der)], [extra], [bytes(der) + extra]):
        with contextlib.suppress(Alert):
            v.verify(chain, NOW, peer_is_server=server)
