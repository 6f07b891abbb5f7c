"""Session resumption with RFC 5077 tickets, both ways, through our debug tools.

- our client (`--sess-out`, then `--sess-in`) against `openssl s_server -no_cache`
  (tickets only: no session cache to fall back on) and against `gnutls-serv`;
- `openssl s_client -sess_out/-sess_in` and `gnutls-cli --resume` against our server,
  which keeps running across both connections (its ticket keys live in memory);
- a corrupted ticket: the server refuses it, a full handshake follows, the connection
  works, and `--sess-out` replaces the file with the new session, which then resumes;
- our server's `--ticket-keys` file: a restarted server accepts the tickets of the
  previous run; without the file it cannot; `--no-tickets` issues none.

Each second connection must be reported resumed by both sides where both can say so
(our `resumed=yes`, OpenSSL's `Reused`, GnuTLS's `*** This is a resumed session`).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dtlsvpn.cli.main import main
from dtlsvpn.dtls.session import ClientSession
from tests.interop.harness import (
    PROC_TIMEOUT,
    STEP_TIMEOUT,
    all_matches,
    announced_port,
    expect,
    expect_count,
    our_client_session,
    start_gnutls_server,
    start_our_server,
    wait_exit,
)
from tests.interop.peers import (
    CELL_BY_ID,
    GNUTLS_PORT,
    HANDSHAKE_RE,
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
from tests.util import PrivateNetns, Proc, ProcessGroup

pytestmark = pytest.mark.interop

CELL = CELL_BY_ID["ecdsa-aes128gcm"]
RESUME_CELLS = [CELL_BY_ID[i] for i in ("ecdsa-aes128gcm", "ecdhepsk-chacha20", "mutual-ecdsa")]
CLIENT_RESUME_CELLS = [CELL_BY_ID[i] for i in ("ecdsa-aes128gcm", "psk-aes128gcm",
                                               "mutual-ecdsa")]
cells = pytest.mark.parametrize("cell", RESUME_CELLS, ids=[c.id for c in RESUME_CELLS])


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def resumed_flags(proc: Proc) -> list[str]:
    """`resumed=` of every handshake line of a log, in order."""
    return [m["resumed"] for m in all_matches(proc, HANDSHAKE_RE)]


def multi_server(cell: Cell, pki: Pki, *extra: str) -> list[str]:
    """Our server for several associations in a row (no --once); stopped by SIGTERM."""
    return [arg for arg in our_server(cell, pki, None, *extra) if arg != "--once"]


def peer_client_round(procs: ProcessGroup, server: Proc, argv: list[str], name: str,
                      nth: int) -> Proc:
    """A peer client's whole connection to our multi-association server (its `nth`)."""
    to_ours, from_ours = unique("peer-to-ours"), unique("ours-to-peer")
    client = procs.start(argv, name=name, timeout=PROC_TIMEOUT)
    client.send(to_ours + "\n")
    expect_count(server, "handshake: ", nth, "stderr")
    expect(server, to_ours)
    server.send(from_ours + "\n")  # our server writes stdin to its newest association
    expect(client, from_ours)
    client.close_stdin()
    rc = wait_exit(client, STEP_TIMEOUT)
    assert rc == 0, f"{name} exited with {rc}\n{client.describe()}\n{server.describe()}"
    expect_count(server, "closed: ", nth, "stderr")
    return client


def stop_our_server(procs: ProcessGroup, server: Proc) -> None:
    rc = procs.stop(server)
    assert rc == 0, f"our server exited with {rc}\n{server.describe()}"


# --- our client -------------------------------------------------------------------


