"""Interop with OpenSSL 3 (`openssl s_server|s_client -dtls1_2`), both directions.

Every cell × {default MTU, 300-byte UDP payload}: the handshake completes with the
cell's suite as both sides report it, a unique line crosses each way, and the
association ends cleanly. With MTU 300 our side's largest datagram must fit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.interop.harness import (
    announced_port,
    assert_fits_mtu,
    expect,
    expect_re,
    our_client_session,
    start_our_server,
    their_client_session,
)
from tests.interop.peers import (
    CELL_BY_ID,
    CELLS,
    MTUS,
    Cell,
    openssl_client,
    openssl_server,
    our_client,
    our_server,
)
from tests.pki import Pki
from tests.util import ProcessGroup, wait_until

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("openssl")]

cells = pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
mtus = pytest.mark.parametrize("mtu", MTUS, ids=["mtu-default", "mtu-300"])


@mtus
@cells
def test_our_client_openssl_server(cell: Cell, mtu: int | None, pki: Pki,
                                   procs: ProcessGroup) -> None:
    server = procs.start(openssl_server(cell, pki, mtu), name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    outcome = our_client_session(procs.start, our_client(cell, pki, port, mtu), server,
                                 server_echoes=False)
    assert outcome.suite == cell.iana
    assert outcome.ems == "yes"
    expect(server, f"CIPHER is {cell.openssl}\n")
    if cell.auth == "mutual":
        expect(server, "client.test", "any")
    assert_fits_mtu(mtu, outcome.max_datagram)


@mtus
@cells
def test_openssl_client_our_server(cell: Cell, mtu: int | None, pki: Pki,
                                   procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, our_server(cell, pki, mtu))
    outcome, client = their_client_session(procs, server, openssl_client(cell, pki, port, mtu))
    assert outcome.suite == cell.iana
    assert outcome.ems == "yes"
    expect_re(client, re.compile(rf"Cipher is {re.escape(cell.openssl)}$", re.M))
    if cell.auth == "mutual":
        assert "peer certificate:" in outcome.stderr and "client.test" in outcome.stderr
    assert_fits_mtu(mtu, outcome.max_datagram)


def test_keylog_matches_openssl(pki: Pki, procs: ProcessGroup, tmp_path: Path) -> None:
    """Our --keylog line equals OpenSSL's -keylogfile line: same client random, same master."""
    cell = CELL_BY_ID["ecdsa-aes128gcm"]
    theirs, mine = tmp_path / "openssl.keys", tmp_path / "ours.keys"
    server = procs.start([*openssl_server(cell, pki, None), "-keylogfile", str(theirs)],
                         name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    our_client_session(procs.start, our_client(cell, pki, port, None, "--keylog", str(mine)),
                       server, server_echoes=False)

    def lines(path: Path) -> list[str]:
        return [ln for ln in path.read_text().splitlines() if ln.startswith("CLIENT_RANDOM ")]

    assert wait_until(lambda: theirs.exists() and bool(lines(theirs)), 5.0)
    assert lines(mine) == lines(theirs)
