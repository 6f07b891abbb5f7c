"""Refused handshakes on fake devices: each kind gives its server log line and counter,
and a wrong PSK is named on both sides (refusals.py, dtls/failures.py)."""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import socket
import time
from pathlib import Path

import pytest

from dtlsvpn.daemon.refusals import explain
from dtlsvpn.daemon.settings import dtls_config, load_config
from dtlsvpn.daemon.status import format_prometheus, format_text
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import AssociationClosed
from dtlsvpn.errors import AlertDescription
from dtlsvpn.wire.record import parse_datagram
from tests.fakes.devices import FakeDevices
from tests.fakes.world import Host, World
from tests.netns.harness import cert_pair, psk_pair, secret_file
from tests.pki import Pki
from tests.shell.conftest import CLIENT, SERVER, established


def _failures(host: Host) -> dict[str, int]:
    return dict(host.snapshot()["interface"]["handshake_failures"])


def _refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "refused handshake from" in r.getMessage()]


def _run_refusal(world: World, server_conf: Path, client_conf: Path, reason: str
                 ) -> tuple[Host, Host]:
    world.clock.epoch = time.time() - world.clock.now  # the test PKI is valid now
    server = world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: _failures(server).get(reason, 0) >= 1, within=60), (
        _failures(server), _failures(client))
    assert not established(client) and not established(server)
    return server, client


def _replace(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))
    return path


def _check_metric(host: Host, reason: str) -> None:
    snap = host.snapshot()
    prom = format_prometheus([snap])
    assert re.search(rf'^dtlsvpn_handshake_failures_total\{{instance="[^"]*",'
                     rf'reason="{reason}"\}} [1-9]', prom, re.M), prom
    assert f"handshake_failures_{reason}=" in format_text(snap)


def test_wrong_psk_is_named_on_both_sides(world: World, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = psk_pair(tmp_path)
    wrong = secret_file(tmp_path / "wrong.hex", secrets.token_hex(32) + "\n")
    _replace(client_conf, f"PSKFile = {tmp_path / 'psk.hex'}", f"PSKFile = {wrong}")
    start = world.clock.now
    server, client = _run_refusal(world, server_conf, client_conf, "wrong_key")
    assert world.run_until(lambda: _failures(client).get("wrong_key", 0) >= 1, within=30)
    print(f"wrong PSK: both sides said so after {world.clock.now - start:.1f} s (fake clock)")
    (line,) = _refusal_lines(caplog)[:1]
    assert "198.18.0.2" in line and "PSK identity branch" in line, line
    assert "Finished failed authentication — wrong key?" in line, line
    client_lines = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and "handshake failed" in r.getMessage()]
    assert client_lines and "wrong PSK or key?" in client_lines[0], client_lines
    print(line, client_lines[0], sep="\n")
    _check_metric(server, "wrong_key")
    _check_metric(client, "wrong_key")


