"""Interop of the TLS-over-TCP transport (``dtlsvpn dtls server|client --tcp``).

The TCP fallback speaks plain TLS 1.2 with the SP framing on top; the SP header is
ours alone, so these cells run plain TLS (the tools' default without ``--sp``).  The
same cells as the DTLS matrix (``peers.CELLS``: every suite and auth mode), both
directions, against:

- OpenSSL 3 ``s_server|s_client -tls1_2`` on 127.0.0.1 (port 0 for s_server);
- GnuTLS ``gnutls-serv|gnutls-cli`` over TCP (no ``-u``); gnutls-serv binds every
  address, so it runs in a private network namespace with our client, as in the DTLS
  cells; gnutls-cli 3.7.9 crashes after an ECDHE-PSK handshake (peers.md), so that
  cell runs against gnutls-serv only;
- tickets: OpenSSL ``-sess_out``/``-sess_in`` against our server, and our client's
  ``--sess-out``/``--sess-in`` against ``s_server``;
- heartbeats (RFC 6520) with GnuTLS, the only heartbeat peer: ``gnutls-serv -b --echo``
  pings us on ``**HEARTBEAT**`` and blocks until our pong, and answers our keepalives;
  ``gnutls-cli -b`` answers the keepalives of our server.

Each cell checks the suite as both sides name it, EMS, a unique line each way, and a
clean close (our tool exits 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.interop.harness import (
    PROC_TIMEOUT,
    STEP_TIMEOUT,
    announced_port,
    expect,
    expect_re,
    our_client_exchange,
    their_client_exchange,
    wait_exit,
)
from tests.interop.peers import (
    CELL_BY_ID,
    CELLS,
    GNUTLS_PORT,
    OUR_ENV,
    Cell,
    gnutls_client,
    gnutls_server,
    openssl_client,
    openssl_server,
    our_client,
    our_server,
    unique,
)
from tests.pki import Pki
from tests.util import PrivateNetns, Proc, ProcessGroup, wait_until

pytestmark = pytest.mark.interop

TLS_HANDSHAKE_RE = re.compile(
    r"^handshake: TLSv1\.2 (?P<suite>TLS_\w+) ems=(?P<ems>yes|no) resumed=(?P<resumed>yes|no)"
    r" heartbeat=(?P<heartbeat>yes|no)", re.M)
TLS_STATS_RE = re.compile(
    r"^stats: records_sent=(\d+) bytes_sent=(\d+) bytes_received=(\d+) heartbeats_sent=(\d+)"
    r" probes_sent=\d+ heartbeats_answered=(\d+)", re.M)
RTT_RE = re.compile(r"^heartbeat: rtt=[\d.]+ms", re.M)
Starter = Callable[..., Proc]

cells = pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
GNUTLS_CLIENT_CELLS = [c for c in CELLS if c.id != "ecdhepsk-chacha20"]


# --- command lines: the DTLS builders, turned into TLS over TCP ----------------------


def _tls(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        if a == "-dtls1_2":
            out.append("-tls1_2")
        elif a == "-u":
            continue
        else:
            out.append(a.replace("+VERS-DTLS1.2", "+VERS-TLS1.2"))
    return out


def ours_tcp(argv: list[str], *extra: str) -> list[str]:
    i = argv.index("dtls") + 2  # after "dtls server|client"
    return [*argv[:i], "--tcp", *argv[i:], *extra]


def tcp_listening(port: int, pid: int | str = "self") -> bool:
    """A TCP socket in LISTEN state on ``port`` in the namespace of ``pid``."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                return True
    return False


# --- conversations ---------------------------------------------------------------------


def _outcome(proc: Proc) -> tuple[re.Match[str], re.Match[str]]:
    return expect_re(proc, TLS_HANDSHAKE_RE, "stderr"), expect_re(proc, TLS_STATS_RE, "stderr")


def our_client_talks(start: Starter, argv: Sequence[str], server: Proc, *,
                     server_echoes: bool) -> tuple[re.Match[str], Proc]:
    client = our_client_exchange(start, argv, server, server_echoes=server_echoes,
                                 name="ours-tcp-client")
    return _outcome(client)[0], client


