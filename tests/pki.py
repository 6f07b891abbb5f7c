"""Throwaway test PKI built with `cryptography`, shared by every test layer and by tools.

`make_pki(directory)` writes PEM files into `directory` and returns a `Pki` holding, for
each credential, both the paths (for OpenSSL / GnuTLS / our CLI) and the loaded objects
(for the sans-I/O core). Nothing here is secret or reused: call it per session.

Credentials (names as in the `Pki` fields):
- `ca`: ECDSA P-256 root; signs everything below except `rsa_server` and the evil pair.
- `server`: ECDSA P-256, CN and DNS SAN "server.test" plus IP SAN 127.0.0.1, EKU serverAuth.
- `client`: ECDSA P-256, CN and DNS SAN "client.test", EKU clientAuth.
- `rsa_ca` / `rsa_server`: RSA-2048 root and an RSA-2048 server certificate it signed
  (same names as `server`).
- `ed25519_server`: an Ed25519 server certificate under `ca` (same names as `server`).
- `expired_server`: like `server` but its validity ended a day before `now`.
- `evil_ca` / `evil_server` / `evil_client`: a second ECDSA root nobody trusts and leaves
  with the same names as `server` / `client`.

Every certificate carries what `cryptography.x509.verification` demands (basicConstraints,
keyUsage, SKI/AKI, SAN and EKU on leaves), so the same files verify with OpenSSL, GnuTLS and
`ChainVerifier`. `python -m tests.pki DIR` writes a PKI for manual experiments.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
Validity = tuple[dt.datetime, dt.datetime]  # (not_before, not_after)

SERVER_NAME = "server.test"
SERVER_IP = "127.0.0.1"
CLIENT_NAME = "client.test"


@dataclass(frozen=True)
class Credential:
    """One certificate with its private key, on disk and in memory."""

    name: str
    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class Pki:
    """The whole throwaway PKI; see the module docstring for what each field is."""

    directory: Path
    now: dt.datetime
    ca: Credential
    server: Credential
    client: Credential
    rsa_ca: Credential
    rsa_server: Credential
    ed25519_server: Credential
    expired_server: Credential
    evil_ca: Credential
    evil_server: Credential
    evil_client: Credential


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dtlsvpn tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _issue(
    directory: Path,
    file_stem: str,
    common_name: str,
    key: PrivateKey,
    issuer: Credential | None,
    validity: Validity,
    *,
    is_ca: bool = False,
    eku: x509.ObjectIdentifier | None = None,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> Credential:
    """Build, sign and write one certificate; `issuer=None` makes a self-signed root."""
    public_key = key.public_key()
    signer_key = key if issuer is None else issuer.key
    issuer_name = _name(common_name) if issuer is None else issuer.cert.subject
    issuer_public = public_key if issuer is None else issuer.key.public_key()

    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    usage = x509.KeyUsage(
        digital_signature=not is_ca,
        content_commitment=False,
        key_encipherment=not is_ca and isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = builder.add_extension(usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)

    algorithm = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(signer_key, algorithm)

    cert_path = directory / f"{file_stem}.pem"
    key_path = directory / f"{file_stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return Credential(file_stem, cert, key, cert_path, key_path)


def make_pki(directory: Path, *, now: dt.datetime | None = None) -> Pki:
    """Write a fresh PKI into `directory` (created if missing) and return it.

    `now` (timezone-aware UTC) anchors every validity period: roots and good leaves are
    valid from a day before it until a year after it; `expired_server` ended a day before.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    valid = (now - day, now + 365 * day)
    expired = (now - 30 * day, now - day)

    def root(stem: str, common_name: str, key: PrivateKey) -> Credential:
        return _issue(directory, stem, common_name, key, None, valid, is_ca=True)

    def server(
        stem: str, key: PrivateKey, issuer: Credential, validity: Validity = valid
    ) -> Credential:
        return _issue(
            directory, stem, SERVER_NAME, key, issuer, validity,
            eku=ExtendedKeyUsageOID.SERVER_AUTH, dns_names=(SERVER_NAME,),
            ip_addresses=(SERVER_IP,),
        )

    def client(stem: str, key: PrivateKey, issuer: Credential) -> Credential:
        return _issue(
            directory, stem, CLIENT_NAME, key, issuer, valid,
            eku=ExtendedKeyUsageOID.CLIENT_AUTH, dns_names=(CLIENT_NAME,),
        )

    ca = root("ca", "dtlsvpn test CA", _p256())
    rsa_ca = root("rsa-ca", "dtlsvpn test RSA CA", _rsa2048())
    evil_ca = root("evil-ca", "dtlsvpn test CA", _p256())
    return Pki(
        directory=directory,
        now=now,
        ca=ca,
        server=server("server", _p256(), ca),
        client=client("client", _p256(), ca),
        rsa_ca=rsa_ca,
        rsa_server=server("rsa-server", _rsa2048(), rsa_ca),
        ed25519_server=server("ed25519-server", ed25519.Ed25519PrivateKey.generate(), ca),
        expired_server=server("expired-server", _p256(), ca, expired),
        evil_ca=evil_ca,
        evil_server=server("evil-server", _p256(), evil_ca),
        evil_client=client("evil-client", _p256(), evil_ca),
    )


def issue(directory: Path, stem: str, issuer: Credential, *, server: bool,
          common_name: str | None = None, key: PrivateKey | None = None,
          now: dt.datetime | None = None) -> Credential:
    """One more leaf signed by ``issuer`` (a renewal, a second client): the server's
    names or the client's (``common_name`` overrides the CN), a fresh P-256 key unless
    ``key`` is given, valid as ``make_pki``'s; the files ``stem``.pem/.key are
    written in place (a renewal in place overwrites the old ones)."""
    now = now or dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    name = common_name or (SERVER_NAME if server else CLIENT_NAME)
    return _issue(
        directory, stem, name, key or _p256(), issuer, (now - day, now + 365 * day),
        eku=ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH,
        dns_names=(name,), ip_addresses=(SERVER_IP,) if server else (),
    )


def issue_ca(directory: Path, stem: str, common_name: str,
             issuer: Credential | None = None) -> Credential:
    """Another ECDSA CA, valid as ``make_pki``'s: a self-signed root, or an intermediate
    that ``issuer`` signed."""
    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    return _issue(directory, stem, common_name, _p256(), issuer,
                  (now - day, now + 365 * day), is_ca=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.pki DIRECTORY", file=sys.stderr)
        return 2
    pki = make_pki(Path(argv[0]))
    for path in sorted(pki.directory.iterdir()):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
