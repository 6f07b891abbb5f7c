"""Heartbeats (RFC 6520) and path MTU discovery with real peers, through our debug tools.

GnuTLS is the only heartbeat peer on the box (peers.md), in three ways:
- `gnutls-serv -b --echo` pings a client when it receives the line `**HEARTBEAT**` and
  blocks until the answer: it echoes our next line only if we answered. That next line is
  sent only once our client logged the answer (`heartbeat: answered ...`, printed after
  the response went out): a line arriving while gnutls-serv waits for its pong would be
  dropped by GnuTLS, not echoed.
- libgnutls through ctypes (tests/interop/gnutls_ctypes.py) pings our server on demand.
- our `--heartbeat` client pings `gnutls-serv -b`: keepalive and PMTU-probe RTT lines.

OpenSSL 3 removed heartbeats: against it the handshake completes with `heartbeat=no` and
we send no heartbeat record at all: our counters say so, and so does a tshark capture
(no record of content type 24 in either direction, no extension 15 in the ServerHello).

Our tool against itself checks the `--pmtu` output over IPv4 and IPv6 (BASE_PLPMTU 1200
and 1280, and 20 more bytes of outer header on IPv6).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtlsvpn.cli.main import main
from tests.interop.capture import Capture, start_capture, stop_capture
from tests.interop.harness import (
    PROC_TIMEOUT,
    STEP_TIMEOUT,
    all_matches,
    announced_port,
    expect,
    expect_re,
    our_client_session,
    start_gnutls_server,
    start_our_server,
    their_client_session,
    wait_exit,
)
from tests.interop.peers import (
    CELL_BY_ID,
    GNUTLS_PORT,
    HANDSHAKE_RE,
    HB_STATS_RE,
    OUR_ENV,
    PMTU_RE,
    RTT_RE,
    gnutls_ctypes_client,
    gnutls_server,
    openssl_client,
    openssl_server,
    our_client,
    our_server,
    ours,
    unique,
)
from tests.pki import Pki
from tests.util import PrivateNetns, Proc, ProcessGroup, require_tools, wait_until

pytestmark = pytest.mark.interop

CELL = CELL_BY_ID["ecdsa-aes128gcm"]
HEARTBEAT_CT = 24  # RFC 6520 §3: ContentType heartbeat
HEARTBEAT_EXT = 15  # RFC 6520 §2: extension heartbeat
SERVER_HELLO = 2
# Negotiate heartbeats but send no request of our own within a test: a fixed MTU turns
# PMTU probing off, and the keepalive interval is longer than any test.
QUIET = ("--mtu", "1400", "--heartbeat-interval", "60")
ANSWERED = "heartbeat: answered a request from the peer"
PINGS = (64, 300, 1000)  # payload + 16 padding; GnuTLS refuses records above its MTU


def hb_stats(proc: Proc) -> dict[str, int]:
    """Our heartbeat counters from the (first) stats line."""
    return {k: int(v) for k, v in expect_re(proc, HB_STATS_RE, "stderr").groupdict().items()}


def keepalive_rtts(proc: Proc) -> int:
    return sum(1 for m in all_matches(proc, RTT_RE) if m["probe"] is None)


def wait_keepalives(proc: Proc, n: int, timeout: float = 15.0) -> None:
    assert wait_until(lambda: keepalive_rtts(proc) >= n or proc.returncode is not None,
                      timeout) and keepalive_rtts(proc) >= n, (
        f"{proc.name}: {keepalive_rtts(proc)} keepalive RTT lines, wanted {n}\n{proc.describe()}")


def finish(proc: Proc) -> None:
    proc.close_stdin()
    rc = wait_exit(proc, STEP_TIMEOUT)
    assert rc == 0, f"{proc.name} exited with {rc}\n{proc.describe()}"


# --- GnuTLS ---------------------------------------------------------------------


@pytest.mark.usefixtures("gnutls")
def test_gnutls_serv_ping_answered_by_our_client(pki: Pki, netns: PrivateNetns,
                                                 pskpasswd: Path) -> None:
    server = start_gnutls_server(netns, [*gnutls_server(CELL, pki, None, pskpasswd), "-b"])
    client = netns.start(our_client(CELL, pki, GNUTLS_PORT, None, "--heartbeat", *QUIET),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    expect(client, "handshake: ", "stderr")
    assert expect_re(client, HANDSHAKE_RE, "stderr")["heartbeat"] == "yes"
    client.send("**HEARTBEAT**\n")
    expect(client, ANSWERED, "stderr")
    line = unique("after-ping")
    client.send(line + "\n")
    expect(client, line)  # gnutls-serv echoes it only after its ping was answered
    finish(client)
    stats = hb_stats(client)
    assert stats["answered"] >= 1
    assert stats["sent"] == 0 and stats["probes"] == 0, stats
    log = server.stdout() + server.stderr()
    assert "Processing 14 bytes command: **HEARTBEAT**" in log, server.describe()
    assert "ping:" not in log, f"gnutls-serv's ping failed\n{server.describe()}"


@pytest.mark.usefixtures("gnutls")
def test_our_heartbeats_answered_by_gnutls_serv(pki: Pki, netns: PrivateNetns,
                                                pskpasswd: Path) -> None:
    server = start_gnutls_server(netns, [*gnutls_server(CELL, pki, None, pskpasswd), "-b"])
    client = netns.start(our_client(CELL, pki, GNUTLS_PORT, None, "--heartbeat", "--pmtu"),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    line = unique("ours-to-gnutls")
    client.send(line + "\n")
    expect(client, line)
    # Keepalives follow once PMTU discovery is done and the link has been idle 0.5 s.
    wait_keepalives(client, 3)
    finish(client)
    rtts = all_matches(client, RTT_RE)
    assert any(m["probe"] is not None for m in rtts), client.describe()
    assert all(float(m["ms"]) < 1000 for m in rtts)
    final = [m for m in all_matches(client, PMTU_RE) if m["final"]]
    assert len(final) == 1 and int(final[0]["plpmtu"]) > 1200, client.describe()
    stats = hb_stats(client)
    assert stats["sent"] >= 3 and stats["probes"] >= 1, stats
    assert "Error" not in server.stdout() + server.stderr(), server.describe()


@pytest.mark.usefixtures("gnutls")
def test_libgnutls_pings_our_server(pki: Pki, procs: ProcessGroup) -> None:
    """Our server with its defaults answers heartbeats (and probes the client's path)."""
    server, port = start_our_server(procs, our_server(CELL, pki, None, "--echo"))
    line = unique("ctypes-to-ours")
    pings = [arg for size in PINGS for arg in ("--ping", str(size))]
    client = procs.start(gnutls_ctypes_client(pki, port, *pings, "--send", line,
                                              "--expect", line),
                         name="libgnutls-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    rc = wait_exit(client, PROC_TIMEOUT)
    assert rc == 0, f"libgnutls client exited with {rc}\n{client.describe()}\n{server.describe()}"
    out = client.stdout()
    assert "heartbeat=yes" in out, client.describe()
    for size in PINGS:
        assert f"pong: size={size}\n" in out, client.describe()
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
    assert expect_re(server, HANDSHAKE_RE, "stderr")["heartbeat"] == "yes"
    assert hb_stats(server)["answered"] >= len(PINGS)


@pytest.mark.usefixtures("gnutls")
def test_no_heartbeat_to_a_client_that_did_not_offer_it(pki: Pki, procs: ProcessGroup) -> None:
    """RFC 6520 §2: without the client's extension our server sends no request at all."""
    server, port = start_our_server(
        procs, our_server(CELL, pki, None, "--heartbeat", "--pmtu", "--heartbeat-interval",
                          "0.5"))
    client = procs.start(gnutls_ctypes_client(pki, port, "--no-heartbeat", "--answer-for", "1.5"),
                         name="libgnutls-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    assert wait_exit(client, PROC_TIMEOUT) == 0, client.describe()
    assert "done: pongs=0 answered=0" in client.stdout(), client.describe()
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
    assert expect_re(server, HANDSHAKE_RE, "stderr")["heartbeat"] == "no"
    stats = hb_stats(server)
    assert stats["sent"] == 0 and stats["probes"] == 0, stats
    assert "pmtu: final none (peer does not accept heartbeats)" in server.stderr()


# --- OpenSSL 3: no heartbeats ------------------------------------------------------


@pytest.mark.usefixtures("openssl", "root")
def test_openssl_server_no_heartbeat_record(pki: Pki, procs: ProcessGroup,
                                            tmp_path: Path) -> None:
    require_tools("tshark")
    keys, pcap = tmp_path / "client.keys", tmp_path / "cap.pcapng"
    server = procs.start(openssl_server(CELL, pki, None), name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    capture = start_capture(procs, port, pcap)
    # --linger 1.5: three keepalive intervals of quiet before close_notify.
    outcome = our_client_session(procs.start, our_client(
        CELL, pki, port, None, "--heartbeat", "--pmtu", "--heartbeat-interval", "0.5",
        "--linger", "1.5", "--keylog", str(keys)), server, server_echoes=False)
    stop_capture(procs, capture, pcap, port)
    assert outcome.heartbeat == "no"
    assert "pmtu: final none (peer does not accept heartbeats)" in outcome.stderr
    assert "heartbeat: rtt=" not in outcome.stderr
    cap = Capture(pcap, port, keys)
    frames = cap.frames()
    assert any(23 in [ct for ct, _ in f.records] for f in frames), "no application data seen"
    hb = [(f.number, f.src_port) for f in frames if any(ct == HEARTBEAT_CT for ct, _ in f.records)]
    assert not hb, f"heartbeat records (frame, source port) in the capture: {hb}"

    def extensions(handshake_type: int) -> set[int]:
        out = cap.tshark("-Y", f"dtls.handshake.type == {handshake_type}", "-T", "fields",
                         "-E", "occurrence=a", "-E", "aggregator=,",
                         "-e", "dtls.handshake.extension.type")
        return {int(v) for v in out.replace("\n", ",").split(",") if v}

    assert HEARTBEAT_EXT in extensions(1), "our ClientHello did not offer heartbeats"
    assert HEARTBEAT_EXT not in extensions(SERVER_HELLO), "OpenSSL 3 accepted heartbeats?"


@pytest.mark.usefixtures("openssl")
def test_openssl_client_our_server_no_heartbeat(pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_our_server(
        procs, our_server(CELL, pki, None, "--heartbeat", "--pmtu", "--heartbeat-interval",
                          "0.5"))
    outcome, _ = their_client_session(procs, server, openssl_client(CELL, pki, port, None))
    assert outcome.heartbeat == "no"
    stats = hb_stats(server)
    assert stats["sent"] == 0 and stats["probes"] == 0, stats


# --- our tools: --heartbeat and --pmtu output ---------------------------------------


@pytest.mark.parametrize(("listen", "host", "ip_header", "base"),
                         [("127.0.0.1:0", "127.0.0.1", 20, 1200),
                          ("[::1]:0", "[::1]", 40, 1280)], ids=["ipv4", "ipv6"])
def test_ours_heartbeat_and_pmtu_output(listen: str, host: str, ip_header: int, base: int,
                                        pki: Pki, procs: ProcessGroup) -> None:
    server, port = start_our_server(procs, ours(
        "server", "--listen", listen, "--once", "--echo", "--cert", str(pki.server.cert_path),
        "--key", str(pki.server.key_path), "--pmtu"))
    client = procs.start(ours("client", f"{host}:{port}", "--ca", str(pki.ca.cert_path),
                              "--server-name", "server.test", "--linger", "0.3",
                              "--heartbeat", "--pmtu"),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    line = unique("echo-me")
    client.send(line + "\n")
    expect(client, line)
    wait_keepalives(client, 2)
    finish(client)
    assert wait_exit(server, STEP_TIMEOUT) == 0, server.describe()
    assert expect_re(client, HANDSHAKE_RE, "stderr")["heartbeat"] == "yes"
    for proc in (client, server):
        lines = all_matches(proc, PMTU_RE)
        changes, final = [m for m in lines if not m["final"]], [m for m in lines if m["final"]]
        assert changes and len(final) == 1, proc.describe()
        assert int(changes[0]["plpmtu"]) == base  # BASE_PLPMTU (RFC 8899 §5.1.2)
        # Loopback's MTU is 64 KiB: the search ends at MAX_PLPMTU (9000), within 16 bytes.
        assert 9000 - 16 < int(final[0]["plpmtu"]) <= 9000, proc.describe()
        # inner = PLPMTU - outer IP - UDP - record overhead, the same overhead throughout.
        overheads = {int(m["plpmtu"]) - int(m["inner"]) - ip_header - 8 for m in lines}
        assert len(overheads) == 1, overheads
        # 13-byte header + 8-byte explicit nonce + 16-byte tag, plus at most a CID and type.
        assert 37 <= overheads.pop() <= 37 + 32 + 1
    assert all_matches(client, RTT_RE), client.describe()


@pytest.mark.parametrize(("args", "message"), [
    (["--pmtu", "--mtu", "1400"], "pick one"),
    (["--no-heartbeat", "--heartbeat"], "--no-heartbeat excludes"),
    (["--no-heartbeat", "--pmtu"], "--no-heartbeat excludes"),
    (["--heartbeat-interval", "0"], "seconds"),
])
def test_heartbeat_argument_errors(args: list[str], message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dtls", "client", "127.0.0.1:1", "--insecure", *args]) == 2
    assert message in capsys.readouterr().err