def start_ours(procs: ProcessGroup, argv: Sequence[str]) -> tuple[Proc, int]:
    server = procs.start(list(argv), name="ours-tcp-server", env=OUR_ENV, timeout=PROC_TIMEOUT)
    return server, announced_port(server, "listening on ", "stderr")


def their_client_talks(procs: ProcessGroup, server: Proc, argv: Sequence[str]
                       ) -> tuple[re.Match[str], Proc]:
    client = their_client_exchange(procs, server, argv, grace=5.0, name="peer-tcp-client")
    return _outcome(server)[0], client


def openssl_port(server: Proc) -> int:
    return announced_port(server, "ACCEPT ", "stdout")


def start_gnutls_tcp(netns: PrivateNetns, argv: list[str]) -> Proc:
    server = netns.start(argv, name="gnutls-serv-tcp")
    assert wait_until(lambda: tcp_listening(GNUTLS_PORT, netns.pid)
                      or server.returncode is not None, 10.0), server.describe()
    assert server.returncode is None, server.describe()
    return server


def gnutls_description_re(cell: Cell) -> re.Pattern[str]:
    return re.compile(cell.gnutls_description_re().pattern.replace(r"\(DTLS1\.2", r"\(TLS1\.2"),
                      re.M)


# --- OpenSSL -------------------------------------------------------------------------------


@pytest.mark.usefixtures("openssl")
@cells
def test_our_tcp_client_openssl_server(cell: Cell, pki: Pki, procs: ProcessGroup) -> None:
    server = procs.start(_tls(openssl_server(cell, pki, None)), name="openssl-s_server-tls")
    port = openssl_port(server)
    hs, _ = our_client_talks(procs.start, ours_tcp(our_client(cell, pki, port, None)), server,
                             server_echoes=False)
    assert hs["suite"] == cell.iana and hs["ems"] == "yes"
    expect(server, f"CIPHER is {cell.openssl}\n")
    if cell.auth == "mutual":
        expect(server, "client.test", "any")


