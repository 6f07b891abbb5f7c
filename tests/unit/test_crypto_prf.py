"""dtlsvpn.crypto.prf: published PRF vectors and the key schedule's shape."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.crypto import prf as P
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.errors import UsageError

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "crypto_tls12_prf.json").read_text())


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["hash"])
def test_published_prf_vectors(vec: dict[str, str]) -> None:
    out = bytes.fromhex(vec["output"])
    got = P.prf(vec["hash"], bytes.fromhex(vec["secret"]), vec["label"].encode(),
                bytes.fromhex(vec["seed"]), len(out))
    assert got == out


def test_sha256_vector_begins_as_published() -> None:
    # The widely quoted first 16 bytes of the SHA-256 vector.
    vec = VECTORS["vectors"][0]
    assert vec["output"].startswith("e3f229ba727be17b8d122620557cd453")
    assert len(bytes.fromhex(vec["output"])) == 100


@given(
    secret=st.binary(max_size=64),
    seed=st.binary(max_size=80),
    n=st.integers(0, 200),
    m=st.integers(0, 200),
    hash_name=st.sampled_from(["sha256", "sha384"]),
)
def test_output_is_a_stream(secret: bytes, seed: bytes, n: int, m: int, hash_name: str) -> None:
    a = P.prf(hash_name, secret, b"label", seed, n)
    b = P.prf(hash_name, secret, b"label", seed, m)
    assert len(a) == n and len(b) == m
    assert a[: min(n, m)] == b[: min(n, m)]


def test_master_secrets() -> None:
    pre, cr, sr = b"\x03\x03" + bytes(46), bytes(range(32)), bytes(range(32, 64))
    ms = P.master_secret("sha256", pre, cr, sr)
    assert ms == P.prf("sha256", pre, b"master secret", cr + sr, 48)
    session_hash = hashlib.sha384(b"transcript").digest()
    ems = P.extended_master_secret("sha384", pre, session_hash)
    assert ems == P.prf("sha384", pre, b"extended master secret", session_hash, 48)
    assert len(ms) == len(ems) == 48


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=lambda s: s.name)
def test_key_block_split(suite) -> None:
    master, cr, sr = bytes(48), b"c" * 32, b"s" * 32
    kb = P.key_block(suite, master, cr, sr)
    k, v = suite.key_len, suite.fixed_iv_len
    # RFC 5246 §6.3: seed is server_random + client_random; AEAD has no MAC keys.
    raw = P.prf(suite.prf_hash, master, b"key expansion", sr + cr, 2 * k + 2 * v)
    assert kb.client_write_key + kb.server_write_key + kb.client_write_iv + kb.server_write_iv == raw
    assert (len(kb.client_write_key), len(kb.server_write_iv)) == (k, v)


def test_verify_data_and_transcript() -> None:
    th = P.transcript_hash("sha256", b"messages")
    assert th == hashlib.sha256(b"messages").digest()
    vd = P.verify_data("sha256", bytes(48), b"client finished", th)
    assert vd == P.prf("sha256", bytes(48), b"client finished", th, 12)
    assert len(vd) == 12
    assert vd != P.verify_data("sha256", bytes(48), b"server finished", th)
    assert len(P.transcript_hash("sha384", b"")) == 48


def test_unknown_hash_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        P.prf("md5", b"k", b"l", b"s", 10)
    with pytest.raises(UsageError):
        P.transcript_hash("sha1", b"")
