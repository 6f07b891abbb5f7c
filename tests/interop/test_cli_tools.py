"""`dtlsvpn dtls server|client`: argument handling, and our client against our server.

Argument errors run in-process through `main()` (exit status 2, a message naming
the problem or the file); the socket tests run the tools as subprocesses, as the
interop matrix does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dtlsvpn.cli.argtypes import hostport as parse_hostport
from dtlsvpn.cli.main import main
from tests.interop.harness import (
    STEP_TIMEOUT,
    expect,
    expect_re,
    start_our_server,
    wait_exit,
)
from tests.interop.peers import HANDSHAKE_RE, OUR_ENV, PSK_HEX, ours, unique
from tests.pki import Pki
from tests.util import ProcessGroup, free_udp_port


@pytest.mark.parametrize(("text", "addr"), [
    ("127.0.0.1:4433", ("127.0.0.1", 4433)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535)),
    (":9", ("", 9)),
])
def test_parse_hostport(text: str, addr: tuple[str, int]) -> None:
    assert parse_hostport(text) == addr


@pytest.mark.parametrize("text", ["127.0.0.1", "::1:5", "[::1]5", "[::1]", "host:65536",
                                  "host:-1", "host:x"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_hostport(text)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["dtls"], "required"),
    (["dtls", "server"], "--listen"),
    (["dtls", "server", "--listen", "nope"], "HOST:PORT"),
    (["dtls", "server", "--listen", "127.0.0.1:0"], "--cert/--key or --psk"),
    (["dtls", "server", "--listen", "127.0.0.1:0", "--psk", "zz", "--psk-identity", "a"],
     "not a hex string"),
    (["dtls", "server", "--listen", "127.0.0.1:0", "--psk", PSK_HEX], "go together"),
    (["dtls", "client", "127.0.0.1:1", "--insecure", "--ciphers", "TLS_BOGUS"],
     "unknown cipher suite"),
    (["dtls", "client", "127.0.0.1:1"], "--insecure"),
    (["dtls", "client", "127.0.0.1:1", "--insecure", "--mtu", "20"], "MTU"),
    (["dtls", "client", "127.0.0.1:1", "--insecure", "--timeout", "-1"], "seconds"),
])
def test_argument_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _usage_error(argv, capsys)


def test_unreadable_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-ca.pem"
    err = _usage_error(["dtls", "client", "127.0.0.1:1", "--ca", str(missing)], capsys)
    assert str(missing) in err


def test_garbage_certificate_is_named(tmp_path: Path, pki: Pki,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    err = _usage_error(["dtls", "server", "--listen", "127.0.0.1:0", "--cert", str(junk),
                        "--key", str(pki.server.key_path)], capsys)
    assert str(junk) in err


def test_ciphers_accept_openssl_names(capsys: pytest.CaptureFixture[str]) -> None:
    # A valid list gets past parsing and fails later, on the missing credentials.
    err = _usage_error(["dtls", "server", "--listen", "127.0.0.1:0", "--ciphers",
                        "ECDHE-ECDSA-AES128-GCM-SHA256,TLS_PSK_WITH_AES_128_GCM_SHA256"], capsys)
    assert "unknown cipher suite" not in err


@pytest.mark.parametrize(("listen", "host"), [("127.0.0.1:0", "127.0.0.1"),
                                              ("[::1]:0", "[::1]")], ids=["ipv4", "ipv6"])
def test_our_client_our_server(listen: str, host: str, pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, ours(
        "server", "--listen", listen, "--once", "--echo", "--cert", str(pki.server.cert_path),
        "--key", str(pki.server.key_path)))
    server.close_stdin()  # stdin EOF must not stop the server
    line = unique("echo-me")
    client = procs.start(ours("client", f"{host}:{port}", "--ca", str(pki.ca.cert_path),
                              "--server-name", "server.test", "--linger", "0.3"),
                         name="ours-client", env=OUR_ENV)
    client.send(line + "\n")
    expect(client, line)  # echoed back by our server
    expect(server, line)
    client.close_stdin()
    assert wait_exit(client, STEP_TIMEOUT) == 0, client.describe()
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
    for proc in (client, server):
        assert expect_re(proc, HANDSHAKE_RE, "stderr")["ems"] == "yes"


def test_client_handshake_timeout(procs: ProcessGroup) -> None:
    # Nobody listens: the client retransmits into the void and gives up at --timeout.
    client = procs.start(ours("client", f"127.0.0.1:{free_udp_port()}", "--insecure",
                              "--timeout", "1"), name="ours-client", env=OUR_ENV)
    assert wait_exit(client, STEP_TIMEOUT) == 1, client.describe()
    assert "error: handshake timed out" in client.stderr()
