"""RFC 9146 connection IDs through the debug tools: what the handshake line reports.

No peer on this machine speaks RFC 9146 (OpenSSL 3.0 and GnuTLS 3.7.9 ignore extension
54), so the negotiation is checked between our own tools, and against OpenSSL that the
extension is simply not negotiated and nothing breaks. The record format itself is
checked by tshark in test_tshark.py and by the simulator in tests/sim/test_cid.py.
"""

from __future__ import annotations

import re

import pytest

from tests.interop.harness import (
    STEP_TIMEOUT,
    expect,
    expect_re,
    start_our_server,
    wait_exit,
)
from tests.interop.peers import HANDSHAKE_RE, OUR_ENV, ours, unique
from tests.pki import Pki
from tests.util import ProcessGroup

HEX = re.compile(r"^[0-9a-f]*$")


def _session(pki: Pki, procs: ProcessGroup, server_extra: list[str],
             client_extra: list[str]) -> tuple[str, str]:
    """Our client against our server; the ``cid=`` field of each side's handshake line."""
    server, port = start_our_server(procs, ours(
        "server", "--listen", "127.0.0.1:0", "--once", "--echo",
        "--cert", str(pki.server.cert_path), "--key", str(pki.server.key_path), *server_extra))
    line = unique("cid")
    client = procs.start(ours("client", f"127.0.0.1:{port}", "--ca", str(pki.ca.cert_path),
                              "--server-name", "server.test", "--linger", "0.3",
                              *client_extra),
                         name="ours-client", env=OUR_ENV)
    client.send(line + "\n")
    expect(client, line)  # data flows both ways over whatever record format was agreed
    client.close_stdin()
    assert wait_exit(client, STEP_TIMEOUT) == 0, client.describe()
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
    return (expect_re(client, HANDSHAKE_RE, "stderr")["cid"],
            expect_re(server, HANDSHAKE_RE, "stderr")["cid"])


def _split(cid: str) -> tuple[str, str]:
    rx, tx = cid.split("/")
    rx, tx = ("" if rx == "-" else rx), ("" if tx == "-" else tx)
    assert HEX.match(rx) and HEX.match(tx), cid
    return rx, tx


def test_default_client_asks_for_none_server_for_8_bytes(pki: Pki, procs: ProcessGroup) -> None:
    client_cid, server_cid = _session(pki, procs, [], [])
    c_rx, c_tx = _split(client_cid)
    s_rx, s_tx = _split(server_cid)
    assert (len(c_rx), len(c_tx)) == (0, 16)  # 8 bytes, hex
    assert (s_rx, s_tx) == (c_tx, c_rx)  # what one side sends is what the other expects


@pytest.mark.parametrize("n", [1, 4, 16])
def test_client_cid_length(pki: Pki, procs: ProcessGroup, n: int) -> None:
    client_cid, server_cid = _session(pki, procs, ["--cid", "2"], ["--cid", str(n)])
    c_rx, c_tx = _split(client_cid)
    assert (len(c_rx), len(c_tx)) == (2 * n, 4)
    assert _split(server_cid) == (c_tx, c_rx)


@pytest.mark.parametrize("side", ["client", "server"])
def test_no_cid_on_either_side_means_none(pki: Pki, procs: ProcessGroup, side: str) -> None:
    off = ["--no-cid"]
    client_cid, server_cid = _session(pki, procs, off if side == "server" else [],
                                      off if side == "client" else [])
    assert client_cid == server_cid == "no"


def test_openssl_ignores_the_extension(pki: Pki, procs: ProcessGroup, udp_port: int) -> None:
    port = udp_port
    server = procs.start(
        ["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
         "-cert", str(pki.server.cert_path), "-key", str(pki.server.key_path)],
        name="openssl-server")
    expect(server, "ACCEPT")
    client = procs.start(ours("client", f"127.0.0.1:{port}", "--ca", str(pki.ca.cert_path),
                              "--server-name", "server.test", "--linger", "0.3"),
                         name="ours-client", env=OUR_ENV)
    line = unique("no-cid")
    client.send(line + "\n")
    expect(server, line)
    client.close_stdin()
    assert wait_exit(client, STEP_TIMEOUT) == 0, client.describe()
    assert expect_re(client, HANDSHAKE_RE, "stderr")["cid"] == "no"
