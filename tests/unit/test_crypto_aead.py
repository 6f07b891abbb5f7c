"""dtlsvpn.crypto.aead: RFC known answers, nonce/AAD construction, tamper and fuzz."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.suites import SUITES, AeadKind, SuiteInfo
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import CipherSuite

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "crypto_aead.json").read_text())
CHACHA = SUITES[CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]
GCM128 = SUITES[CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
GCM256 = SUITES[CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
ALL = list(SUITES.values())


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def aad13(epoch_seq: int, content_type: int, length: int) -> bytes:
    """RFC 5246 §6.2.3.3 additional_data with the DTLS epoch||seq (RFC 6347 §4.1.2.1)."""
    return epoch_seq.to_bytes(8, "big") + bytes([content_type]) + b"\xfe\xfd" + length.to_bytes(2, "big")


def make(suite: SuiteInfo) -> RecordProtection:
    return RecordProtection(suite, os.urandom(suite.key_len), os.urandom(suite.fixed_iv_len))


# --- known answers from outside the project ------------------------------------


def test_rfc8439_aead_vector_through_record_protection() -> None:
    vec = VECTORS["chacha20_poly1305"][0]
    rp = RecordProtection(CHACHA, h(vec["key"]), h(vec["nonce"]))
    out = rp.aead.encrypt(h(vec["nonce"]), h(vec["plaintext"]), h(vec["aad"]))
    assert out == h(vec["ciphertext"] + vec["tag"])
    assert rp.aead.decrypt(h(vec["nonce"]), out, h(vec["aad"])) == h(vec["plaintext"])


def test_b5_rfc7905_nonce_is_iv_xor_padded_sequence() -> None:
    vec = VECTORS["chacha20_poly1305"][0]
    key, nonce, pt = h(vec["key"]), h(vec["nonce"]), h(vec["plaintext"])
    epoch_seq = (3 << 48) | 0x0000_1234_5678
    # RFC 7905 §2: nonce = client_write_IV XOR (0x00000000 || 64-bit seq).
    padded = bytes(4) + epoch_seq.to_bytes(8, "big")
    iv = bytes(a ^ b for a, b in zip(nonce, padded, strict=True))
    rp = RecordProtection(CHACHA, key, iv)
    fragment = rp.seal(epoch_seq, 23, pt)
    expected = ChaCha20Poly1305(key).encrypt(nonce, pt, aad13(epoch_seq, 23, len(pt)))
    assert fragment == expected  # no explicit nonce in a ChaCha20 record
    assert rp.open(epoch_seq, 23, fragment) == pt
    # With epoch_seq 0 the nonce is the IV itself.
    rp0 = RecordProtection(CHACHA, key, nonce)
    assert rp0.seal(0, 23, pt) == ChaCha20Poly1305(key).encrypt(nonce, pt, aad13(0, 23, len(pt)))


@pytest.mark.parametrize("vec", VECTORS["aes_gcm"], ids=lambda v: v["source"].split(",")[-1])
def test_gcm_spec_vectors_through_record_protection(vec: dict[str, str]) -> None:
    suite = GCM128 if len(h(vec["key"])) == 16 else GCM256
    nonce = h(vec["nonce"])
    rp = RecordProtection(suite, h(vec["key"]), nonce[:4])
    aad = h(vec["aad"]) or None
    out = rp.aead.encrypt(nonce, h(vec["plaintext"]), aad)
    assert out == h(vec["ciphertext"] + vec["tag"])


@pytest.mark.parametrize("vec", VECTORS["aes_gcm"][1:], ids=["case4", "case16"])
def test_b5_gcm_nonce_is_salt_plus_explicit(vec: dict[str, str]) -> None:
    # RFC 5288 §3: nonce = salt (4, from the key block) || nonce_explicit (8, in the record).
    suite = GCM128 if len(h(vec["key"])) == 16 else GCM256
    nonce, key, pt = h(vec["nonce"]), h(vec["key"]), h(vec["plaintext"])
    epoch_seq = int.from_bytes(nonce[4:], "big")  # 0xfacedbaddecaf888
    rp = RecordProtection(suite, key, nonce[:4])
    fragment = rp.seal(epoch_seq, 22, pt)
    assert fragment[:8] == nonce[4:]
    assert fragment[8:] == AESGCM(key).encrypt(nonce, pt, aad13(epoch_seq, 22, len(pt)))
    # Same nonce and plaintext as the spec, different AAD: the ciphertext matches
    # the published one and only the tag differs.
    assert fragment[8:-16] == h(vec["ciphertext"])
    assert rp.open(epoch_seq, 22, fragment) == pt


def test_gcm_open_uses_the_explicit_nonce_sent() -> None:
    key, salt = os.urandom(16), os.urandom(4)
    rp = RecordProtection(GCM128, key, salt)
    explicit = os.urandom(8)  # a peer may use any unique explicit nonce
    body = AESGCM(key).encrypt(salt + explicit, b"payload", aad13(5, 23, 7))
    assert rp.open(5, 23, explicit + body) == b"payload"


# --- round trips and tampering ------------------------------------------------------


@pytest.mark.parametrize("suite", ALL, ids=lambda s: s.name)
def test_round_trip_and_overhead(suite: SuiteInfo) -> None:
    rp = make(suite)
    assert rp.overhead == suite.overhead
    for pt in (b"", b"x", os.urandom(1400)):
        es = (1 << 48) | 77
        frag = rp.seal(es, 23, pt)
        assert len(frag) == len(pt) + rp.overhead
        assert rp.open(es, 23, frag) == pt


@pytest.mark.parametrize("suite", ALL, ids=lambda s: s.name)
def test_tampering_fails(suite: SuiteInfo) -> None:
    rp = make(suite)
    es, pt = (2 << 48) | 9, b"inner IP packet"
    frag = rp.seal(es, 23, pt)
    for i in range(len(frag)):  # every byte: explicit nonce, ciphertext, tag
        bad = bytearray(frag)
        bad[i] ^= 0x01
        assert rp.open(es, 23, bytes(bad)) is None
    assert rp.open(es, 21, frag) is None  # type is authenticated
    assert rp.open(es + 1, 23, frag) is None  # sequence number is authenticated
    assert rp.open(es ^ (1 << 48), 23, frag) is None  # epoch is authenticated
    for n in range(len(frag)):
        assert rp.open(es, 23, frag[:n]) is None
    assert rp.open(es, 23, frag + b"\x00") is None
    other = make(suite)
    assert other.open(es, 23, frag) is None


def test_both_directions_differ() -> None:
    key, iv = os.urandom(32), os.urandom(12)
    a = RecordProtection(CHACHA, key, iv)
    b = RecordProtection(CHACHA, key, iv)
    assert a.seal(1, 23, b"p") == b.seal(1, 23, b"p")
    assert a.seal(1, 23, b"p") != a.seal(2, 23, b"p")


def test_bad_key_or_iv_length() -> None:
    with pytest.raises(UsageError):
        RecordProtection(GCM128, bytes(32), bytes(4))
    with pytest.raises(UsageError):
        RecordProtection(CHACHA, bytes(32), bytes(4))


def test_slots() -> None:
    rp = make(GCM128)
    with pytest.raises(AttributeError):
        rp.extra = 1  # type: ignore[attr-defined]


# --- properties ------------------------------------------------------------------------


@given(
    suite=st.sampled_from(ALL),
    epoch_seq=st.integers(-(2**70), 2**70),
    content_type=st.integers(0, 255),
    fragment=st.binary(max_size=200) | st.binary(min_size=2**16, max_size=2**16 + 40),
)
def test_open_never_raises(suite: SuiteInfo, epoch_seq: int, content_type: int,
                           fragment: bytes) -> None:
    rp = RecordProtection(suite, bytes(suite.key_len), bytes(suite.fixed_iv_len))
    assert rp.open(epoch_seq, content_type, fragment) is None


@given(
    suite=st.sampled_from(ALL),
    epoch=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**48 - 1),
    content_type=st.sampled_from([21, 22, 23, 24]),
    pt=st.binary(max_size=300),
)
def test_round_trip_property(suite: SuiteInfo, epoch: int, seq: int, content_type: int,
                             pt: bytes) -> None:
    rp = RecordProtection(suite, b"k" * suite.key_len, b"i" * suite.fixed_iv_len)
    es = epoch << 48 | seq
    frag = rp.seal(es, content_type, pt)
    assert rp.open(es, content_type, frag) == pt
    if suite.aead is AeadKind.AES_GCM:
        assert frag[:8] == es.to_bytes(8, "big")
