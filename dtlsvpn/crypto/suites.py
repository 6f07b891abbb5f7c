"""The cipher suites dtlsvpn speaks, as one table.

Purpose: everything the record layer and the handshake need to know about a
suite (key exchange, AEAD, key and IV sizes, PRF hash, per-record overhead,
and the names other stacks use for it) lives in :data:`SUITES`.

Invariants:
- AEAD suites only (protocol.md): no MAC keys, no CBC, no NULL cipher.
- AES-GCM suites (RFC 5288 §3): 4-byte implicit salt from the key block plus an
  8-byte explicit nonce carried in every record; tag 16 bytes.
- ChaCha20-Poly1305 suites (RFC 7905 §2): 12-byte IV from the key block, no
  explicit nonce; tag 16 bytes.
- The PRF hash is SHA-256 unless the suite name ends in _SHA384 (RFC 5246 §5,
  RFC 5289 §3.2, RFC 7905 §2).
- :data:`SUITES` iterates in server preference order (protocol.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dtlsvpn.wire.constants import CipherSuite, KeyExchangeKind


class AeadKind(enum.Enum):
    """The record protection algorithm."""

    AES_GCM = "AES_GCM"  # RFC 5288
    CHACHA20_POLY1305 = "CHACHA20_POLY1305"  # RFC 7905


@dataclass(frozen=True, slots=True)
class SuiteInfo:
    """One row of the suite table."""

    code: CipherSuite
    name: str
    openssl_name: str
    gnutls_priority: str
    kx: KeyExchangeKind
    aead: AeadKind
    key_len: int
    fixed_iv_len: int
    record_iv_len: int
    tag_len: int = 16
    prf_hash: str = "sha256"

    @property
    def overhead(self) -> int:
        """Bytes an encrypted record adds to its plaintext (explicit nonce + tag)."""
        return self.record_iv_len + self.tag_len

    @property
    def uses_certificate(self) -> bool:
        return self.kx in (KeyExchangeKind.ECDHE_ECDSA, KeyExchangeKind.ECDHE_RSA)

    @property
    def uses_psk(self) -> bool:
        return self.kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK)

    @property
    def uses_ecdhe(self) -> bool:
        return self.kx is not KeyExchangeKind.PSK


def _gcm(
    code: CipherSuite, openssl: str, gnutls: str, kx: KeyExchangeKind, key_len: int, prf: str
) -> SuiteInfo:
    # RFC 5288 §3: salt (fixed_iv) is 4 bytes, nonce_explicit 8 bytes.
    return SuiteInfo(code, code.name, openssl, gnutls, kx, AeadKind.AES_GCM,
                     key_len, 4, 8, 16, prf)


def _chacha(code: CipherSuite, openssl: str, gnutls: str, kx: KeyExchangeKind) -> SuiteInfo:
    # RFC 7905 §2: 32-byte key, 12-byte fixed_iv, no explicit nonce, SHA-256 PRF.
    return SuiteInfo(code, code.name, openssl, gnutls, kx, AeadKind.CHACHA20_POLY1305,
                     32, 12, 0, 16, "sha256")


_CS = CipherSuite
_K = KeyExchangeKind

_TABLE: tuple[SuiteInfo, ...] = (
    _gcm(_CS.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ECDHE-ECDSA-AES128-GCM-SHA256",
         "+ECDHE-ECDSA:+AES-128-GCM:+AEAD", _K.ECDHE_ECDSA, 16, "sha256"),
    _chacha(_CS.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-ECDSA-CHACHA20-POLY1305",
            "+ECDHE-ECDSA:+CHACHA20-POLY1305:+AEAD", _K.ECDHE_ECDSA),
    _gcm(_CS.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "ECDHE-ECDSA-AES256-GCM-SHA384",
         "+ECDHE-ECDSA:+AES-256-GCM:+AEAD", _K.ECDHE_ECDSA, 32, "sha384"),
    _gcm(_CS.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "ECDHE-RSA-AES128-GCM-SHA256",
         "+ECDHE-RSA:+AES-128-GCM:+AEAD", _K.ECDHE_RSA, 16, "sha256"),
    _chacha(_CS.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-RSA-CHACHA20-POLY1305",
            "+ECDHE-RSA:+CHACHA20-POLY1305:+AEAD", _K.ECDHE_RSA),
    _gcm(_CS.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "ECDHE-RSA-AES256-GCM-SHA384",
         "+ECDHE-RSA:+AES-256-GCM:+AEAD", _K.ECDHE_RSA, 32, "sha384"),
    _chacha(_CS.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-PSK-CHACHA20-POLY1305",
            "+ECDHE-PSK:+CHACHA20-POLY1305:+AEAD", _K.ECDHE_PSK),
    _gcm(_CS.TLS_PSK_WITH_AES_128_GCM_SHA256, "PSK-AES128-GCM-SHA256",
         "+PSK:+AES-128-GCM:+AEAD", _K.PSK, 16, "sha256"),
    _chacha(_CS.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, "PSK-CHACHA20-POLY1305",
            "+PSK:+CHACHA20-POLY1305:+AEAD", _K.PSK),
)

SUITES: dict[int, SuiteInfo] = {info.code: info for info in _TABLE}
"""code → SuiteInfo, iterating in server preference order (protocol.md)."""

_BY_NAME: dict[str, SuiteInfo] = {}
for _info in _TABLE:
    _BY_NAME[_info.name.upper()] = _info
    _BY_NAME[_info.openssl_name.upper()] = _info
del _info

DEFAULT_CERT_SUITES: tuple[CipherSuite, ...] = tuple(
    info.code for info in _TABLE if info.uses_certificate
)
# protocol.md: ECDHE_PSK is the PSK default; PSK without forward secrecy is off
# unless configured explicitly.
DEFAULT_PSK_SUITES: tuple[CipherSuite, ...] = (_CS.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,)


def suite_by_name(name: str) -> SuiteInfo:
    """The suite called ``name`` (IANA or OpenSSL spelling, any case); KeyError otherwise."""
    try:
        return _BY_NAME[name.strip().upper()]
    except KeyError:
        raise KeyError(f"unknown cipher suite {name!r}") from None