@pytest.mark.usefixtures("openssl")
@cells
def test_our_client_resumes_with_openssl(cell: Cell, pki: Pki, procs: ProcessGroup,
                                         tmp_path: Path) -> None:
    sess = tmp_path / "sess"
    server = procs.start([*openssl_server(cell, pki, None), "-no_cache", "-naccept", "2"],
                         name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    first = our_client_session(procs.start, our_client(cell, pki, port, None, "--sess-out",
                                                       str(sess)),
                               server, server_echoes=False, name="ours-client-1")
    assert first.resumed == "no"
    assert f"session: ticket saved to {sess}" in first.stderr
    assert mode_of(sess) == 0o600
    session = ClientSession.decode(sess.read_text())
    assert session.ems and session.ticket
    second = our_client_session(procs.start, our_client(cell, pki, port, None, "--sess-in",
                                                        str(sess)),
                                server, server_echoes=False, name="ours-client-2")
    assert second.resumed == "yes", second.stderr
    assert second.suite == cell.iana
    expect(server, "Reused session-id")
    assert server.stdout().count("Reused session-id") == 1


@pytest.mark.usefixtures("gnutls")
@cells
def test_our_client_resumes_with_gnutls(cell: Cell, pki: Pki, netns: PrivateNetns,
                                        pskpasswd: Path, tmp_path: Path) -> None:
    sess = tmp_path / "sess"
    server = start_gnutls_server(netns, gnutls_server(cell, pki, None, pskpasswd))
    first = our_client_session(netns.start, our_client(cell, pki, GNUTLS_PORT, None,
                                                       "--sess-out", str(sess)),
                               server, server_echoes=True, name="ours-client-1")
    assert first.resumed == "no" and mode_of(sess) == 0o600
    second = our_client_session(netns.start, our_client(cell, pki, GNUTLS_PORT, None,
                                                        "--sess-in", str(sess), "--sess-out",
                                                        str(sess)),
                                server, server_echoes=True, name="ours-client-2")
    assert second.resumed == "yes", second.stderr
    assert second.suite == cell.iana


@pytest.mark.usefixtures("openssl")
def test_corrupted_ticket_falls_back_to_a_full_handshake(pki: Pki, procs: ProcessGroup,
                                                         tmp_path: Path) -> None:
    sess = tmp_path / "sess"
    server = procs.start([*openssl_server(CELL, pki, None), "-no_cache", "-naccept", "3"],
                         name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    our_client_session(procs.start, our_client(CELL, pki, port, None, "--sess-out", str(sess)),
                       server, server_echoes=False, name="ours-client-1")
    good = ClientSession.decode(sess.read_text())
    ticket = bytearray(good.ticket)
    ticket[len(ticket) // 2] ^= 0x01
    corrupted = ClientSession(bytes(ticket), good.suite, good.master_secret, good.ems,
                              good.received_at, good.lifetime_hint)
    sess.write_text(corrupted.encode())
    sess.chmod(0o600)

    second = our_client_session(procs.start, our_client(
        CELL, pki, port, None, "--sess-in", str(sess), "--sess-out", str(sess)),
        server, server_echoes=False, name="ours-client-2")
    assert second.resumed == "no"
    assert "was not accepted: full handshake" in second.stderr
    renewed = ClientSession.decode(sess.read_text())
    assert renewed.ticket not in (corrupted.ticket, good.ticket)
    assert mode_of(sess) == 0o600

    third = our_client_session(procs.start, our_client(CELL, pki, port, None, "--sess-in",
                                                       str(sess)),
                               server, server_echoes=False, name="ours-client-3")
    assert third.resumed == "yes", third.stderr
    expect(server, "Reused session-id")
    assert server.stdout().count("Reused session-id") == 1


# --- our server ---------------------------------------------------------------------


@pytest.mark.usefixtures("openssl")
@cells
def test_openssl_client_resumes_with_our_server(cell: Cell, pki: Pki, procs: ProcessGroup,
                                                tmp_path: Path) -> None:
    sess = tmp_path / "openssl.sess"
    server, port = start_our_server(procs, multi_server(cell, pki))
    argv = openssl_client(cell, pki, port, None)
    first = peer_client_round(procs, server, [*argv, "-sess_out", str(sess)],
                              "openssl-s_client-1", 1)
    expect(first, "New, TLSv1.2")
    second = peer_client_round(procs, server, [*argv, "-sess_in", str(sess)],
                               "openssl-s_client-2", 2)
    expect(second, f"Reused, TLSv1.2, Cipher is {cell.openssl}")
    stop_our_server(procs, server)
    assert resumed_flags(server) == ["no", "yes"], server.describe()


@pytest.mark.usefixtures("gnutls")
@pytest.mark.parametrize("cell", CLIENT_RESUME_CELLS, ids=[c.id for c in CLIENT_RESUME_CELLS])
def test_gnutls_cli_resumes_with_our_server(cell: Cell, pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, multi_server(cell, pki, "--echo"))
    argv = gnutls_client(cell, pki, port, None)
    client = procs.start([*argv[:-1], "--resume", argv[-1]], name="gnutls-cli",
                         timeout=PROC_TIMEOUT)
    expect(client, "*** This is a resumed session")
    line = unique("gnutls-to-ours")
    client.send(line + "\n")
    expect(server, line)
    expect_count(client, line, 1)  # echoed by our server on the resumed association
    client.close_stdin()
    assert wait_exit(client, STEP_TIMEOUT) is not None, client.describe()
    expect_count(server, "handshake: ", 2, "stderr")
    stop_our_server(procs, server)
    assert resumed_flags(server) == ["no", "yes"], server.describe()


def test_ticket_key_file_survives_a_restart(pki: Pki, procs: ProcessGroup,
                                            tmp_path: Path) -> None:
    keys, sess = tmp_path / "ticket.keys", tmp_path / "sess"

    def run(server_extra: tuple[str, ...], client_extra: tuple[str, ...], n: int) -> str:
        server, port = start_our_server(procs, our_server(CELL, pki, None, "--echo",
                                                          *server_extra))
        outcome = our_client_session(procs.start, our_client(CELL, pki, port, None,
                                                             *client_extra),
                                     server, server_echoes=True, name=f"ours-client-{n}")
        assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
        server_flags = resumed_flags(server)
        assert server_flags == [outcome.resumed], server.describe()
        return outcome.resumed

    assert run(("--ticket-keys", str(keys)), ("--sess-out", str(sess)), 1) == "no"
    assert mode_of(keys) == 0o600 and mode_of(sess) == 0o600
    # A new server process, the same key file: the ticket of the first run resumes.
    assert run(("--ticket-keys", str(keys)), ("--sess-in", str(sess)), 2) == "yes"
    # Keys in memory only: another process cannot open the ticket; a full handshake.
    assert run((), ("--sess-in", str(sess)), 3) == "no"


def test_no_tickets_and_unusable_session_files(pki: Pki, procs: ProcessGroup,
                                               tmp_path: Path) -> None:
    sess, garbage = tmp_path / "sess", tmp_path / "garbage"
    garbage.write_text("not a session\n")
    server, port = start_our_server(procs, our_server(CELL, pki, None, "--echo",
                                                      "--no-tickets"))
    outcome = our_client_session(procs.start, our_client(
        CELL, pki, port, None, "--sess-in", str(garbage), "--sess-out", str(sess)),
        server, server_echoes=True)
    assert outcome.resumed == "no"
    assert f"session: {garbage} is not a usable session" in outcome.stderr
    assert "session: no ticket received" in outcome.stderr
    assert not sess.exists()
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()


@pytest.mark.parametrize(("args", "message"), [
    (["server", "--listen", "127.0.0.1:0", "--no-tickets", "--ticket-keys", "K"],
     "exclude each other"),
    (["client", "127.0.0.1:1", "--insecure", "--no-tickets", "--sess-out", "S"], "--no-tickets"),
    (["client", "127.0.0.1:1", "--insecure", "--sess-in", "/nonexistent/sess"],
     "/nonexistent/sess"),
    (["client", "127.0.0.1:1", "--insecure", "--sess-out", "/nonexistent/dir/sess"],
     "not writable"),
])
def test_session_argument_errors(args: list[str], message: str, pki: Pki,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    if args[0] == "server":
        args = [*args, "--cert", str(pki.server.cert_path), "--key", str(pki.server.key_path)]
    assert main(["dtls", *args]) == 2
    assert message in capsys.readouterr().err


def test_ticket_key_file_must_be_private(pki: Pki, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "ticket.keys"
    keys.write_text(f"{'ab' * 16} 1700000000 {'cd' * 32}\n")
    keys.chmod(0o644)
    assert main(["dtls", "server", "--listen", "127.0.0.1:0", "--cert",
                 str(pki.server.cert_path), "--key", str(pki.server.key_path),
                 "--ticket-keys", str(keys)]) == 2
    assert "chmod 600" in capsys.readouterr().err
