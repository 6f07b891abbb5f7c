"""`dtlsvpn genkey | gencert | genpsk | pin`: file modes, X.509 extensions, no silent
overwrite, and certificates that really work: our DTLS server and client (subprocesses on
127.0.0.1, as in tests/interop) complete a mutually authenticated handshake with them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dtlsvpn.cli.main import main
from dtlsvpn.crypto.certs import ChainVerifier, load_certificates, load_private_key
from tests.interop.harness import STEP_TIMEOUT, expect, expect_re, start_our_server, wait_exit
from tests.interop.peers import HANDSHAKE_RE, OUR_ENV, ours, unique
from tests.util import ProcessGroup


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pin_of(key_or_cert: object) -> str:
    public = key_or_cert.public_key()  # type: ignore[attr-defined]
    spki = public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _cert(path: Path) -> x509.Certificate:
    return load_certificates(path.read_bytes())[0]


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture(params=[0o000, 0o077, 0o022], ids=["umask000", "umask077", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Modes must not depend on the caller's umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- genkey / genpsk / pin ----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cls"), [
    ("ecdsa-p256", ec.EllipticCurvePrivateKey), ("ecdsa-p384", ec.EllipticCurvePrivateKey),
    ("ed25519", ed25519.Ed25519PrivateKey), ("rsa2048", rsa.RSAPrivateKey),
])
def test_genkey_writes_0600_and_prints_the_pin(
    kind: str, cls: type, tmp_path: Path, umask: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k.pem"
    rc, stdout, stderr = _run(["genkey", "--type", kind, "--out", str(out)], capsys)
    assert rc == 0 and stdout == ""
    assert _mode(out) == 0o600
    key = load_private_key(out.read_bytes())
    assert isinstance(key, cls)
    if kind == "ecdsa-p384":
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert f"pin: {_pin_of(key)}" in stderr.splitlines()
    assert not [p for p in tmp_path.iterdir() if p.name != "k.pem"]  # no temporary left


def test_genkey_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, stderr = _run(["genkey"], capsys)
    assert rc == 0
    key = load_private_key(stdout.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert stderr.strip() == f"pin: {_pin_of(key)}"


def test_genkey_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k.pem"
    out.write_text("precious")
    rc, _, stderr = _run(["genkey", "--out", str(out)], capsys)
    assert rc == 1 and "exists; use --force" in stderr and out.read_text() == "precious"
    assert _run(["genkey", "--out", str(out), "--force"], capsys)[0] == 0
    assert _mode(out) == 0o600 and load_private_key(out.read_bytes())


def test_genpsk(tmp_path: Path, umask: int, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "peer.psk"
    rc, stdout, _ = _run(["genpsk", "--out", str(out)], capsys)
    assert rc == 0 and str(out) in stdout
    assert _mode(out) == 0o600
    text = out.read_text()
    assert text.endswith("\n") and len(bytes.fromhex(text.strip())) == 32
    rc, stdout, _ = _run(["genpsk"], capsys)
    assert rc == 0 and len(bytes.fromhex(stdout.strip())) == 32 and stdout.strip() != text
    assert _run(["genpsk", "--out", str(out)], capsys)[0] == 1


def test_pin_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(["gencert", "ca", "--out-dir", str(tmp_path), "--name", "CA"], capsys)
    cert = _cert(tmp_path / "ca.crt")
    assert _run(["pin", str(tmp_path / "ca.crt")], capsys)[1].strip() == _pin_of(cert)
    assert _run(["pin", str(tmp_path / "ca.key")], capsys)[1].strip() == _pin_of(cert)
    junk = tmp_path / "junk"
    junk.write_text("junk")
    rc, _, stderr = _run(["pin", str(junk)], capsys)
    assert rc == 1 and "expected a PEM certificate or private key" in stderr


# --- gencert ---------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    rc, stdout, _ = _run(["gencert", "ca", "--out-dir", str(tmp_path / "ca"),
                          "--name", "Example VPN CA", "--days", "100"], capsys)
    assert rc == 0, stdout
    return tmp_path / "ca"


def test_gencert_ca(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _mode(pki / "ca.key") == 0o600 and _mode(pki / "ca.crt") == 0o644
    assert _mode(pki) == 0o700
    cert = _cert(pki / "ca.crt")
    key = load_private_key((pki / "ca.key").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert _pin_of(key) == _pin_of(cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Example VPN CA"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=100) <= life <= datetime.timedelta(days=100, hours=2)
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa2048"])
def test_gencert_server(kind: str, pki: Path, tmp_path: Path, umask: int,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc, stdout, stderr = _run(["gencert", "server", "--ca-dir", str(pki), "--out-dir", str(out),
                               "--name", "vpn.example.net", "--dns", "gw.example.net",
                               "--ip", "198.18.0.1", "--ip", "2001:db8::1", "--type", kind,
                               "--days", "30"], capsys)
    assert rc == 0, stderr
    crt, key_path = out / "vpn.example.net.crt", out / "vpn.example.net.key"
    assert _mode(key_path) == 0o600 and _mode(crt) == 0o644
    assert f"wrote {key_path} (0600)" in stdout and f"wrote {crt} (0644)" in stdout
    cert, ca = _cert(crt), _cert(pki / "ca.crt")
    key = load_private_key(key_path.read_bytes())
    assert f"pin: {_pin_of(key)}" in stdout and _pin_of(key) == _pin_of(cert)
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment == (kind == "rsa2048")
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName).value
    # the explicit --dns replaces the default (the name itself)
    assert san.get_values_for_type(x509.DNSName) == ["gw.example.net"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["198.18.0.1",
                                                                         "2001:db8::1"]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(ca, x509.SubjectKeyIdentifier).value.digest
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= life <= datetime.timedelta(days=30, hours=2)
    # the project's own verifier accepts it as a server for its names
    now = datetime.datetime.now(datetime.UTC)
    der = cert.public_bytes(serialization.Encoding.DER)
    for name in ("gw.example.net", "198.18.0.1"):
        ChainVerifier([ca], (), name).verify([der], now, peer_is_server=True)


def test_gencert_server_defaults_to_its_name_as_dns(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["gencert", "server", "--ca-dir", str(pki), "--out-dir", str(tmp_path),
                 "--name", "vpn.example.net", "--ip", "198.18.0.1"], capsys)[0] == 0
    cert = _cert(tmp_path / "vpn.example.net.crt")
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.net"]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life > datetime.timedelta(days=99)  # 825 days by default, capped by the CA's 100


def test_gencert_client(pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["gencert", "client", "--ca-dir", str(pki), "--out-dir", str(tmp_path),
                 "--name", "alice"], capsys)[0] == 0
    cert = _cert(tmp_path / "alice.crt")
    assert _mode(tmp_path / "alice.key") == 0o600 and _mode(tmp_path / "alice.crt") == 0o644
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not _ext(cert, x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    now = datetime.datetime.now(datetime.UTC)
    ChainVerifier([_cert(pki / "ca.crt")]).verify(
        [cert.public_bytes(serialization.Encoding.DER)], now, peer_is_server=False)


def test_gencert_never_overwrites_without_force(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gencert", "client", "--ca-dir", str(pki), "--out-dir", str(tmp_path),
            "--name", "bob"]
    assert _run(argv, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    rc, _, stderr = _run(argv, capsys)
    assert rc == 1 and "bob.key exists; use --force" in stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # a missing key with a present certificate is refused too: nothing is half-written
    (tmp_path / "bob.key").unlink()
    rc, _, stderr = _run(argv, capsys)
    assert rc == 1 and "bob.crt exists" in stderr and not (tmp_path / "bob.key").exists()
    assert _run([*argv, "--force"], capsys)[0] == 0
    assert (tmp_path / "bob.crt").read_bytes() != before["bob.crt"]
    assert _mode(tmp_path / "bob.key") == 0o600
    rc, _, stderr = _run(["gencert", "ca", "--out-dir", str(pki), "--name", "again"], capsys)
    assert rc == 1 and "ca.key exists" in stderr


def test_gencert_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, stderr = _run(["gencert", "server", "--ca-dir", str(tmp_path / "none"),
                          "--out-dir", str(tmp_path), "--name", "x"], capsys)
    assert rc == 1 and "cannot read the CA" in stderr and "gencert ca" in stderr
    assert main(["gencert", "server", "--ca-dir", "d", "--out-dir", "d", "--name", "x",
                 "--ip", "not-an-ip"]) == 2
    assert main(["gencert", "ca", "--out-dir", "d", "--name", "x", "--days", "0"]) == 2
    assert main(["gencert", "client", "--out-dir", "d", "--name", "x"]) == 2  # no --ca-dir
    rc, _, stderr = _run(["gencert", "client", "--ca-dir", str(tmp_path), "--out-dir",
                          str(tmp_path), "--name", "../evil"], capsys)
    assert rc == 1 and "--name" in stderr


# --- the generated files work for real ------------------------------------------------------


def test_generated_pki_completes_a_dtls_handshake(
    pki: Path, tmp_path: Path, procs: ProcessGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "leaves"
    assert _run(["gencert", "server", "--ca-dir", str(pki), "--out-dir", str(out),
                 "--name", "vpn.example.net", "--ip", "127.0.0.1"], capsys)[0] == 0
    assert _run(["gencert", "client", "--ca-dir", str(pki), "--out-dir", str(out),
                 "--name", "alice"], capsys)[0] == 0
    ca = str(pki / "ca.crt")
    server, port = start_our_server(procs, ours(
        "server", "--listen", "127.0.0.1:0", "--once", "--echo",
        "--cert", str(out / "vpn.example.net.crt"), "--key", str(out / "vpn.example.net.key"),
        "--ca", ca, "--require-client-cert"))
    line = unique("generated-pki")
    client = procs.start(ours("client", f"127.0.0.1:{port}", "--ca", ca,
                              "--server-name", "vpn.example.net",
                              "--cert", str(out / "alice.crt"), "--key", str(out / "alice.key"),
                              "--linger", "0.3"),
                         name="ours-client", env=OUR_ENV)
    client.send(line + "\n")
    expect(client, line)  # echoed back through the mutually authenticated association
    client.close_stdin()
    assert wait_exit(client, STEP_TIMEOUT) == 0, client.describe()
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
    match = expect_re(client, HANDSHAKE_RE, "stderr")
    assert match["ems"] == "yes"
