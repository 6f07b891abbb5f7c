"""Our private keys and the handshake signatures (ServerKeyExchange, CertificateVerify).

- Keys: ECDSA P-256/P-384, Ed25519, RSA >= 2048 bits (protocol.md).
- Signature schemes use the RFC 8446 §4.2.3 code points, which TLS 1.2 reads as (hash,
  signature) pairs (RFC 5246 §7.4.1.4.1). In TLS 1.2 an ECDSA scheme is not bound to a
  curve, so either ECDSA scheme fits either curve. RSA-PSS uses MGF1 with the same hash
  and a salt as long as the hash (RFC 8446 §4.2.3). A scheme that does not fit the key is
  illegal_parameter; a signature that does not verify is decrypt_error (RFC 5246 §7.2.2).

(Split out of ``certs.py``, which re-exports these names.)
"""

from __future__ import annotations

from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from dtlsvpn.errors import DecryptError, IllegalParameter, UsageError
from dtlsvpn.wire.constants import SignatureScheme

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS = 2048
CURVES = (ec.SECP256R1, ec.SECP384R1)
_S = SignatureScheme
_Hash: TypeAlias = type[hashes.SHA256] | type[hashes.SHA384]
_ECDSA: dict[int, _Hash] = {
    _S.ecdsa_secp256r1_sha256: hashes.SHA256, _S.ecdsa_secp384r1_sha384: hashes.SHA384,
}
_PSS: dict[int, _Hash] = {
    _S.rsa_pss_rsae_sha256: hashes.SHA256, _S.rsa_pss_rsae_sha384: hashes.SHA384,
}
_PKCS1: dict[int, _Hash] = {
    _S.rsa_pkcs1_sha256: hashes.SHA256, _S.rsa_pkcs1_sha384: hashes.SHA384,
}

def load_private_key(pem: bytes) -> PrivateKey:
    """An unencrypted PEM private key of a supported type (ValueError otherwise)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, CURVES):
        return key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError("private key must be ECDSA P-256/P-384, Ed25519 or RSA >= 2048 bits")

# --- signature schemes ---------------------------------------------------------


def schemes_for_key(key: PrivateKey | PublicKey) -> list[SignatureScheme]:
    """The schemes ``key`` can sign or verify with, most preferred first."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return [_S.ecdsa_secp256r1_sha256, _S.ecdsa_secp384r1_sha384]
        if isinstance(key.curve, ec.SECP384R1):
            return [_S.ecdsa_secp384r1_sha384, _S.ecdsa_secp256r1_sha256]
        return []
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return []
        return [_S.rsa_pss_rsae_sha256, _S.rsa_pss_rsae_sha384,
                _S.rsa_pkcs1_sha256, _S.rsa_pkcs1_sha384]
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return [_S.ed25519]
    return []


def _pss(hash_cls: _Hash) -> padding.PSS:
    # RFC 8446 §4.2.3: MGF1 with the signature's hash, salt length = digest length.
    h = hash_cls()
    return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)


def sign(key: PrivateKey, scheme: SignatureScheme, data: bytes) -> bytes:
    """Sign ``data`` with ``scheme`` (UsageError if the scheme does not fit the key)."""
    if scheme not in schemes_for_key(key):
        raise UsageError(f"signature scheme {scheme!r} does not fit a {type(key).__name__}")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_ECDSA[scheme]()))
    if isinstance(key, rsa.RSAPrivateKey):
        if scheme in _PSS:
            return key.sign(data, _pss(_PSS[scheme]), _PSS[scheme]())
        return key.sign(data, padding.PKCS1v15(), _PKCS1[scheme]())
    return key.sign(data)


def verify_signature(
    public_key: object, scheme: int, signature: bytes, data: bytes
) -> None:
    """Check a handshake signature made by the peer.

    Raises IllegalParameter when ``scheme`` is unknown or does not fit
    ``public_key``, DecryptError when the signature does not verify
    (RFC 5246 §7.2.2).
    """
    try:
        named = SignatureScheme(scheme)
    except ValueError:
        raise IllegalParameter(f"unknown signature scheme 0x{scheme:04x}") from None
    if not isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ) or named not in schemes_for_key(public_key):
        raise IllegalParameter(
            f"signature scheme {named.name} does not fit a {type(public_key).__name__}"
        )
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_ECDSA[named]()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            if named in _PSS:
                public_key.verify(signature, data, _pss(_PSS[named]), _PSS[named]())
            else:
                public_key.verify(signature, data, padding.PKCS1v15(), _PKCS1[named]())
        else:
            public_key.verify(signature, data)
    except (InvalidSignature, ValueError):
        raise DecryptError(f"{named.name} signature does not verify") from None