@pytest.mark.usefixtures("openssl")
@cells
def test_openssl_client_our_tcp_server(cell: Cell, pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_ours(procs, ours_tcp(our_server(cell, pki, None)))
    hs, client = their_client_talks(procs, server, _tls(openssl_client(cell, pki, port, None)))
    assert hs["suite"] == cell.iana and hs["ems"] == "yes"
    expect_re(client, re.compile(rf"Cipher is {re.escape(cell.openssl)}$", re.M))
    expect(client, "Extended master secret: yes")
    if cell.auth == "mutual":
        assert "client.test" in server.stderr()


@pytest.mark.usefixtures("openssl")
def test_openssl_client_resumes_with_our_ticket(pki: Pki, procs: ProcessGroup,
                                                 tmp_path: Path) -> None:
    cell = CELL_BY_ID["ecdsa-aes128gcm"]
    sess = tmp_path / "sess.pem"
    keys = tmp_path / "ticket.keys"  # both server processes share the ticket keys
    base = _tls(openssl_client(cell, pki, 0, None))
    for n, flag in enumerate(("-sess_out", "-sess_in")):
        server, port = start_ours(procs, ours_tcp(our_server(cell, pki, None), "--ticket-keys",
                                                  str(keys)))
        argv = [a.replace("127.0.0.1:0", f"127.0.0.1:{port}") for a in base]
        hs, client = their_client_talks(procs, server, [*argv, flag, str(sess)])
        assert hs["resumed"] == ("yes" if n else "no")
        expect(client, "Reused, TLSv1.2" if n else "New, TLSv1.2")


@pytest.mark.usefixtures("openssl")
def test_our_client_resumes_with_openssl_ticket(pki: Pki, procs: ProcessGroup,
                                                tmp_path: Path) -> None:
    cell = CELL_BY_ID["ecdsa-aes128gcm"]
    sess = tmp_path / "ours.sess"
    # One s_server for both connections: its ticket keys live as long as the process.
    argv = [a if a != "1" else "2" for a in _tls(openssl_server(cell, pki, None))]
    server = procs.start([*argv, "-no_cache"], name="openssl-s_server-tls")
    port = openssl_port(server)
    for n, flag in enumerate(("--sess-out", "--sess-in")):
        hs, _ = our_client_talks(procs.start, ours_tcp(our_client(cell, pki, port, None),
                                                       flag, str(sess)),
                                 server, server_echoes=False)
        assert hs["resumed"] == ("yes" if n else "no")
        assert sess.exists()


# --- GnuTLS -------------------------------------------------------------------------------


@pytest.mark.usefixtures("gnutls")
@cells
def test_our_tcp_client_gnutls_server(cell: Cell, pki: Pki, netns: PrivateNetns,
                                      pskpasswd: Path) -> None:
    server = start_gnutls_tcp(netns, _tls(gnutls_server(cell, pki, None, pskpasswd)))
    hs, _ = our_client_talks(netns.start, ours_tcp(our_client(cell, pki, GNUTLS_PORT, None)),
                             server, server_echoes=True)
    assert hs["suite"] == cell.iana and hs["ems"] == "yes"
    expect(server, f"Selected cipher suite: {cell.gnutls_suite}\n", "any")


@pytest.mark.usefixtures("gnutls")
@pytest.mark.parametrize("cell", GNUTLS_CLIENT_CELLS, ids=[c.id for c in GNUTLS_CLIENT_CELLS])
def test_gnutls_client_our_tcp_server(cell: Cell, pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_ours(procs, ours_tcp(our_server(cell, pki, None)))
    hs, client = their_client_talks(procs, server, _tls(gnutls_client(cell, pki, port, None)))
    assert hs["suite"] == cell.iana and hs["ems"] == "yes"
    expect_re(client, gnutls_description_re(cell))


@pytest.mark.usefixtures("gnutls")
def test_gnutls_server_pings_our_tcp_client(pki: Pki, netns: PrivateNetns,
                                            pskpasswd: Path) -> None:
    """gnutls-serv -b pings us on **HEARTBEAT** and echoes the next line only after our
    pong; it also answers our keepalives (heartbeat RTT lines)."""
    cell = CELL_BY_ID["ecdsa-aes128gcm"]
    server = start_gnutls_tcp(netns, [*_tls(gnutls_server(cell, pki, None, pskpasswd)), "-b"])
    after = unique("after-ping")
    client = netns.start(ours_tcp(our_client(cell, pki, GNUTLS_PORT, None), "--heartbeat",
                                  "--heartbeat-interval", "0.3", "--linger", "1.5"),
                         name="ours-tcp-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    client.send("**HEARTBEAT**\n")
    expect(client, "handshake: ", "stderr")
    hs = expect_re(client, TLS_HANDSHAKE_RE, "stderr")
    assert hs["heartbeat"] == "yes"
    expect(client, "heartbeat: answered a request from the peer", "stderr")
    client.send(after + "\n")
    expect(client, after, "stdout")
    client.close_stdin()
    assert wait_exit(client, STEP_TIMEOUT) == 0, client.describe()
    stats = expect_re(client, TLS_STATS_RE, "stderr")
    assert int(stats.group(5)) >= 1  # we answered gnutls-serv's ping
    assert int(stats.group(4)) >= 1 and RTT_RE.search(client.stderr()), client.describe()
    assert "ping: The operation timed out" not in server.stdout() + server.stderr()


@pytest.mark.usefixtures("gnutls")
def test_gnutls_client_answers_our_tcp_server_keepalives(pki: Pki, procs: ProcessGroup) -> None:
    cell = CELL_BY_ID["ecdsa-aes128gcm"]
    server, port = start_ours(procs, ours_tcp(our_server(cell, pki, None), "--heartbeat",
                                              "--heartbeat-interval", "0.3"))
    client = procs.start([*_tls(gnutls_client(cell, pki, port, None)), "-b"],
                         name="gnutls-cli-tcp", timeout=PROC_TIMEOUT)
    expect(server, "handshake: ", "stderr")
    hs = expect_re(server, TLS_HANDSHAKE_RE, "stderr")
    assert hs["heartbeat"] == "yes"
    assert wait_until(lambda: len(RTT_RE.findall(server.stderr())) >= 2, STEP_TIMEOUT), \
        server.describe()
    client.close_stdin()
    rc = wait_exit(server, 5.0)
    if rc is None:
        rc = procs.stop(server)
    assert rc == 0, server.describe()