def test_unknown_psk_identity(world: World, tmp_path: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = psk_pair(tmp_path)
    _replace(client_conf, "PSKIdentity = branch", "PSKIdentity = alice")
    server, client = _run_refusal(world, server_conf, client_conf, "unknown_psk_identity")
    (line,) = _refusal_lines(caplog)[:1]
    assert "PSK identity alice matches no [Peer]" in line, line
    _check_metric(server, "unknown_psk_identity")
    assert world.run_until(lambda: "peer_alert" in _failures(client), within=30)


def test_foreign_ca(world: World, tmp_path: Path, pki: Pki,
                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = cert_pair(tmp_path, pki)
    _replace(client_conf, str(pki.client.cert_path), str(pki.evil_client.cert_path))
    _replace(client_conf, str(pki.client.key_path), str(pki.evil_client.key_path))
    server, _client = _run_refusal(world, server_conf, client_conf, "unknown_ca")
    (line,) = _refusal_lines(caplog)[:1]
    assert "certificate not signed by CA" in line and "CN=client.test" in line, line
    assert "candidates exhausted" not in line, line
    print(line)
    _check_metric(server, "unknown_ca")


def test_no_client_certificate(world: World, tmp_path: Path, pki: Pki,
                               caplog: pytest.LogCaptureFixture) -> None:
    """A bare DTLS client without a certificate (as ``probe`` or ``openssl s_client``
    without -cert are): the daemon's configuration cannot express one."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = cert_pair(tmp_path, pki)
    world.clock.epoch = time.time() - world.clock.now
    server = world.start(server_conf, SERVER)
    conf = dataclasses.replace(dtls_config(load_config(client_conf)), certificate_chain=(),
                               private_key=None)
    port = FakeDevices(world.net, CLIENT).open_udp(socket.AF_INET,
                                                    connect=(SERVER, 4433))
    assoc = Association(conf)
    assoc.connect(world.clock.now, world.clock.wall)
    for _ in range(50):
        for datagram in assoc.datagrams_to_send(world.clock.now):
            port.send(datagram)
        world.run_for(0.1)
        for datagram in port.recv_batch(64)[0]:
            assoc.receive_datagram(datagram, world.clock.now, world.clock.wall)
        if assoc.is_closed:
            break
    closed = [e for e in assoc.pop_events() if isinstance(e, AssociationClosed)]
    assert closed and closed[0].alert == AlertDescription.handshake_failure, closed
    assert _failures(server) == {"no_client_certificate": 1}
    (line,) = _refusal_lines(caplog)
    assert "198.18.0.2" in line and "no client certificate" in line, line
    print(line)
    _check_metric(server, "no_client_certificate")
    # What the client is told, in its words:
    said = explain(closed[0], server=False)
    assert "may require a client certificate" in said, said
    print("client:", said)


def test_common_name_matches_no_peer(world: World, tmp_path: Path, pki: Pki,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = cert_pair(tmp_path, pki)
    _replace(server_conf, "CommonName = client.test", "CommonName = laptop-1")
    server, _client = _run_refusal(world, server_conf, client_conf, "unknown_peer")
    (line,) = _refusal_lines(caplog)[:1]
    assert "CommonName client.test matches no [Peer]" in line, line
    print(line)
    _check_metric(server, "unknown_peer")


def test_client_names_expected_and_presented_server_name(
        world: World, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = cert_pair(tmp_path, pki)
    _replace(client_conf, "ServerName = server.test", "ServerName = vpn.example.net")
    world.clock.epoch = time.time() - world.clock.now
    world.start(server_conf, SERVER)
    client = world.start(client_conf, CLIENT)
    assert world.run_until(lambda: "bad_certificate" in _failures(client), within=30)
    (line,) = [r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING and "handshake failed" in r.getMessage()][:1]
    print(line)
    assert "does not name 'vpn.example.net' (ServerName)" in line, line
    assert "server.test" in line and "candidates exhausted" not in line, line


def test_client_says_what_a_silent_server_never_did(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server that answers the hellos and drops our Finished (as OpenSSL and GnuTLS do
    with a wrong PSK): the client's dial timeout says what it waited for."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = psk_pair(tmp_path, connection_id=False)
    endpoint = ServerEndpoint(dtls_config(load_config(server_conf)))
    port = FakeDevices(world.net, SERVER).open_udp(socket.AF_INET, bind=(SERVER, 4433))
    client = world.start(client_conf, CLIENT)
    for _ in range(150):  # 15 s: past the client's 10 s dial timeout
        world.run_for(0.1)
        received, _error = port.recvfrom_batch(64)
        for data, addr in received:
            if any(r.epoch > 0 for r in parse_datagram(data)[0]):
                continue  # the Finished under other keys: dropped without a word
            assoc, replies = endpoint.receive(data, addr, world.clock.now, world.clock.wall)
            for reply in replies + (assoc.datagrams_to_send(world.clock.now) if assoc else []):
                port.sendto(reply, addr)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    print("\n".join(lines[:3]))
    assert any("no handshake within 10s" in x for x in lines), lines
    said = [x for x in lines if "never accepted our Finished (wrong PSK or key?)" in x]
    assert said and said[0].startswith("peer office: handshake failed: "), lines
    assert _failures(client).get("finished_unanswered", 0) >= 1


# --- over TCP: the same refusals, words and rate limit (daemon/transport.py) ------------------

def _tcp_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in _refusal_lines(caplog) if " over TCP" in m]


def test_wrong_psk_over_tcp_is_a_refusal_on_the_server(world: World, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = psk_pair(tmp_path, transport="tcp")
    wrong = secret_file(tmp_path / "wrong.hex", secrets.token_hex(32) + "\n")
    _replace(client_conf, f"PSKFile = {tmp_path / 'psk.hex'}", f"PSKFile = {wrong}")
    server, _client = _run_refusal(world, server_conf, client_conf, "wrong_key")
    assert server.daemon.role.tcp.refusals is server.daemon.role.refusals  # one rate limit
    (line,) = _tcp_lines(caplog)[:1]
    assert re.match(r"refused handshake from 127\.0\.0\.1:\d+ over TCP: PSK identity branch: "
                    r"Finished failed authentication — wrong key\?$", line), line
    _check_metric(server, "wrong_key")
    client_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                    and "peer office: handshake failed over TCP:" in r.getMessage()]
    assert client_lines, [r.getMessage() for r in caplog.records]
    assert not server.snapshot()["interface"]["tcp_closes"]  # (refusals, not closes)


def test_foreign_ca_over_tcp(world: World, tmp_path: Path, pki: Pki,
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, client_conf = cert_pair(tmp_path, pki, transport="tcp")
    _replace(client_conf, str(pki.client.cert_path), str(pki.evil_client.cert_path))
    _replace(client_conf, str(pki.client.key_path), str(pki.evil_client.key_path))
    server, _client = _run_refusal(world, server_conf, client_conf, "unknown_ca")
    (line,) = _tcp_lines(caplog)[:1]
    assert " over TCP (certificate " in line and "CN=client.test" in line, line
    assert ": certificate not signed by CA: " in line, line
    _check_metric(server, "unknown_ca")


def _raw_tcp(server: Host) -> socket.socket:
    """A plain TCP connection to the server's TLS listener (not a dtlsvpn client)."""
    sock = socket.create_connection(server.world.net.tcp[(SERVER, 4433)], timeout=2.0)
    server.world.settle()
    return sock


def test_bad_client_hellos_over_tcp_are_refused_and_rate_limited(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Five malformed ClientHellos from one host: five refusals counted (decode_error), one
    line logged (the per-source limit DTLS refusals have), each answered by a fatal alert."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, _ = psk_pair(tmp_path, transport="tcp")
    server = world.start(server_conf, SERVER)
    # A handshake record holding a ClientHello whose body ends inside its version field.
    hello = b"\x16\x03\x01\x00\x06" + b"\x01\x00\x00\x02\x03\x03"
    for _ in range(5):
        sock = _raw_tcp(server)
        sock.sendall(hello)
        world.run_for(0.2)
        answer = sock.recv(100)
        sock.close()
        assert answer[:1] == b"\x15" and answer[-2:] == bytes([2, AlertDescription.decode_error])
    world.run_for(0.5)
    assert _failures(server) == {"decode_error": 5}
    lines = _tcp_lines(caplog)
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], lines
    print(lines[0])


def test_an_abandoned_tls_handshake_is_not_a_refusal(world: World, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A client that connects, sends half a ClientHello and goes away (a port scan, a client
    that changed its mind) is no refusal: nothing at WARNING, no handshake_failures; it shows
    as ``abandoned`` in tcp_closes."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, _ = psk_pair(tmp_path, transport="tcp")
    server = world.start(server_conf, SERVER)
    sock = _raw_tcp(server)
    sock.sendall(b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03")  # (53 bytes short)
    world.run_for(0.2)
    sock.close()
    quiet = _raw_tcp(server)  # and one that says nothing at all
    quiet.close()
    world.run_for(0.5)
    assert not server.daemon.role.tcp.owners
    assert _failures(server) == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert server.snapshot()["interface"]["tcp_closes"] == {"abandoned": 2}


def test_a_silent_tls_connection_is_refused_as_timed_out(world: World, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """A connection that stays open and says nothing is no abandonment: after the
    handshake's 30 s it is refused as ``timeout``, like a DTLS handshake that never ends."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    server_conf, _ = psk_pair(tmp_path, transport="tcp")
    server = world.start(server_conf, SERVER)
    sock = _raw_tcp(server)
    world.run_for(29.0)
    assert _failures(server) == {}
    world.run_for(2.0)
    assert _failures(server) == {"timeout": 1}
    (line,) = _tcp_lines(caplog)
    assert line.endswith("over TCP: handshake did not complete (timed out)"), line
    sock.close()
