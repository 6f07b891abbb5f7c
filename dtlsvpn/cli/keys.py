"""``dtlsvpn genkey | gencert | genpsk | pin``: credentials for a dtlsvpn deployment.

Purpose: make a small private PKI (a CA, server and client certificates),
bare keys for pinning, and PSK files, with the permissions the daemon's
config loader insists on.

Invariants:
- Private keys and PSKs are written mode 0600, certificates 0644, each
  atomically: a temporary file in the target directory (created with the
  final mode, ``O_EXCL``), fsync, then a hard link (no overwrite: fails if the
  target exists) or ``os.replace`` (only with ``--force``).  Every target is
  checked before the first file is written, so a refused run writes nothing.
- Keys are PKCS#8 PEM without encryption (the daemon starts unattended);
  ECDSA P-256 is the default (protocol.md).
- CA certificates: basicConstraints cA=TRUE, pathLen 0 (critical), keyUsage
  keyCertSign + cRLSign (critical), SKI/AKI (RFC 5280 §4.2.1).
- Leaf certificates: basicConstraints cA=FALSE (critical), keyUsage
  digitalSignature (+ keyEncipherment for RSA) (critical; RFC 5246 §7.4.2:
  the key signs the handshake), extendedKeyUsage serverAuth or clientAuth
  (RFC 5280 §4.2.1.12), subjectAltName with the DNS names and IP addresses
  given (a server name is checked there, RFC 6125 §6.4), SKI and AKI.
- The SPKI pin printed is ``sha256/BASE64`` of the DER SubjectPublicKeyInfo,
  the spelling ``PeerKeyPin`` accepts.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dtlsvpn.config.values import is_hostname, spki_pin_text
from dtlsvpn.crypto.certs import PrivateKey, load_certificates, load_private_key

KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "ed25519", "rsa2048")
DEFAULT_KEY_TYPE = "ecdsa-p256"
CA_DAYS = 3650
LEAF_DAYS = 825
PSK_BYTES = 32
BACKDATE = datetime.timedelta(hours=1)  # tolerate clocks a little behind ours
CA_CERT, CA_KEY = "ca.crt", "ca.key"
_STEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


class ToolError(Exception):
    """A problem reported as ``dtlsvpn: error: ...`` with exit status 1."""


# --- keys and certificates ----------------------------------------------------------------------


def generate_key(kind: str) -> PrivateKey:
    """A fresh private key of one of :data:`KEY_TYPES`."""
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {kind!r}")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def spki_pin(key: PrivateKey | x509.Certificate) -> str:
    """``sha256/BASE64`` of the public key's DER SubjectPublicKeyInfo."""
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki_pin_text(hashlib.sha256(spki).digest())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(name: str, key: PrivateKey, days: int,
            now: datetime.datetime | None = None) -> x509.Certificate:
    """A self-signed CA certificate for ``key``, valid ``days`` days."""
    now = now or datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
    )
    return builder.sign(key, _hash_for(key))


