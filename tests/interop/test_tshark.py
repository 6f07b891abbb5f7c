"""Wireshark's DTLS dissector (tshark 4.0) as an independent oracle of our wire format.

Each test captures one association on `lo` with tshark, has our client write an NSS key
log (`--keylog`), and then reads the capture back with that key log to check that:

1. no DTLS frame is malformed or carries an expert warning (the filter of peers.md);
2. the decrypted application data (`data.data`) holds our unique lines, in both directions;
3. the handshake messages and the negotiated cipher suite are the expected ones (the
   Finished messages only show up if tshark could decrypt them with our key log);
4. the close_notify alerts decrypt;
5. with `--mtu 300`, no UDP payload exceeds 300 bytes and the handshake really was
   fragmented.

Cells: our client ↔ our server (ECDHE-ECDSA AES-128-GCM with MTU 300, and ECDHE-PSK
ChaCha20), and our client → `openssl s_server` (ECDHE-ECDSA ChaCha20). The cipher suite
codes are written out from the IANA registry rather than taken from dtlsvpn.

The server always starts first on an OS-assigned port, which it announces; tshark is then
started with a capture filter for that port, and the client only once tshark is capturing.
Before tshark is stopped, a sentinel datagram drains the capture (tests/interop/capture.py
says how); the analysis leaves the sentinel out.

tshark 4.0 (Debian 12) cannot decrypt DTLS 1.2 ChaCha20-Poly1305 at all, not even
between two OpenSSL peers: its debug log (`-o tls.debug_file:F`) shows the nonce of the
first epoch-1 record equal to the write IV, i.e. built from the 48-bit sequence number
without the epoch that RFC 7905 §2 puts in the upper 16 bits. For ChaCha20 cells on
tshark 4.0 the checks that need decryption are therefore replaced by structural ones
(encrypted Finished, data and alert records present in epoch 1), plus an assertion that
nothing was decrypted: a tshark that can decrypt them fails it and asks for the full checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

from tests.interop.capture import (
    READ_TIMEOUT,
    TLS12_CID,
    Capture,
    Frame,
    start_capture,
    stop_capture,
)
from tests.interop.harness import (
    PROC_TIMEOUT,
    STEP_TIMEOUT,
    announced_port,
    expect,
    start_our_server,
    wait_exit,
)
from tests.interop.peers import (
    CELL_BY_ID,
    OUR_ENV,
    openssl_server,
    our_client,
    our_server,
    unique,
)
from tests.pki import Pki
from tests.util import Proc, ProcessGroup, require_tools, run_bounded

pytestmark = pytest.mark.usefixtures("root", "tshark")

# IANA TLS Cipher Suites registry.
TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 = 0xC02B
TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCA9
TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256 = 0xCCAC

# Handshake types (RFC 5246 §7.4, RFC 6347 §4.3.2).
CLIENT_HELLO, SERVER_HELLO, HELLO_VERIFY_REQUEST, NEW_SESSION_TICKET = 1, 2, 3, 4
CERTIFICATE, SERVER_KEY_EXCHANGE, SERVER_HELLO_DONE = 11, 12, 14
CLIENT_KEY_EXCHANGE, FINISHED = 16, 20
CLOSE_NOTIFY = 0
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23  # content types
CHACHA20_SUITES = {TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                   TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256}

CLIENT_SENDS = {CLIENT_HELLO, CLIENT_KEY_EXCHANGE, FINISHED}
SERVER_SENDS_ECDSA = {HELLO_VERIFY_REQUEST, SERVER_HELLO, CERTIFICATE, SERVER_KEY_EXCHANGE,
                      SERVER_HELLO_DONE, FINISHED}
SERVER_SENDS_PSK = SERVER_SENDS_ECDSA - {CERTIFICATE}

MTU = 300
UDP_HEADER = 8  # udp.length counts the 8-byte UDP header

@pytest.fixture
def tshark() -> None:
    require_tools("tshark")


@cache
def tshark_version() -> tuple[int, int]:
    out = run_bounded(["tshark", "--version"], READ_TIMEOUT).stdout
    match = re.search(r"TShark \(Wireshark\) (\d+)\.(\d+)", out)
    assert match, f"cannot read tshark's version from {out[:200]!r}"
    return int(match.group(1)), int(match.group(2))


def tshark_decrypts(suite: int) -> bool:
    """False where tshark is known not to decrypt `suite` in DTLS 1.2 (module docstring)."""
    return suite not in CHACHA20_SUITES or tshark_version() > (4, 0)


def converse(server: Proc, client: Proc, *, server_echoes: bool) -> tuple[str, list[str]]:
    """Line A client→server (echoed back if `server_echoes`), line B server→client; close.

    Returns A and the lines the server must have sent.
    """
    to_server, to_client = unique("ours-to-server"), unique("server-to-ours")
    client.send(to_server + "\n")
    expect(client, "handshake: ", "stderr")
    expect(server, to_server, "stdout")
    if server_echoes:
        expect(client, to_server, "stdout")
    server.send(to_client + "\n")
    expect(client, to_client, "stdout")
    client.close_stdin()
    rc = wait_exit(client, STEP_TIMEOUT)
    assert rc == 0, f"our client exited with {rc}\n{client.describe()}\n{server.describe()}"
    return to_server, [to_server, to_client] if server_echoes else [to_client]


def keylog_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith("CLIENT_RANDOM ")]


def check_capture(cap: Capture, *, client_line: str, server_lines: Sequence[str],
                  suite: int, server_types: set[int], server_may_add: frozenset[int] = frozenset(),
                  server_is_ours: bool = True, mtu: int | None = None) -> list[Frame]:
    """Checks 1–5 of the module docstring on one capture; returns its frames."""
    flagged = cap.malformed()
    assert flagged == "", (
        f"tshark flags DTLS frames {flagged.split()} as malformed or with warnings:\n"
        f"{cap.expert_info()}"
    )

    frames = cap.frames()
    from_server = [f for f in frames if f.src_port == cap.port]
    from_client = [f for f in frames if f.src_port != cap.port]
    assert from_server and from_client, f"capture lacks a direction: {frames}"
    decrypted = tshark_decrypts(suite)

    client_data = b"".join(d for f in from_client for d in f.app_data)
    server_data = b"".join(d for f in from_server for d in f.app_data)
    if decrypted:
        assert (client_line + "\n").encode() in client_data, (
            f"client→server decrypted data {client_data!r} lacks {client_line!r}")
        for line in server_lines:
            assert (line + "\n").encode() in server_data, (
                f"server→client decrypted data {server_data!r} lacks {line!r}")
    else:
        assert not client_data and not server_data, (
            f"tshark {tshark_version()} now decrypts suite {suite:#06x}: "
            "make tshark_decrypts() say so, to get the full checks")
        for side, side_frames in (("client", from_client), ("server", from_server)):
            epoch1 = [ct for f in side_frames for ct, epoch in f.records if epoch == 1]
            if TLS12_CID in epoch1:
                # RFC 9146 hides the real type: Finished, data and close_notify are
                # all tls12_cid records, and every epoch-1 record must be one.
                assert set(epoch1) == {TLS12_CID} and len(epoch1) >= 3, (
                    f"{side}: epoch-1 records with a CID: {epoch1}")
            else:
                assert {HANDSHAKE, APPLICATION_DATA} <= set(epoch1), (
                    f"{side}: no encrypted Finished or application data in epoch 1: {epoch1}")

    expected_client = CLIENT_SENDS if decrypted else CLIENT_SENDS - {FINISHED}
    expected_server = server_types if decrypted else server_types - {FINISHED}
    client_types = {t for f in from_client for t in f.handshake_types}
    seen_server_types = {t for f in from_server for t in f.handshake_types}
    assert client_types == expected_client, f"client handshake types {sorted(client_types)}"
    assert expected_server <= seen_server_types <= expected_server | server_may_add, (
        f"server handshake types {sorted(seen_server_types)}, expected {sorted(expected_server)}")
    chosen = {s for f in from_server for s in f.suites}
    assert chosen == {suite}, f"ServerHello suites {[hex(s) for s in chosen]}, want {suite:#06x}"
    offered = {s for f in from_client for s in f.suites}
    assert suite in offered, f"ClientHello offered {[hex(s) for s in offered]}"

    def closes(side_frames: list[Frame]) -> bool:
        """A close_notify, or where tshark cannot decrypt, an epoch-1 alert record."""
        if decrypted:
            return any(CLOSE_NOTIFY in f.alerts for f in side_frames)
        if any(r == (ALERT, 1) for f in side_frames for r in f.records):
            return True
        # RFC 9146 hides the type: the last datagram is then one alert-sized
        # tls12_cid record (2-byte alert + real type + 16-byte tag, CID <= 32).
        last = side_frames[-1] if side_frames else None
        return (last is not None and last.records == ((TLS12_CID, 1),)
                and last.udp_length <= UDP_HEADER + 13 + 32 + 19)

    assert closes(from_client), "no close_notify from our client"
    if server_is_ours:
        assert closes(from_server), "no close_notify from our server"

    if mtu is not None:
        too_big = [(f.number, f.udp_length - UDP_HEADER) for f in frames
                   if f.udp_length > mtu + UDP_HEADER]
        assert not too_big, f"(frame, UDP payload) above --mtu {mtu}: {too_big}"
        assert any(off > 0 for f in from_server for off in f.fragment_offsets), (
            f"--mtu {mtu} did not fragment the server's flight")
    return frames


def run_ours_both_sides(procs: ProcessGroup, pki: Pki, tmp_path: Path, cell_id: str,
                        mtu: int | None) -> tuple[Capture, str, list[str]]:
    """Our server (--echo --once) and our client, captured; both write key logs."""
    cell = CELL_BY_ID[cell_id]
    client_keys, server_keys = tmp_path / "client.keys", tmp_path / "server.keys"
    pcap = tmp_path / "cap.pcapng"
    server, port = start_our_server(
        procs, our_server(cell, pki, mtu, "--echo", "--keylog", str(server_keys)))
    capture = start_capture(procs, port, pcap)
    client = procs.start(our_client(cell, pki, port, mtu, "--keylog", str(client_keys)),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    client_line, server_lines = converse(server, client, server_echoes=True)
    rc = wait_exit(server, STEP_TIMEOUT)
    assert rc == 0, f"our server --once exited with {rc}\n{server.describe()}"
    stop_capture(procs, capture, pcap, port)
    assert keylog_lines(client_keys), "our client wrote no CLIENT_RANDOM line"
    assert keylog_lines(server_keys) == keylog_lines(client_keys)
    return Capture(pcap, port, client_keys), client_line, server_lines


def test_ours_ecdsa_aes128gcm_mtu300(pki: Pki, procs: ProcessGroup, tmp_path: Path) -> None:
    cap, client_line, server_lines = run_ours_both_sides(
        procs, pki, tmp_path, "ecdsa-aes128gcm", MTU)
    check_capture(cap, client_line=client_line, server_lines=server_lines,
                  suite=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                  server_types=SERVER_SENDS_ECDSA, mtu=MTU,
                  server_may_add=frozenset({NEW_SESSION_TICKET}))


def test_ours_ecdhe_psk_chacha20(pki: Pki, procs: ProcessGroup, tmp_path: Path) -> None:
    cap, client_line, server_lines = run_ours_both_sides(
        procs, pki, tmp_path, "ecdhepsk-chacha20", None)
    check_capture(cap, client_line=client_line, server_lines=server_lines,
                  suite=TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
                  server_types=SERVER_SENDS_PSK,
                  server_may_add=frozenset({NEW_SESSION_TICKET}))


def test_our_client_openssl_chacha20(pki: Pki, procs: ProcessGroup, tmp_path: Path) -> None:
    require_tools("openssl")
    cell = CELL_BY_ID["ecdsa-chacha20"]
    keys, pcap = tmp_path / "client.keys", tmp_path / "cap.pcapng"
    server = procs.start(openssl_server(cell, pki, None), name="openssl-s_server")
    port = announced_port(server, "ACCEPT ", "stdout")
    capture = start_capture(procs, port, pcap)
    client = procs.start(our_client(cell, pki, port, None, "--keylog", str(keys)),
                         name="ours-client", env=OUR_ENV, timeout=PROC_TIMEOUT)
    client_line, server_lines = converse(server, client, server_echoes=False)
    stop_capture(procs, capture, pcap, port)
    check_capture(Capture(pcap, port, keys), client_line=client_line, server_lines=server_lines,
                  suite=TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                  server_types=SERVER_SENDS_ECDSA, server_may_add=frozenset({NEW_SESSION_TICKET}),
                  server_is_ours=False)
