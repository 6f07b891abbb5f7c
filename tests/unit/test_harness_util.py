"""Tests of the test harness itself (tests/pki.py, tests/util.py, tests/conftest.py).

They prove, before any of our DTLS stack exists, that the throwaway PKI is accepted by
`cryptography`, OpenSSL and GnuTLS, that processes are started and stopped by PID under
`timeout`, that private network namespaces isolate gnutls-serv, and that the CI rule turns
skips into failures.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from dtlsvpn.daemon.settings import load_config
from tests.netns.harness import cert_pair, psk_pair
from tests.pki import CLIENT_NAME, SERVER_IP, SERVER_NAME, Credential, Pki
from tests.support.conf import TunnelConf
from tests.util import (
    ProcessGroup,
    free_udp_port,
    holds_for,
    require_tools,
    run_bounded,
    run_in_private_netns,
    udp_port_bound,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
GNUTLS_DTLS12 = "NORMAL:-VERS-ALL:+VERS-DTLS1.2"


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- configuration text --------------------------------------------------------------


def test_conf_builder_renders_the_readme_syntax() -> None:
    text = TunnelConf(comment="a test", role="client", mtu=1300, address=("100.64.0.2/24",
                      "fd00::2/64"), connection_id=False, ticket_store=None,
                      ).peer(name="hq", psk_identity="x", allowed_ips="100.64.0.0/24").render()
    assert text == ("# a test\n[Interface]\nRole = client\nMTU = 1300\n"
                    "Address = 100.64.0.2/24, fd00::2/64\nConnectionID = no\n\n"
                    "[Peer]\nName = hq\nPSKIdentity = x\nAllowedIPs = 100.64.0.0/24\n")


def test_netns_pairs_load_with_the_daemons_loader(tmp_path: Path, pki: Pki) -> None:
    psk = tmp_path / "psk"
    psk.mkdir()
    for conf in psk_pair(psk, heartbeat_interval=0.3, rekey_interval=3, connection_id=False):
        cfg = load_config(conf)
        assert (cfg.interface.heartbeat_interval, cfg.interface.rekey_interval) == (0.3, 3.0)
        assert cfg.interface.connection_id is False and len(cfg.peers) == 1
    server, client = cert_pair(tmp_path, pki)
    assert load_config(server).peers[0].certificate_name == CLIENT_NAME
    assert load_config(client).peers[0].server_name == SERVER_NAME


# --- polling -------------------------------------------------------------------------


def test_wait_until_and_holds_for_poll_a_condition() -> None:
    calls: list[int] = []

    def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert wait_until(third_call, 5, interval=0.001) and len(calls) == 3
    assert not wait_until(lambda: False, 0.01, interval=0.001)
    assert holds_for(lambda: True, 0.02, interval=0.001)
    calls.clear()
    assert not holds_for(third_call, 5, interval=0.001)  # false on the first poll
    assert len(calls) == 1


# --- ports ---------------------------------------------------------------------------


def test_free_udp_port_can_be_bound_and_is_then_seen_bound() -> None:
    port = free_udp_port()
    assert 1024 <= port <= 65535
    assert not udp_port_bound(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        assert udp_port_bound(port)


# --- PKI -----------------------------------------------------------------------------


def _server_verify(
    pki: Pki, ca: Credential, leaf: Credential, name: x509.DNSName | x509.IPAddress
) -> None:
    verifier = PolicyBuilder().store(Store([ca.cert])).time(pki.now).build_server_verifier(name)
    verifier.verify(leaf.cert, [])


@pytest.mark.parametrize("leaf", ["server", "ed25519_server", "rsa_server"])
def test_pki_server_certificates_verify_with_cryptography(pki: Pki, leaf: str) -> None:
    cred: Credential = getattr(pki, leaf)
    ca = pki.rsa_ca if leaf == "rsa_server" else pki.ca
    _server_verify(pki, ca, cred, x509.DNSName(SERVER_NAME))
    _server_verify(pki, ca, cred, x509.IPAddress(ipaddress.ip_address(SERVER_IP)))
    assert cred.key_path.stat().st_mode & 0o077 == 0


def test_pki_bad_server_certificates_are_rejected_by_cryptography(pki: Pki) -> None:
    name = x509.DNSName(SERVER_NAME)
    with pytest.raises(VerificationError, match="not valid at validation time"):
        _server_verify(pki, pki.ca, pki.expired_server, name)
    with pytest.raises(VerificationError):
        _server_verify(pki, pki.ca, pki.evil_server, name)
    with pytest.raises(VerificationError):  # clientAuth only
        _server_verify(pki, pki.ca, pki.client, x509.DNSName(CLIENT_NAME))


def test_pki_client_certificate_verifies_only_under_its_ca(pki: Pki) -> None:
    verifier = PolicyBuilder().store(Store([pki.ca.cert])).time(pki.now).build_client_verifier()
    assert verifier.verify(pki.client.cert, []).subjects == [x509.DNSName(CLIENT_NAME)]
    for bad in (pki.evil_client, pki.server):
        with pytest.raises(VerificationError):
            verifier.verify(bad.cert, [])


@pytest.mark.parametrize(
    ("leaf", "ca", "purpose", "ok"),
    [
        ("server", "ca", "sslserver", True),
        ("ed25519_server", "ca", "sslserver", True),
        ("rsa_server", "rsa_ca", "sslserver", True),
        ("client", "ca", "sslclient", True),
        ("expired_server", "ca", "sslserver", False),
        ("evil_server", "ca", "sslserver", False),
        ("client", "ca", "sslserver", False),
    ],
)
def test_pki_openssl_verify(pki: Pki, leaf: str, ca: str, purpose: str, ok: bool) -> None:
    require_tools("openssl")
    result = run_bounded(
        ["openssl", "verify", "-purpose", purpose, "-CAfile", str(getattr(pki, ca).cert_path),
         str(getattr(pki, leaf).cert_path)],
        timeout=10,
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr


# --- processes -----------------------------------------------------------------------


def test_timeout_wrapper_ends_a_hung_process(procs: ProcessGroup) -> None:
    proc = procs.start(["sleep", "30"], timeout=0.3, stdin_pipe=False)
    assert proc.wait(10) == 124  # coreutils timeout: "timed out"


def test_stop_terminates_the_whole_process_group(procs: ProcessGroup) -> None:
    proc = procs.start(["sh", "-c", "sleep 300 & echo $!; wait"], name="sleeper")
    assert wait_until(lambda: proc.stdout().strip().isdigit(), 5), proc.describe()
    child = int(proc.stdout().strip())
    assert _alive(child)
    procs.stop(proc)
    assert proc.returncode is not None
    assert wait_until(lambda: not _alive(child), 5)


def test_stop_falls_back_to_sigkill_for_the_group(procs: ProcessGroup) -> None:
    # The shell and its sleep ignore SIGTERM; only the group SIGKILL ends them.
    proc = procs.start(["sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait"], name="stubborn")
    assert wait_until(lambda: proc.stdout().strip().isdigit(), 5), proc.describe()
    child = int(proc.stdout().strip())
    procs.stop(proc, grace=0.3)
    assert proc.returncode is not None
    assert wait_until(lambda: not _alive(child), 5)


# --- real DTLS peers -----------------------------------------------------------------


def test_openssl_server_and_client_exchange_data_both_ways(
    pki: Pki, procs: ProcessGroup, udp_port: int
) -> None:
    """OpenSSL talks to OpenSSL over DTLS 1.2 with mutual ECDSA auth on our PKI."""
    require_tools("openssl")
    server = procs.start(
        ["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{udp_port}", "-naccept", "1",
         "-cert", str(pki.server.cert_path), "-key", str(pki.server.key_path),
         "-CAfile", str(pki.ca.cert_path), "-Verify", "1", "-verify_return_error"],
        name="s_server", timeout=30,
    )
    assert wait_until(lambda: udp_port_bound(udp_port), 10), procs.describe()
    client = procs.start(
        ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{udp_port}",
         "-cert", str(pki.client.cert_path), "-key", str(pki.client.key_path),
         "-CAfile", str(pki.ca.cert_path), "-verify_return_error", "-verify_ip", SERVER_IP],
        name="s_client", timeout=30,
    )
    assert client.wait_for("Verify return code: 0 (ok)", 15), procs.describe()
    client.send("harness-from-client-4711\n")
    assert server.wait_for("harness-from-client-4711", 10), procs.describe()
    server.send("harness-from-server-0815\n")
    assert client.wait_for("harness-from-server-0815", 10), procs.describe()
    client.close_stdin()  # s_client sends close_notify at EOF
    assert client.wait(15) == 0, procs.describe()
    assert server.wait(15) == 0, procs.describe()


def test_run_in_private_netns_sees_only_an_up_loopback(root: None) -> None:
    require_tools("unshare", "ip")
    result = run_bounded(run_in_private_netns(["ip", "-o", "link", "show"]), timeout=10)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and ": lo:" in lines[0], result.stdout
    assert ",UP" in lines[0], result.stdout


def test_gnutls_server_and_client_in_one_private_netns(
    pki: Pki, procs: ProcessGroup, root: None
) -> None:
    """gnutls-serv binds every address, so it and its client share a private namespace."""
    require_tools("gnutls-serv", "gnutls-cli", "unshare", "nsenter", "ip")
    ns = procs.private_netns(timeout=60)
    assert os.readlink(f"/proc/{ns.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    port = 5684  # the namespace is empty, so any port is free
    ns.start(
        ["gnutls-serv", "-u", "-p", str(port), "--echo",
         "--x509certfile", str(pki.server.cert_path), "--x509keyfile", str(pki.server.key_path),
         "--x509cafile", str(pki.ca.cert_path), "--require-client-cert", "--verify-client-cert"],
        name="gnutls-serv", timeout=30,
    )
    assert wait_until(lambda: ns.udp_port_bound(port), 10), procs.describe()
    client = ns.start(
        ["gnutls-cli", "-u", "-p", str(port), "--priority", GNUTLS_DTLS12,
         "--x509cafile", str(pki.ca.cert_path),
         "--x509certfile", str(pki.client.cert_path), "--x509keyfile", str(pki.client.key_path),
         SERVER_IP],
        name="gnutls-cli", timeout=30,
    )
    assert client.wait_for("Handshake was completed", 15, stream="any"), procs.describe()
    client.send("harness-echo-2718\n")
    assert client.wait_for("harness-echo-2718", 10), procs.describe()
    client.close_stdin()
    assert client.wait(15) == 0, procs.describe()


# --- the CI rule ---------------------------------------------------------------------


def _run_inner_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # hypothesis etc. are not needed in there
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )


def _write_inner_suite(tmp_path: Path, module_skip: bool) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nxfail_strict = true\n")
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    if module_skip:
        body = "import pytest\npytest.skip('tool missing: apt-get install it (make deps does)', allow_module_level=True)\n"
    else:
        body = textwrap.dedent(
            """
            import pytest

            def test_skipped():
                pytest.skip("tool missing: apt-get install it (make deps does)")

            @pytest.mark.xfail(reason="known bug")
            def test_expected_failure():
                assert False

            def test_passes():
                pass
            """
        )
    (tmp_path / "test_inner.py").write_text(body)


@pytest.mark.parametrize("module_skip", [False, True])
def test_ci_turns_skips_into_failures(tmp_path: Path, module_skip: bool) -> None:
    _write_inner_suite(tmp_path, module_skip)

    # Without CI a skip stays a skip (exit 5, "no tests ran", when the whole module skips).
    ok_status = pytest.ExitCode.NO_TESTS_COLLECTED if module_skip else pytest.ExitCode.OK
    relaxed = _run_inner_pytest(tmp_path, ci=None)
    assert relaxed.returncode == ok_status, relaxed.stdout + relaxed.stderr
    assert "skipped" in relaxed.stdout

    strict = _run_inner_pytest(tmp_path, ci="true")
    assert strict.returncode != 0, strict.stdout
    assert "CI must run every test" in strict.stdout
    assert "tool missing" in strict.stdout
    if not module_skip:
        assert "1 failed, 1 passed, 1 xfailed" in strict.stdout, strict.stdout
