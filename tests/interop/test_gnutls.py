"""Interop with GnuTLS 3.7 (`gnutls-serv -u` / `gnutls-cli -u`), both directions.

gnutls-serv binds every address and has no bind option, so it runs in a private
network namespace together with our client (tests.util.PrivateNetns); its port is
fixed (nothing else lives in there) and readiness is the kernel's socket table.
gnutls-serv runs in --echo mode: our line comes back, and its log (-d 4) names the
suite it selected. gnutls-cli 3.7.9 crashes after an ECDHE-PSK handshake, so that
cell only runs against gnutls-serv (peers.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.harness import (
    assert_fits_mtu,
    expect,
    expect_re,
    our_client_session,
    start_gnutls_server,
    start_our_server,
    their_client_session,
)
from tests.interop.peers import (
    CELLS,
    GNUTLS_PORT,
    MTUS,
    Cell,
    gnutls_client,
    gnutls_server,
    our_client,
    our_server,
)
from tests.pki import Pki
from tests.util import PrivateNetns, ProcessGroup

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("gnutls")]

CLIENT_CELLS = [c for c in CELLS if c.id != "ecdhepsk-chacha20"]  # gnutls-cli segfaults

mtus = pytest.mark.parametrize("mtu", MTUS, ids=["mtu-default", "mtu-300"])


@mtus
@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_our_client_gnutls_server(cell: Cell, mtu: int | None, pki: Pki, procs: ProcessGroup,
                                  netns: PrivateNetns, pskpasswd: Path) -> None:
    server = start_gnutls_server(netns, gnutls_server(cell, pki, mtu, pskpasswd))
    outcome = our_client_session(netns.start, our_client(cell, pki, GNUTLS_PORT, mtu), server,
                                 server_echoes=True)
    assert outcome.suite == cell.iana
    assert outcome.ems == "yes"
    expect(server, f"Selected cipher suite: {cell.gnutls_suite}\n", "any")
    assert_fits_mtu(mtu, outcome.max_datagram)


@mtus
@pytest.mark.parametrize("cell", CLIENT_CELLS, ids=[c.id for c in CLIENT_CELLS])
def test_gnutls_client_our_server(cell: Cell, mtu: int | None, pki: Pki,
                                  procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, our_server(cell, pki, mtu))
    outcome, client = their_client_session(procs, server, gnutls_client(cell, pki, port, mtu))
    assert outcome.suite == cell.iana
    assert outcome.ems == "yes"
    expect_re(client, cell.gnutls_description_re())
    if cell.auth == "mutual":
        assert "peer certificate:" in outcome.stderr and "client.test" in outcome.stderr
    assert_fits_mtu(mtu, outcome.max_datagram)
