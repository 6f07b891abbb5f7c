"""Credential loading: certificates, private keys, PSK files, and their consistency.

Purpose: read the files a configuration names (``Certificate``, ``PrivateKey``, ``CA``,
``PSKFile``) at load time, so that a config that loads has usable credentials, and say
what is wrong with them in the words of the config key that named them.

Invariants:
- Secret files (``PrivateKey``, ``PSKFile``) must be regular files that group and
  others cannot access at all (mode ``& 0o077 == 0``, as ssh requires);
  :func:`read_secret_file` is the one place that checks, for the command-line tools too.
- The ``read_*`` functions raise ``ValueError`` with the file's name in the message;
  :func:`load_credentials` raises :class:`CredentialError`, which also names the config
  key the loader reports the problem at.
- Validity is checked against the ``now`` passed in: an expired certificate is an
  error, one not yet valid or expiring within :data:`EXPIRY_WARNING` a warning.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dtlsvpn.config.model import Credentials, InterfaceConfig
from dtlsvpn.crypto.certs import PrivateKey, load_certificates, load_private_key

MIN_PSK_BYTES, MAX_PSK_BYTES = 16, 256
EXPIRY_WARNING = datetime.timedelta(days=30)
T = TypeVar("T")


class CredentialError(ValueError):
    """A credential problem, reported at the config key ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# --- files --------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def read_secret_file(path: Path) -> bytes:
    """Contents of a secret file; ValueError if it is missing, not a file, or too open."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"expected a regular file, got {path}")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise ValueError(f"{path} has mode {mode:04o}; a secret file must not be "
                                 f"accessible by group or others (chmod 600 {path})")
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def read_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """The PEM certificates in ``path`` (at least one), in file order."""
    data = _read(path)
    try:
        certs = load_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"expected PEM certificates in {path}, found none")
    return tuple(certs)


def read_private_key(path: Path) -> PrivateKey:
    """The unencrypted PEM private key in the secret file ``path``."""
    data = read_secret_file(path)
    try:
        return load_private_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"expected an unencrypted PEM private key (ECDSA P-256/P-384, "
                         f"Ed25519, RSA >= 2048) in {path}: {exc}") from None


def read_psk(path: Path) -> bytes:
    """The PSK in the secret file ``path``: hex digits, whitespace ignored."""
    text = read_secret_file(path).decode("ascii", errors="replace")
    digits = "".join(text.split())
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"expected the PSK as hex digits in {path} (as written by "
                         f"`dtlsvpn genpsk`)") from None
    if not MIN_PSK_BYTES <= len(key) <= MAX_PSK_BYTES:
        raise ValueError(f"expected a PSK of {MIN_PSK_BYTES} to {MAX_PSK_BYTES} bytes in "
                         f"{path}, got {len(key)}")
    return key


# --- consistency --------------------------------------------------------------------------


def _spki(key: PrivateKey | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _when(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _read_file(key: str, path: Path | None, reader: Callable[[Path], T]) -> T | None:
    if path is None:
        return None
    try:
        return reader(path)
    except ValueError as exc:
        raise CredentialError(key, str(exc)) from None


def load_credentials(
    iface: InterfaceConfig, now: datetime.datetime
) -> tuple[Credentials, list[tuple[str, str]]]:
    """Read and cross-check Certificate, PrivateKey and CA of ``iface``.

    Returns the credentials and the warnings as (config key, text) pairs; raises
    :class:`CredentialError` for the first problem.  Certificate and PrivateKey must
    already be both set or both unset (the loader checks the pairing).
    """
    chain = _read_file("Certificate", iface.certificate, read_certificates) or ()
    key = _read_file("PrivateKey", iface.private_key, read_private_key)
    ca = _read_file("CA", iface.ca, read_certificates) or ()
    if key is not None and chain and _spki(key) != _spki(chain[0]):
        raise CredentialError("PrivateKey", f"expected the private key of {iface.certificate}, "
                                            f"but {iface.private_key} holds another key")
    warnings: list[tuple[str, str]] = []
    for cert in ca:
        if not _is_ca(cert):
            raise CredentialError("CA", f"expected CA certificates in {iface.ca}, but "
                                        f"{_subject(cert)} is not one (basicConstraints cA)")
        warnings += _validity("CA", cert, now)
    if chain:
        warnings += _validity("Certificate", chain[0], now)
        if _is_ca(chain[0]):
            raise CredentialError("Certificate", f"expected a leaf certificate first in "
                                                 f"{iface.certificate}, got the CA "
                                                 f"{_subject(chain[0])}")
    return Credentials(chain, key, ca), warnings


def _validity(key: str, cert: x509.Certificate, now: datetime.datetime) -> list[tuple[str, str]]:
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if now > after:
        raise CredentialError(key, f"{_subject(cert)} expired at {_when(after)}; "
                                   f"expected a valid certificate")
    if now < before:
        return [(key, f"{_subject(cert)} is not valid before {_when(before)}")]
    if after - now < EXPIRY_WARNING:
        return [(key, f"{_subject(cert)} expires at {_when(after)}")]
    return []
