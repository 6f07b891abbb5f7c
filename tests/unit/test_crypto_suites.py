"""dtlsvpn.crypto.suites: the suite table against protocol.md and the RFCs."""

from __future__ import annotations

import pytest

from dtlsvpn.crypto.suites import (
    DEFAULT_CERT_SUITES,
    DEFAULT_PSK_SUITES,
    SUITES,
    AeadKind,
    KeyExchangeKind,
    suite_by_name,
)
from dtlsvpn.wire.constants import CipherSuite

# protocol.md, "Cipher suites, in server preference order".
PREFERENCE = [0xC02B, 0xCCA9, 0xC02C, 0xC02F, 0xCCA8, 0xC030, 0xCCAC, 0x00A8, 0xCCAB]


def test_table_order_and_codes() -> None:
    assert list(SUITES) == PREFERENCE
    for code, info in SUITES.items():
        assert info.code == code
        assert info.name == CipherSuite(code).name


@pytest.mark.parametrize("info", list(SUITES.values()), ids=lambda i: i.name)
def test_sizes_follow_the_rfcs(info) -> None:
    if info.aead is AeadKind.AES_GCM:
        # RFC 5288 §3: 4-byte salt, 8-byte explicit nonce.
        assert (info.fixed_iv_len, info.record_iv_len) == (4, 8)
        assert info.key_len == (16 if "AES_128" in info.name else 32)
        assert info.overhead == 24
    else:
        # RFC 7905 §2: 32-byte key, 12-byte IV, no explicit nonce.
        assert (info.key_len, info.fixed_iv_len, info.record_iv_len) == (32, 12, 0)
        assert info.overhead == 16
    assert info.tag_len == 16
    assert info.prf_hash == ("sha384" if info.name.endswith("_SHA384") else "sha256")


def test_kinds() -> None:
    for info in SUITES.values():
        assert info.uses_certificate == ("ECDSA" in info.name or "_RSA_" in info.name)
        assert info.uses_psk == ("PSK" in info.name)
        assert info.uses_ecdhe == info.name.startswith("TLS_ECDHE_")
        assert info.uses_certificate != info.uses_psk
    assert SUITES[0xCCAC].kx is KeyExchangeKind.ECDHE_PSK
    assert SUITES[0x00A8].kx is KeyExchangeKind.PSK


def test_suite_by_name() -> None:
    info = SUITES[0xC02B]
    assert suite_by_name("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256") is info
    assert suite_by_name("tls_ecdhe_ecdsa_with_aes_128_gcm_sha256") is info
    assert suite_by_name("ECDHE-ECDSA-AES128-GCM-SHA256") is info
    assert suite_by_name("ecdhe-psk-chacha20-poly1305") is SUITES[0xCCAC]
    assert suite_by_name("PSK-AES128-GCM-SHA256") is SUITES[0x00A8]
    with pytest.raises(KeyError):
        suite_by_name("TLS_RSA_WITH_AES_128_CBC_SHA")
    with pytest.raises(KeyError):
        suite_by_name("TLS_EMPTY_RENEGOTIATION_INFO_SCSV")


def test_openssl_names_unique() -> None:
    names = [i.openssl_name for i in SUITES.values()]
    assert len(set(names)) == len(names)
    assert all(i.gnutls_priority.startswith("+") for i in SUITES.values())


def test_defaults() -> None:
    assert [int(c) for c in DEFAULT_CERT_SUITES] == PREFERENCE[:6]
    assert all(SUITES[c].uses_certificate for c in DEFAULT_CERT_SUITES)
    # protocol.md: ECDHE_PSK is the PSK default, plain PSK only when configured.
    assert DEFAULT_PSK_SUITES == (CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,)
