"""``daemon/trust.py``: the reload's log line and the re-check of a peer's chain."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from dtlsvpn.config.model import Credentials
from dtlsvpn.daemon.trust import ca_changed, describe, recheck
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import HandshakeCompleted
from dtlsvpn.errors import BadCertificate, CertificateExpired, UnknownCa
from dtlsvpn.wire.constants import CipherSuite
from tests.pki import Credential, issue, issue_ca

SUITE = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256


def _done(*chain: Credential, resumed: bool = False, psk: bytes | None = None
          ) -> HandshakeCompleted:
    ders = tuple(c.cert.public_bytes(Encoding.DER) for c in chain)
    return HandshakeCompleted(
        suite=SUITE, suite_name=SUITE.name, ems=True, resumed=resumed,
        peer_certificate=chain[0].cert if chain else None, psk_identity=psk,
        peer_chain=() if resumed else ders)


def _server(server: Credential, *cas: Credential) -> DtlsConfig:
    return DtlsConfig(is_client=False, certificate_chain=(server.cert,),
                      private_key=server.key, ca_certs=tuple(c.cert for c in cas),
                      require_client_cert=True)


def test_recheck_follows_the_chain_the_peer_presented(tmp_path: Path) -> None:
    root, other = issue_ca(tmp_path, "root", "root"), issue_ca(tmp_path, "other", "other")
    mid = issue_ca(tmp_path, "mid", "intermediate", issuer=root)
    server = issue(tmp_path, "server", root, server=True)
    client = issue(tmp_path, "client", mid, server=False)
    now = time.time()
    assert recheck(_server(server, root), _done(client, mid), now) is None
    assert recheck(_server(server, root, other), _done(client, mid), now) is None
    assert isinstance(recheck(_server(server, other), _done(client, mid), now), UnknownCa)
    # the leaf alone (a resumed session: the ticket has no intermediates) cannot chain
    assert isinstance(recheck(_server(server, root), _done(client, resumed=True), now),
                      UnknownCa)
    assert recheck(_server(server, mid), _done(client, resumed=True), now) is None
    late = now + 400 * 86400  # past every validity period
    assert isinstance(recheck(_server(server, root), _done(client, mid), late),
                      CertificateExpired)


def test_recheck_leaves_psk_and_unfinished_handshakes_alone(tmp_path: Path) -> None:
    root = issue_ca(tmp_path, "root", "root")
    server = issue(tmp_path, "server", root, server=True)
    conf = _server(server, root)
    assert recheck(conf, None, time.time()) is None
    assert recheck(conf, _done(psk=b"alice"), time.time()) is None
    nothing = _done()  # a client resumed: no server certificate at all
    assert isinstance(recheck(conf, nothing, time.time()), BadCertificate)


def test_describe_says_what_changed(tmp_path: Path) -> None:
    root, other = issue_ca(tmp_path, "root", "root"), issue_ca(tmp_path, "other", "other")
    old = issue(tmp_path, "server", root, server=True)
    same_key = issue(tmp_path, "server2", root, server=True, key=old.key)
    new_key = issue(tmp_path, "server3", root, server=True)

    def creds(cert: Credential, *cas: Credential) -> Credentials:
        return Credentials((cert.cert,), cert.key, tuple(c.cert for c in cas))

    assert describe(creds(old, root), creds(old, root)) is None
    line = describe(creds(old, root), creds(same_key, root))
    assert line is not None and f"serial {same_key.cert.serial_number:x}" in line
    assert "same key" in line and "CN=server.test" in line and "expires" in line, line
    assert "new key" in (describe(creds(old, root), creds(new_key, root)) or "")
    assert describe(creds(old, root), creds(old, other, root)) == "CA: 2 certificates"
    # the caller's own answer is taken as given (the daemon computes it once per reload)
    assert describe(creds(old, root), creds(old, other, root), ca=False) is None
    assert describe(creds(old, root), creds(old, root), ca=True) == "CA: 1 certificate"
    assert not ca_changed(creds(old, root, other), creds(old, other, root))  # order
    assert ca_changed(creds(old, root), creds(old, other))
