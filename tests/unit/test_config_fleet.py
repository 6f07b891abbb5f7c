"""The fleet keys of [Interface] (config/model.py fleet block): defaults, values, and
errors that name the file, the line and the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtlsvpn.cli import keys
from dtlsvpn.daemon.fleet import cid_layout, ticket_key_path
from dtlsvpn.daemon.settings import dtls_config, load_config
from dtlsvpn.dtls.cid import CidClass, CidMode
from dtlsvpn.errors import ConfigError


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    """A PSK file for the one [Peer] of the server (and the client) below."""
    return _secret(tmp_path, 32, name="peer.psk")


def server_text(psk: Path) -> str:
    return f"""\
[Interface]
Role = server
ListenAddress = 198.18.1.1:4433
Address = 100.64.100.1/24

[Peer]
Name = sensor
PSKIdentity = sensor-1
PSKFile = {psk}
AllowedIPs = 100.64.100.20/32
"""


def client_text(psk: Path) -> str:
    return f"""\
[Interface]
Role = client
Address = 100.64.100.20/24

[Peer]
Endpoint = 198.18.1.1:4433
PSKIdentity = sensor-1
PSKFile = {psk}
AllowedIPs = 100.64.100.0/24
"""


def write(tmp: Path, text: str) -> Path:
    path = tmp / "office.conf"
    path.write_text(text)
    return path


def _secret(tmp: Path, nbytes: int = 32, mode: int = 0o600, name: str = "fleet.key") -> Path:
    path = tmp / name
    keys.write_file(path, (os.urandom(nbytes).hex() + "\n").encode(), mode)
    return path


def _server(c: Path, lines: str) -> str:
    return server_text(c).replace("Role = server\n", "Role = server\n" + lines, 1)


def test_a_lone_server_has_no_fleet(creds: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, server_text(creds)))
    fleet = cfg.interface.fleet
    assert fleet.server_id is None and fleet.ticket_key_rotation
    assert cid_layout(fleet) is None and dtls_config(cfg).cid_layout is None
    assert ticket_key_path(cfg.interface) == Path("/var/lib/dtlsvpn/office/ticket.keys")


def test_an_obfuscated_fleet_server(creds: Path, tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    cfg = load_config(write(tmp_path, _server(creds, f"ServerId = 7\nFleetSecretFile = {secret}\n"
                                                    "TicketKeyFile = shared/ticket.keys\n"
                                                    "TicketKeyRotation = no\n")))
    fleet = cfg.interface.fleet
    assert (fleet.server_id, fleet.cid_mode, fleet.ticket_key_rotation) == (7, "obfuscated", False)
    assert fleet.secret == bytes.fromhex(secret.read_text())
    assert ticket_key_path(cfg.interface) == tmp_path / "shared/ticket.keys"
    layout = dtls_config(cfg).cid_layout
    assert layout is not None and layout.mode is CidMode.OBFUSCATED
    assert layout.classify(layout.issue(os.urandom)) is CidClass.OWN


def test_a_plain_fleet_server_needs_no_secret(creds: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, _server(creds, "ServerId = 0\nFleetCID = Plain\n")))
    layout = cid_layout(cfg.interface.fleet)
    assert layout is not None and layout.mode is CidMode.PLAIN and layout.secret is None
    assert layout.issue(os.urandom)[0] == 0


@pytest.mark.parametrize(("lines", "key", "message"), [
    ("ServerId = 256 #<\nFleetCID = plain\n", "ServerId", "from 0 to 255"),
    ("ServerId = one #<\nFleetCID = plain\n", "ServerId", "from 0 to 255"),
    ("ServerId = 1 #<\n", "ServerId", "expected FleetSecretFile"),
    ("ServerId = 1\nFleetCID = obfuscated #<\n", "FleetCID", "expected FleetSecretFile"),
    ("ServerId = 1\nFleetCID = hidden #<\n", "FleetCID", "'obfuscated' or 'plain'"),
    ("FleetCID = plain #<\n", "FleetCID", "expected ServerId"),
    ("ServerId = 1 #<\nFleetCID = plain\nConnectionID = no\n", "ServerId", "ConnectionID = yes"),
    ("ServerId = 1\nFleetCID = plain\nTicketKeyRotation = maybe #<\n", "TicketKeyRotation",
     "expected yes or no"),
    ("ServerId = 1\nFleetSecretFile = SHORT #<\n", "FleetSecretFile", "16 to 64 bytes"),
    ("ServerId = 1\nFleetSecretFile = OPEN #<\n", "FleetSecretFile", "chmod 600"),
    ("ServerId = 1\nFleetSecretFile = nowhere.key #<\n", "FleetSecretFile", "cannot read"),
])
def test_fleet_key_errors_name_file_line_and_key(creds: Path, tmp_path: Path, lines: str,
                                                 key: str, message: str) -> None:
    lines = lines.replace("SHORT", str(_secret(tmp_path, 8, name="short.key")))
    lines = lines.replace("OPEN", str(_secret(tmp_path, 32, 0o644, name="open.key")))
    text = _server(creds, lines)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.endswith("#<"))
    path = write(tmp_path, text.replace(" #<", ""))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.line, err.key) == (str(path), line, key), str(err)
    assert message in str(err)


def test_fleet_keys_are_for_servers(creds: Path, tmp_path: Path) -> None:
    text = client_text(creds).replace("Role = client\n", "Role = client\nServerId = 1\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="for servers") as info:
        load_config(path)
    assert (info.value.line, info.value.key) == (3, "ServerId")


# --- the per-server status block ----------------------------------------------------------


def test_status_block_and_peers_digest(creds: Path, tmp_path: Path) -> None:
    from dtlsvpn.cli.fleet import status_lines
    from dtlsvpn.daemon.fleet import fleet_status, peers_digest
    from dtlsvpn.dtls.endpoint import ServerEndpoint

    lone = load_config(write(tmp_path, server_text(creds)))
    assert fleet_status(lone, ServerEndpoint(dtls_config(lone))) == {}
    text = _server(creds, "ServerId = 4\nFleetCID = plain\n")
    cfg = load_config(write(tmp_path, text))
    endpoint = ServerEndpoint(dtls_config(cfg))
    block = fleet_status(cfg, endpoint)["fleet"]
    assert (block["server_id"], block["cid_mode"], block["cid_foreign"]) == (4, "plain", 0)
    assert block["peers_digest"] == peers_digest(cfg)
    lines = status_lines({"fleet": block})
    assert lines[0].startswith("  fleet: server id 4 (plain CIDs), peers ")
    # Comments, order of keys and ServerId do not change the digest; an AllowedIPs does.
    other = load_config(write(tmp_path, "# server 5\n" + text.replace("ServerId = 4",
                                                                      "ServerId = 5")))
    assert peers_digest(other) == peers_digest(cfg)
    changed = load_config(write(tmp_path, text.replace("100.64.100.20/32", "100.64.100.21/32")))
    assert peers_digest(changed) != peers_digest(cfg)
