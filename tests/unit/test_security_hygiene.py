"""Key hygiene: secret files, secrets in reprs, logs and errors, and the key log policy.

- Private keys, PSK files, ticket key files (and the client's session ticket files)
  are refused when group or others have any permission bit, with an error naming the
  file and its mode.
- Known secret bytes (a PSK, a master secret, a ticket key) never appear in a repr, a
  log record, an event, the counters or an exception text, whether the handshake
  succeeded or failed.
- ``--keylog`` is the only way to a key log: an option of the debug tools, file mode
  0600 (an existing looser file is refused), a loud warning; the daemon config has no
  key for it.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import pytest

from dtlsvpn.cli.argtypes import ArgumentProblem
from dtlsvpn.cli.dtls.keylog import open_keylog
from dtlsvpn.config.credentials import read_private_key, read_psk
from dtlsvpn.config.loader import load_config
from dtlsvpn.crypto.tickets import TicketKey, TicketKeyRing
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.daemon.ticketstore import TicketStore
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import SessionTicketReceived
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import ConfigError
from tests.netns.harness import psk_pair
from tests.pki import Pki
from tests.sim.configs import PSK_IDENTITY, configs_for, with_changes
from tests.sim.harness import Simulator

LOOSE = [0o640, 0o604, 0o660, 0o644, 0o620, 0o602, 0o610, 0o601]
SECRET = bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75e" * 2)  # a PSK nobody else uses


def _forms(secret: bytes) -> list[str]:
    """Every spelling of ``secret`` a careless log line or repr could hold."""
    return [secret.hex(), secret.hex().upper(), repr(secret)[2:-1],
            base64.b64encode(secret).decode(), secret[:12].hex()]


def assert_absent(secret: bytes, *texts: str) -> None:
    for text in texts:
        for form in _forms(secret):
            assert form not in text, f"a secret ({form[:8]}…) leaked into: {text[:200]}"


# --- secret files refused when group- or world-accessible -------------------------------


@pytest.mark.parametrize("mode", LOOSE)
def test_private_key_and_psk_files_refused_when_loose(pki: Pki, tmp_path: Path,
                                                      mode: int) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(pki.server.key_path.read_bytes())
    psk = tmp_path / "peer.psk"
    psk.write_text(SECRET.hex() + "\n")
    for path, reader in ((key, read_private_key), (psk, read_psk)):
        path.chmod(mode)
        with pytest.raises(ValueError) as info:
            reader(path)
        text = str(info.value)
        assert str(path) in text and f"{mode:04o}" in text, text
        assert f"chmod 600 {path}" in text
        assert_absent(SECRET, text)
        path.chmod(0o600)
        reader(path)  # the same file with 0600 loads


@pytest.mark.parametrize("mode", LOOSE)
def test_ticket_key_file_refused_when_loose(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ticket.keys"
    TicketKeyFile(path).save(TicketKeyRing(os.urandom))
    assert path.stat().st_mode & 0o777 == 0o600  # how the daemon writes it
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        TicketKeyFile(path).load(os.urandom)
    text = str(info.value)
    assert str(path) in text and f"{mode:04o}" in text, text


def test_session_ticket_file_readable_by_others_is_not_used(tmp_path: Path) -> None:
    store = TicketStore(tmp_path / "tickets")
    session = ClientSession(b"t" * 40, 0xC02B, SECRET + SECRET[:16], True, 1000, 3600)
    store.save("vpn.example.net", session)
    (path,) = (tmp_path / "tickets").iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
    assert store.load("vpn.example.net", 1001) == session
    path.chmod(0o644)
    assert store.load("vpn.example.net", 1001) is None
    assert not path.exists(), "a session secret others could read was kept"


def test_shipped_tools_and_fixtures_write_0600(tmp_path: Path) -> None:
    server_conf, client_conf = psk_pair(tmp_path)
    for conf in (server_conf, client_conf):
        load_config(conf)  # the tests' fixture files pass the checks
    for secret in tmp_path.glob("psk*.hex"):
        assert secret.stat().st_mode & 0o077 == 0, secret


# --- secrets never in reprs, logs, events or errors ----------------------------------------


def test_secrets_not_in_reprs() -> None:
    cfg = DtlsConfig(is_client=True, psk=SECRET, psk_identity=b"me")
    session = ClientSession(b"t" * 40, 0xC02B, SECRET + SECRET[:16], True, 1000, 3600)
    ring = TicketKeyRing(lambda n: (SECRET * 4)[:n])
    key = TicketKey(b"k" * 16, SECRET, 1000)
    server = DtlsConfig(is_client=False, psk_lookup={b"me": SECRET}.get, ticket_keys=ring)
    resuming = with_changes(cfg, resume_session=session)
    assert_absent(SECRET, repr(cfg), repr(session), repr(ring), repr(key), repr(server),
                  repr(resuming), str(cfg))
    assert_absent(SECRET[:16], repr(ring.keys))


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)


@pytest.mark.parametrize("outcome", ["established", "wrong-psk"])
def test_secrets_not_in_logs_events_stats_or_errors(
    pki: Pki, caplog: pytest.LogCaptureFixture, outcome: str
) -> None:
    caplog.set_level(logging.DEBUG)
    c, s = configs_for("ecdhe-psk-chacha", pki)
    other = bytes(b ^ 0xFF for b in SECRET)
    c = with_changes(c, psk=SECRET if outcome == "established" else other)
    s = with_changes(s, psk_lookup={PSK_IDENTITY: SECRET}.get,
                     ticket_keys=TicketKeyRing(os.urandom))
    sim = Simulator(c, s)
    sim.handshake(60.0)
    client, server = sim.client, sim.server
    assert server is not None
    events = list(sim.client_events) + list(sim.server_events)
    masters = [e.session.master_secret for _t, e in events
               if isinstance(e, SessionTicketReceived)]
    if outcome == "established":
        assert client.is_established and masters
    else:
        assert not client.is_established
    texts = [_logged(caplog), repr(events), repr(client.stats), repr(server.stats),
             repr(client), repr(server), sim.format()]
    for secret in [SECRET, other, *masters]:
        assert_absent(secret, *texts)


# --- the key log ------------------------------------------------------------------------------


def test_keylog_created_0600_with_a_loud_warning(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    warnings: list[str] = []
    write = open_keylog(str(path), warnings.append)
    assert path.stat().st_mode & 0o777 == 0o600
    (warning,) = warnings
    assert warning.startswith("WARNING") and str(path) in warning and "debugging" in warning
    write("CLIENT_RANDOM aa bb")
    assert path.read_text() == "CLIENT_RANDOM aa bb\n"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_keylog_refuses_a_loose_existing_file(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.log"
    path.write_text("")
    path.chmod(mode)
    warnings: list[str] = []
    with pytest.raises(ArgumentProblem) as info:
        open_keylog(str(path), warnings.append)
    assert str(path) in str(info.value) and f"{mode:04o}" in str(info.value)
    assert warnings == []


def test_keylog_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o600)
    link = tmp_path / "keys.log"
    link.symlink_to(target)
    with pytest.raises(ArgumentProblem):
        open_keylog(str(link), lambda _t: None)


@pytest.mark.parametrize("key", ["KeyLog", "KeyLogFile", "SSLKeyLogFile"])
def test_daemon_config_has_no_key_log(tmp_path: Path, key: str) -> None:
    server_conf, _client = psk_pair(tmp_path)
    text = server_conf.read_text()
    lines = text.splitlines()
    at = lines.index("[Interface]") + 1
    lines.insert(at, f"{key} = {tmp_path / 'keys.log'}")
    server_conf.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(server_conf)
    err = info.value
    assert err.key == key and err.line == at + 1, (err.key, err.line, str(err))
    assert not (tmp_path / "keys.log").exists()