def make_leaf(
    role: str,
    name: str,
    key: PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    days: int,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A ``server`` or ``client`` certificate for ``key`` signed by the CA."""
    now = now or datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    eku = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
            decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(aki, critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- files ----------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; refuse to overwrite unless ``force``."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and fails if the target appeared meanwhile
    except FileExistsError:
        raise ToolError(f"{path} exists; use --force to overwrite it") from None
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_targets(paths: list[Path], force: bool) -> None:
    for path in paths:
        if not path.parent.is_dir():
            raise ToolError(f"{path.parent} is not a directory")
        if path.exists() and not force:
            raise ToolError(f"{path} exists; use --force to overwrite it")


def _read_ca(ca_dir: Path) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    try:
        certs = load_certificates(cert_path.read_bytes())
        key = load_private_key(key_path.read_bytes())
    except OSError as exc:
        raise ToolError(f"cannot read the CA in {ca_dir}: {exc.filename}: {exc.strerror} "
                        f"(run `dtlsvpn gencert ca --out-dir {ca_dir}` first)") from None
    except ValueError as exc:
        raise ToolError(f"unusable CA in {ca_dir}: {exc}") from None
    return certs[0], key


# --- commands -------------------------------------------------------------------------------


def _say(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


def run_genkey(args: argparse.Namespace) -> int:
    key = generate_key(args.type)
    pem = key_pem(key)
    if args.out is None:
        sys.stdout.buffer.write(pem)
        sys.stdout.flush()
    else:
        out = Path(args.out)
        _check_targets([out], args.force)
        write_file(out, pem, 0o600, force=args.force)
        print(f"wrote {out} (0600)", file=sys.stderr)
    print(f"pin: {spki_pin(key)}", file=sys.stderr)
    return 0


def run_genpsk(args: argparse.Namespace) -> int:
    text = (secrets.token_bytes(PSK_BYTES).hex() + "\n").encode()
    if args.out is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return 0
    out = Path(args.out)
    _check_targets([out], args.force)
    write_file(out, text, 0o600, force=args.force)
    print(f"wrote {out} (0600)")
    return 0


def run_gencert(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolError(f"cannot create {out_dir}: {exc.strerror}") from None
    if args.kind == "ca":
        key_path, cert_path = out_dir / CA_KEY, out_dir / CA_CERT
    else:
        if not _STEM_RE.match(args.name):
            raise ToolError(f"--name {args.name!r}: expected letters, digits and '_.@+-' "
                            f"(it names the files)")
        key_path, cert_path = out_dir / f"{args.name}.key", out_dir / f"{args.name}.crt"
    _check_targets([key_path, cert_path], args.force)
    key = generate_key(args.type)
    if args.kind == "ca":
        cert = make_ca(args.name, key, args.days or CA_DAYS)
    else:
        ca_cert, ca_key = _read_ca(Path(args.ca_dir))
        dns = tuple(args.dns or ())
        ips = tuple(args.ip or ())
        if args.kind == "server" and not dns and is_hostname(args.name):
            dns = (args.name,)
        cert = make_leaf(args.kind, args.name, key, ca_cert, ca_key, args.days or LEAF_DAYS,
                         dns=dns, ips=ips)
    write_file(key_path, key_pem(key), 0o600, force=args.force)
    write_file(cert_path, cert_pem(cert), 0o644, force=args.force)
    _say([f"wrote {key_path} (0600)", f"wrote {cert_path} (0644)",
          f"subject: {cert.subject.rfc4514_string()}", f"pin: {spki_pin(key)}"])
    return 0


def run_pin(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror}") from None
    try:
        subject: PrivateKey | x509.Certificate = load_certificates(data)[0]
    except ValueError:
        try:
            subject = load_private_key(data)
        except (ValueError, TypeError):
            raise ToolError(f"{path}: expected a PEM certificate or private key") from None
    print(spki_pin(subject))
    return 0


# --- argparse -------------------------------------------------------------------------------


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError(f"expected a number of days from 1 to 36500, "
                                         f"got {text!r}")
    return int(text)


def _dns(text: str) -> str:
    if not is_hostname(text):
        raise argparse.ArgumentTypeError(f"expected a DNS name, got {text!r}")
    return text


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address, got {text!r}") from None


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            result = func(args)
        except ToolError as exc:
            print(f"dtlsvpn: error: {exc}", file=sys.stderr)
            return 1
        return result

    return run


def add_parsers(commands: Any) -> None:
    """Register ``genkey``, ``gencert``, ``genpsk`` and ``pin``."""
    genkey = commands.add_parser(
        "genkey", help="generate a private key (PEM); prints its SPKI pin",
        description="Generate a private key in PEM (PKCS#8, unencrypted). Without --out the "
                    "key goes to stdout. The SPKI pin (for PeerKeyPin) goes to stderr.",
    )
    genkey.add_argument("--type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE,
                        help=f"key type (default {DEFAULT_KEY_TYPE})")
    genkey.add_argument("--out", metavar="FILE", help="write the key here, mode 0600")
    genkey.add_argument("--force", action="store_true", help="overwrite an existing file")
    genkey.set_defaults(func=_guarded(run_genkey), parser_of_command=genkey)

    genpsk = commands.add_parser(
        "genpsk", help="generate a pre-shared key (32 random bytes, hex)",
        description="Generate a PSK: 32 random bytes as hex, for PSKFile. Without --out it "
                    "goes to stdout.",
    )
    genpsk.add_argument("--out", metavar="FILE", help="write the PSK here, mode 0600")
    genpsk.add_argument("--force", action="store_true", help="overwrite an existing file")
    genpsk.set_defaults(func=_guarded(run_genpsk), parser_of_command=genpsk)

    pin = commands.add_parser(
        "pin", help="print the SPKI pin of a certificate or private key",
        description="Print sha256/BASE64 of the SubjectPublicKeyInfo of a PEM certificate or "
                    "private key: the value PeerKeyPin takes.",
    )
    pin.add_argument("file", metavar="FILE")
    pin.set_defaults(func=_guarded(run_pin), parser_of_command=pin)

    gencert = commands.add_parser(
        "gencert", help="make a CA, server or client certificate",
        description="Make a small private PKI: `gencert ca` writes ca.key and ca.crt into "
                    "--out-dir; `gencert server|client` writes NAME.key and NAME.crt signed "
                    "by the CA in --ca-dir. Keys are 0600, certificates 0644; existing files "
                    "are kept unless --force.",
    )
    kinds = gencert.add_subparsers(dest="kind", metavar="KIND", required=True)
    specs = (
        ("ca", "a self-signed CA (ca.key, ca.crt)", CA_DAYS),
        ("server", "a server certificate (EKU serverAuth, SANs from --dns/--ip)", LEAF_DAYS),
        ("client", "a client certificate (EKU clientAuth; CommonName = --name)", LEAF_DAYS),
    )
    for kind, text, days in specs:
        p = kinds.add_parser(kind, help=text, description=f"Make {text}.")
        p.add_argument("--name", required=True,
                       help="subject CommonName" + ("" if kind == "ca" else
                                                    " and the file names NAME.key/NAME.crt"))
        p.add_argument("--out-dir", required=True, metavar="DIR",
                       help="where to write (created mode 0700 if missing)")
        if kind != "ca":
            p.add_argument("--ca-dir", required=True, metavar="DIR",
                           help="directory holding ca.crt and ca.key")
            p.add_argument("--dns", action="append", type=_dns, metavar="NAME",
                           help="subjectAltName DNS name (repeatable"
                                + ("; default: --name if it is a DNS name)"
                                   if kind == "server" else ")"))
            p.add_argument("--ip", action="append", type=_ip, metavar="ADDR",
                           help="subjectAltName IP address (repeatable)")
        p.add_argument("--type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE,
                       help=f"key type (default {DEFAULT_KEY_TYPE})")
        p.add_argument("--days", type=_days, default=None,
                       help=f"validity in days (default {days})")
        p.add_argument("--force", action="store_true", help="overwrite existing files")
        p.set_defaults(func=_guarded(run_gencert), parser_of_command=p)
