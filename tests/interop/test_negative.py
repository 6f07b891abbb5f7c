"""Interop cells that must fail, and fail for the stated reason.

- Wrong PSK: OpenSSL sends no alert (the Finished fails AEAD and is dropped), so our
  client must give up at its --timeout with a non-zero status and an `error:` line that
  says the server never accepted our Finished (wrong PSK or key?).
- A server certificate from a CA we do not trust: our client refuses with a fatal alert
  (unknown_ca or bad_certificate) and prints the verifier's reason.
- Our server with --require-client-cert and a client that has no certificate: our
  server refuses the handshake, and the peer never gets application data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.interop.harness import (
    PROC_TIMEOUT,
    STEP_TIMEOUT,
    announced_port,
    expect,
    start_gnutls_server,
    start_our_server,
    wait_exit,
)
from tests.interop.peers import (
    CELL_BY_ID,
    GNUTLS_PORT,
    OUR_ENV,
    WRONG_PSK_HEX,
    gnutls_client,
    gnutls_server,
    openssl_client,
    openssl_server,
    our_client,
    our_server,
)
from tests.pki import Pki
from tests.util import PrivateNetns, Proc, ProcessGroup

pytestmark = pytest.mark.interop

PSK = CELL_BY_ID["psk-aes128gcm"]
ECDSA = CELL_BY_ID["ecdsa-aes128gcm"]
MUTUAL = CELL_BY_ID["mutual-ecdsa"]
SHORT_TIMEOUT = "3"


# The evil root has the same subject as ours, so the verifier finds a candidate issuer whose
# signature fails: ChainVerifier reports that as bad_certificate, a foreign name as unknown_ca.
UNTRUSTED_RE = re.compile(r"^error: sent alert (unknown_ca|bad_certificate): .*\S", re.M)


def _assert_untrusted(stderr: str) -> None:
    assert UNTRUSTED_RE.search(stderr), stderr


def _our_client_fails(client: Proc) -> str:
    rc = wait_exit(client, STEP_TIMEOUT + float(SHORT_TIMEOUT))
    stderr = client.stderr()
    assert rc not in (None, 0), f"our client should have failed (rc {rc})\n{client.describe()}"
    assert "handshake: " not in stderr, client.describe()
    assert "error: " in stderr, client.describe()
    return stderr


@pytest.mark.usefixtures("openssl")
def test_wrong_psk_openssl_server(pki: Pki, procs: ProcessGroup) -> None:
    server = procs.start(openssl_server(PSK, pki, None, psk_hex=WRONG_PSK_HEX),
                         name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    client = procs.start(our_client(PSK, pki, port, None, "--timeout", SHORT_TIMEOUT),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    stderr = _our_client_fails(client)
    assert "error: handshake timed out" in stderr or "alert" in stderr
    # OpenSSL answered the hellos and dropped our Finished: we say what that means.
    assert "never accepted our Finished (wrong PSK or key?)" in stderr, stderr


@pytest.mark.usefixtures("gnutls")
def test_wrong_psk_gnutls_server(pki: Pki, procs: ProcessGroup, netns: PrivateNetns,
                                 tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.passwd"
    wrong.write_text(f"client1:{WRONG_PSK_HEX}\n")
    start_gnutls_server(netns, gnutls_server(PSK, pki, None, wrong))
    client = netns.start(our_client(PSK, pki, GNUTLS_PORT, None, "--timeout", SHORT_TIMEOUT),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    stderr = _our_client_fails(client)
    assert "wrong PSK or key?" in stderr, stderr


@pytest.mark.usefixtures("openssl")
def test_untrusted_server_openssl(pki: Pki, procs: ProcessGroup) -> None:
    evil = (pki.evil_server.cert_path, pki.evil_server.key_path)
    server = procs.start(openssl_server(ECDSA, pki, None, cert=evil), name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    client = procs.start(our_client(ECDSA, pki, port, None), name="ours-client", env=OUR_ENV,
                         timeout=PROC_TIMEOUT)
    _assert_untrusted(_our_client_fails(client))


@pytest.mark.usefixtures("gnutls")
def test_untrusted_server_gnutls(pki: Pki, procs: ProcessGroup, netns: PrivateNetns,
                                 pskpasswd: Path) -> None:
    evil = (pki.evil_server.cert_path, pki.evil_server.key_path)
    start_gnutls_server(netns, gnutls_server(ECDSA, pki, None, pskpasswd, cert=evil))
    client = netns.start(our_client(ECDSA, pki, GNUTLS_PORT, None), name="ours-client",
                         env=OUR_ENV, timeout=PROC_TIMEOUT)
    _assert_untrusted(_our_client_fails(client))


def _our_server_refuses(procs: ProcessGroup, client_argv: list[str], port: int,
                        server: Proc) -> None:
    client = procs.start(client_argv, name="peer-client", timeout=PROC_TIMEOUT)
    client.send("must-not-arrive\n")
    expect(server, "error: handshake with", "stderr")
    rc = wait_exit(server, STEP_TIMEOUT)
    assert rc == 1, f"our server --once should exit 1 (rc {rc})\n{server.describe()}"
    assert "handshake: " not in server.stderr(), server.describe()
    assert "must-not-arrive" not in server.stdout(), server.describe()


@pytest.mark.usefixtures("openssl")
def test_our_server_requires_client_cert_openssl(pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, our_server(MUTUAL, pki, None))
    _our_server_refuses(procs, openssl_client(MUTUAL, pki, port, None, with_client_cert=False),
                        port, server)


@pytest.mark.usefixtures("gnutls")
def test_our_server_requires_client_cert_gnutls(pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, our_server(MUTUAL, pki, None))
    _our_server_refuses(procs, gnutls_client(MUTUAL, pki, port, None, with_client_cert=False),
                        port, server)
