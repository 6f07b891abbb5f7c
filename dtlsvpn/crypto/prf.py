"""The TLS 1.2 key schedule: PRF, master secrets, key block, Finished.

Purpose: turn a premaster secret into record keys and Finished values.

Invariants:
- One PRF for DTLS 1.2: P_<hash> over HMAC with the suite's PRF hash
  (RFC 5246 §5; RFC 6347 §4.2 changes nothing here). SHA-256 unless the suite
  says SHA-384 (RFC 5289 §3.2).
- The master secret is always 48 bytes (RFC 5246 §8.1); with the
  extended_master_secret extension it is bound to the session hash instead of
  the randoms (RFC 7627 §4).
- The key block of an AEAD suite holds no MAC keys: client key, server key,
  client IV, server IV, in that order (RFC 5246 §6.3, RFC 5288 §3, RFC 7905 §2).
- verify_data is 12 bytes (RFC 5246 §7.4.9).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.errors import UsageError

MASTER_SECRET_LEN = 48  # RFC 5246 §8.1
VERIFY_DATA_LEN = 12  # RFC 5246 §7.4.9
RANDOM_LEN = 32  # RFC 5246 §7.4.1.2

_HASHES = ("sha256", "sha384")


def _check_hash(hash_name: str) -> None:
    if hash_name not in _HASHES:
        raise UsageError(f"unsupported PRF hash {hash_name!r}")


def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """PRF(secret, label, seed) = P_<hash>(secret, label + seed), ``length`` bytes.

    RFC 5246 §5: A(0) = seed, A(i) = HMAC(secret, A(i-1)),
    P_hash = HMAC(secret, A(1) + seed) + HMAC(secret, A(2) + seed) + ...
    """
    _check_hash(hash_name)
    if length < 0:
        raise UsageError("negative PRF length")
    full_seed = label + seed
    out = bytearray()
    a = full_seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + full_seed, hash_name)
    return bytes(out[:length])


def master_secret(
    hash_name: str, pre_master: bytes, client_random: bytes, server_random: bytes
) -> bytes:
    """RFC 5246 §8.1: PRF(pre_master, "master secret", ClientHello.random + ServerHello.random)."""
    return prf(hash_name, pre_master, b"master secret", client_random + server_random,
               MASTER_SECRET_LEN)


def extended_master_secret(hash_name: str, pre_master: bytes, session_hash: bytes) -> bytes:
    """RFC 7627 §4: PRF(pre_master, "extended master secret", session_hash)[0..47]."""
    return prf(hash_name, pre_master, b"extended master secret", session_hash, MASTER_SECRET_LEN)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """The record keys of one handshake (AEAD: no MAC keys)."""

    client_write_key: bytes
    server_write_key: bytes
    client_write_iv: bytes
    server_write_iv: bytes


def key_block(
    suite: SuiteInfo, master: bytes, client_random: bytes, server_random: bytes
) -> KeyBlock:
    """RFC 5246 §6.3: PRF(master, "key expansion", server_random + client_random), split.

    Note the randoms are in the opposite order from the master secret's seed.
    """
    k, v = suite.key_len, suite.fixed_iv_len
    block = prf(suite.prf_hash, master, b"key expansion", server_random + client_random,
                2 * k + 2 * v)
    return KeyBlock(
        client_write_key=block[0:k],
        server_write_key=block[k:2 * k],
        client_write_iv=block[2 * k:2 * k + v],
        server_write_iv=block[2 * k + v:2 * k + 2 * v],
    )


def verify_data(hash_name: str, master: bytes, label: bytes, handshake_hash: bytes) -> bytes:
    """RFC 5246 §7.4.9: PRF(master, finished_label, Hash(handshake_messages))[0..11].

    ``label`` is b"client finished" or b"server finished".
    """
    return prf(hash_name, master, label, handshake_hash, VERIFY_DATA_LEN)


def transcript_hash(hash_name: str, data: bytes) -> bytes:
    """Hash(handshake_messages) with the PRF hash (RFC 5246 §7.4.9, RFC 7627 §3)."""
    _check_hash(hash_name)
    return hashlib.new(hash_name, data).digest()
