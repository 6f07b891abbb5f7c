"""The config loader: broken files name the right file, line and key; the shipped examples
load and check; `dtls_config` builds DtlsConfigs that complete real (simulated) handshakes
and `match_peer` names the peer that authenticated.

Credentials are made with `dtlsvpn.cli.keys` (the same code as `dtlsvpn gencert`), once per
module, in a temporary directory. In the broken-config table the line the error must name
is marked with a trailing `#<` comment (the parser strips it like any inline comment).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from dtlsvpn.cli import keys
from dtlsvpn.cli.main import main
from dtlsvpn.config import Config, config_path, spki_pin_text
from dtlsvpn.config.parser import split_list
from dtlsvpn.crypto.certs import PrivateKey, load_certificates
from dtlsvpn.daemon.settings import dtls_config, load_config, match_peer
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.errors import ConfigError
from dtlsvpn.wire.constants import CipherSuite
from tests.sim.clock import FakeClock
from tests.sim.harness import Simulator

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "dtlsvpn"
EXAMPLE_NAMES = ("site-server", "site-branch", "roaming-client", "central-server")
EXAMPLE_NAMES += ("fleet-server",)  # issue 15
MARK = "#<"


# --- credentials ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Creds:
    dir: Path
    ca: Path
    server_crt: Path
    server_key: Path
    alice_crt: Path
    alice_key: Path
    bob_crt: Path
    bob_key: Path
    mallory_crt: Path
    mallory_key: Path
    psk: Path
    alice_pin: str
    bob_pin: str


def _leaf(d: Path, ca: tuple[x509.Certificate, PrivateKey], role: str, name: str,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> None:
    key = keys.generate_key("ecdsa-p256")
    cert = keys.make_leaf(role, name, key, ca[0], ca[1], 30, dns=dns, ips=ips)
    keys.write_file(d / f"{name}.key", keys.key_pem(key), 0o600)
    keys.write_file(d / f"{name}.crt", keys.cert_pem(cert), 0o644)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Creds:
    d = tmp_path_factory.mktemp("creds")
    ca_key = keys.generate_key("ecdsa-p256")
    ca_cert = keys.make_ca("Test VPN CA", ca_key, 30)
    keys.write_file(d / "ca.key", keys.key_pem(ca_key), 0o600)
    keys.write_file(d / "ca.crt", keys.cert_pem(ca_cert), 0o644)
    ca = (ca_cert, ca_key)
    _leaf(d, ca, "server", "vpn.example.net", dns=("vpn.example.net",), ips=("198.18.1.1",))
    for name in ("alice", "bob", "mallory"):
        _leaf(d, ca, "client", name)
    keys.write_file(d / "sensor.psk", (os.urandom(32).hex() + "\n").encode(), 0o600)
    pins = {}
    for name in ("alice", "bob"):
        cert = load_certificates((d / f"{name}.crt").read_bytes())[0]
        pins[name] = keys.spki_pin(cert)
    return Creds(d, d / "ca.crt", d / "vpn.example.net.crt", d / "vpn.example.net.key",
                 d / "alice.crt", d / "alice.key", d / "bob.crt", d / "bob.key",
                 d / "mallory.crt", d / "mallory.key", d / "sensor.psk",
                 pins["alice"], pins["bob"])


def server_text(c: Creds) -> str:
    return f"""\
# a central server: two certificate peers and a PSK peer
[Interface]
Role = server
ListenAddress = 198.18.1.1:4433
Address = 100.64.100.1/24, fd00:100::1/64
Certificate = {c.server_crt}
PrivateKey = {c.server_key}
CA = {c.ca}

[Peer]
Name = alice
CommonName = alice
AllowedIPs = 100.64.100.10/32, fd00:100::10/128

[Peer]
Name = bob
PeerKeyPin = {c.bob_pin}
AllowedIPs = 100.64.100.11/32

[Peer]
Name = sensor
PSKIdentity = sensor-1
PSKFile = {c.psk}
AllowedIPs = 100.64.100.20/32
"""


def client_text(c: Creds, who: str = "alice") -> str:
    return f"""\
[Interface]
Role = client
Address = 100.64.100.10/24
Certificate = {c.dir / (who + '.crt')}
PrivateKey = {c.dir / (who + '.key')}
CA = {c.ca}

[Peer]
Name = central
Endpoint = 198.18.1.1:4433
ServerName = vpn.example.net
AllowedIPs = 100.64.100.0/24
"""


def psk_client_text(c: Creds) -> str:
    return f"""\
[Interface]
Role = client
Address = 100.64.100.20/24

[Peer]
Endpoint = [2001:db8:1::1]:4433
PSKIdentity = sensor-1
PSKFile = {c.psk}
AllowedIPs = 100.64.100.0/24
"""


def write(tmp: Path, text: str, name: str = "office.conf") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


# --- the broken-config table --------------------------------------------------------------------

# (id, edit of the valid server or client text, expected key, fragment of the message).
# An edit is a function of the Creds returning the whole file text (None: see `_special`);
# `#<` marks the line the error must name.
Case = tuple[str, Callable[[Creds], str] | None, str | None, str]


def _edit(base: Callable[[Creds], str], *pairs: str) -> Callable[[Creds], str]:
    """`base` text with each (old, new) pair replaced once; `{x}` in a pair is Creds.x."""
    def make(c: Creds) -> str:
        text = base(c)
        for old, new in zip(pairs[::2], pairs[1::2], strict=True):
            old, new = old.format(**vars(c)), new.format(**vars(c))
            assert old in text, old
            text = text.replace(old, new, 1)
        return text
    return make


def _srv(*pairs: str) -> Callable[[Creds], str]:
    return _edit(server_text, *pairs)


def _cli(*pairs: str) -> Callable[[Creds], str]:
    return _edit(client_text, *pairs)


def _psk_cli(*pairs: str) -> Callable[[Creds], str]:
    return _edit(psk_client_text, *pairs)


_CERT_ONLY_SERVER = (
    "[Peer]\nName = bob", "#[Peer]\n#Name = bob",
    "PeerKeyPin", "#PeerKeyPin", "AllowedIPs = 100.64.100.11", "#AllowedIPs = 100.64.100.11",
    "[Peer]\nName = sensor", "#[Peer]\n#Name = sensor", "PSKIdentity", "#PSKIdentity",
    "PSKFile", "#PSKFile", "AllowedIPs = 100.64.100.20", "#AllowedIPs = 100.64.100.20",
)


BROKEN: list[Case] = [
    ("listen-no-port", _srv("ListenAddress = 198.18.1.1:4433", "ListenAddress = 198.18.1.1 #<"),
     "ListenAddress", "expected HOST:PORT, got '198.18.1.1'"),
    ("listen-hostname", _srv("ListenAddress = 198.18.1.1:4433",
                             "ListenAddress = vpn.example.net:4433 #<"),
     "ListenAddress", "HOST an IP address"),
    ("listen-v6-no-brackets", _srv("ListenAddress = 198.18.1.1:4433",
                                   "ListenAddress = 2001:db8::1:4433 #<"),
     "ListenAddress", "[IPV6]:PORT"),
    ("listen-port-range", _srv("ListenAddress = 198.18.1.1:4433",
                               "ListenAddress = 198.18.1.1:70000 #<"),
     "ListenAddress", "port from 1 to 65535"),
    ("server-no-listen", _srv("[Interface]\nRole = server\nListenAddress = 198.18.1.1:4433\n",
                              "[Interface] #<\nRole = server\n"),
     "ListenAddress", "missing"),
    ("unknown-key-suggest", _srv("Name = alice\n", "Name = alice\nEndpiont = 198.18.0.9:1 #<\n"),
     "Endpiont", "did you mean Endpoint?"),
    ("key-in-wrong-section", _srv("Role = server\n", "Role = server\nEndpoint = 198.18.0.1:1 #<\n"),
     "Endpoint", "belongs in [Peer]"),
    ("wireguard-listenport", _srv("Role = server\n", "Role = server\nListenPort = 51820 #<\n"),
     "ListenPort", "use ListenAddress"),
    ("unknown-section", _srv("[Peer]\nName = bob", "[Peers] #<\nName = bob"),
     "[Peers]", "did you mean [Peer]?"),
    ("duplicate-single-key", _srv("Role = server\n", "Role = server\nrole = client #<\n"),
     "Role", "set twice (first at line 3)"),
    ("missing-role", _srv("[Interface]\nRole = server\n", "[Interface] #<\n"),
     "Role", "missing; expected 'server' or 'client'"),
    ("bad-role", _srv("Role = server", "Role = router #<"), "Role", "got 'router'"),
    ("address-no-prefix", _srv("Address = 100.64.100.1/24, fd00:100::1/64",
                               "Address = 100.64.100.1 #<"),
     "Address", "expected ADDRESS/PREFIX"),
    ("address-network", _srv("Address = 100.64.100.1/24, fd00:100::1/64",
                             "Address = fd00:100::1/64\nAddress = 100.64.100.0/24 #<"),
     "Address", "network or broadcast address"),
    ("address-loopback", _srv("Address = 100.64.100.1/24, fd00:100::1/64",
                              "Address = 127.0.0.2/8 #<"),
     "Address", "loopback"),
    ("allowed-host-bits", _srv("AllowedIPs = 100.64.100.11/32",
                               "AllowedIPs = 100.64.100.11/24 #<"),
     "AllowedIPs", "did you mean 100.64.100.0/24?"),
    ("allowed-overlap", _srv("AllowedIPs = 100.64.100.20/32",
                             "AllowedIPs = 100.64.100.20/32, 100.64.100.8/29 #<"),
     "AllowedIPs", "overlaps 100.64.100.10/32 of peer 'alice'"),
    ("allowed-missing", _srv("[Peer]\nName = bob\n", "[Peer] #<\nName = bob\n",
                             "AllowedIPs = 100.64.100.11/32\n", ""),
     "AllowedIPs", "missing"),
    ("allowed-empty-item", _srv("AllowedIPs = 100.64.100.11/32",
                                "AllowedIPs = 100.64.100.11/32,, #<"),
     "AllowedIPs", "without empty items"),
    ("route-outside-allowed", _srv("AllowedIPs = 100.64.100.11/32",
                                   "AllowedIPs = 100.64.100.11/32\nRoute = 100.64.20.0/24 #<"),
     "Route", "inside this peer's AllowedIPs"),
    ("mtu-v6-minimum", _srv("Role = server\n", "Role = server\nMTU = 1200 #<\n"),
     "MTU", "at least 1280"),
    ("mtu-word", _srv("Role = server\n", "Role = server\nMTU = jumbo #<\n"),
     "MTU", "expected 'auto' or an integer"),
    ("dead-peer-short", _srv("Role = server\n",
                             "Role = server\nHeartbeatInterval = 5s\nDeadPeerTimeout = 3 #<\n"),
     "DeadPeerTimeout", "longer than HeartbeatInterval"),
    ("heartbeat-garbage", _srv("Role = server\n", "Role = server\nHeartbeatInterval = soon #<\n"),
     "HeartbeatInterval", "expected a duration"),
    ("mssclamp-bool", _srv("Role = server\n", "Role = server\nMSSClamp = maybe #<\n"),
     "MSSClamp", "expected yes or no"),
    ("connectionid-bool", _srv("Role = server\n", "Role = server\nConnectionID = 8 #<\n"),
     "ConnectionID", "expected yes or no"),
    # roam (issue 11): DNS, FwMark, Table, KillSwitch
    ("dns-garbage", _cli("Role = client\n", "Role = client\nDNS = 100.64.100.1, not a name #<\n"),
     "DNS", "expected a resolver's IP address or a search domain"),
    ("dns-on-server", _srv("Role = server\n", "Role = server\nDNS = 100.64.100.1 #<\n"),
     "DNS", "only for a client"),
    ("fwmark-zero", _cli("Role = client\n", "Role = client\nFwMark = 0 #<\n"),
     "FwMark", "from 1 to 4294967295"),
    ("fwmark-word", _cli("Role = client\n", "Role = client\nFwMark = lots #<\n"),
     "FwMark", "expected a number"),
    ("table-main", _cli("Role = client\n", "Role = client\nTable = 254 #<\n"),
     "Table", "not 254"),
    ("killswitch-bool", _cli("Role = client\n", "Role = client\nKillSwitch = sometimes #<\n"),
     "KillSwitch", "expected yes or no"),
    ("rekey-garbage", _srv("Role = server\n", "Role = server\nRekeyInterval = hourly #<\n"),
     "RekeyInterval", "expected a duration from 1 second to 7 days"),
    ("rekey-too-short", _srv("Role = server\n", "Role = server\nRekeyInterval = 0.5s #<\n"),
     "RekeyInterval", "or 0 / off to renew keys only at the record limit, got '0.5s'"),
    ("rekey-twice", _srv("Role = server\n",
                         "Role = server\nRekeyInterval = 1h\nrekeyinterval = off #<\n"),
     "RekeyInterval", "set twice"),
    ("loglevel", _srv("Role = server\n", "Role = server\nLogLevel = loud #<\n"),
     "LogLevel", "expected one of debug"),
    ("device-too-long", _srv("Role = server\n", "Role = server\nDevice = dtv-much-too-long #<\n"),
     "Device", "1 to 15 letters"),
    ("ciphers-unknown", _srv("Role = server\n",
                             "Role = server\nCiphers = TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA265 #<\n"),
     "Ciphers", "did you mean TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256?"),
    ("ciphers-unusable", _srv(*_CERT_ONLY_SERVER, "Role = server\n",
                              "Role = server\nCiphers = TLS_PSK_WITH_AES_128_GCM_SHA256 #<\n"),
     "Ciphers", "PSK suites configured without a PSK"),
    ("pin-garbage", _srv("PeerKeyPin = ", "PeerKeyPin = sha256/nope #<\nPeerKeyPin = "),
     "PeerKeyPin", "expected sha256/BASE64"),
    ("commonname-without-ca", lambda c: server_text(c).replace(f"CA = {c.ca}\n", "").replace(
        "CommonName = alice", "CommonName = alice #<"),
     "CommonName", "expected CA in [Interface]"),
    ("peer-without-auth", _srv("[Peer]\nName = alice\nCommonName = alice\n",
                               "[Peer] #<\nName = alice\n"),
     "[Peer]", "no way to authenticate peer 'alice'"),
    ("psk-identity-alone", _srv("PSKFile = {psk}\n", "",
                                "PSKIdentity = sensor-1", "PSKIdentity = sensor-1 #<"),
     "PSKIdentity", "expected PSKFile"),
    ("duplicate-peer-name", _srv("Name = bob", "Name = alice #<"),
     "Name", "peer name 'alice' already used by the [Peer] at line 10"),
    ("duplicate-psk-identity", lambda c: server_text(c) + (
        f"\n[Peer]\nPSKIdentity = sensor-1 #<\nPSKFile = {c.psk}\nAllowedIPs = 100.64.100.21/32\n"),
     "PSKIdentity", "PSK identity 'sensor-1' already used"),
    ("server-peer-endpoint", _srv("Name = bob\n", "Name = bob\nEndpoint = 198.18.0.7:4433 #<\n"),
     "Endpoint", "a server does not dial its peers"),
    ("key-outside-section", lambda c: "Role = server #<\n" + server_text(c),
     "Role", "key outside any section"),
    ("no-equals", _srv("Role = server\n", "Role = server\nMTU 1400 #<\n"),
     None, "expected 'Key = value'"),
    ("empty-value", _srv("Role = server\n", "Role = server\nMTU = #<\n"),
     "MTU", "expected a value after '='"),
    ("certificate-missing-file", lambda c: server_text(c).replace(
        f"Certificate = {c.server_crt}", "Certificate = nowhere.crt #<"),
     "Certificate", "cannot read"),
    ("key-does-not-match", lambda c: server_text(c).replace(
        f"PrivateKey = {c.server_key}", f"PrivateKey = {c.alice_key} #<"),
     "PrivateKey", "holds another key"),
    ("key-without-cert", lambda c: server_text(c).replace(
        f"Certificate = {c.server_crt}\n", "").replace("[Interface]", "[Interface] #<"),
     "Certificate", "missing"),
    ("ca-not-a-ca", lambda c: server_text(c).replace(f"CA = {c.ca}", f"CA = {c.alice_crt} #<"),
     "CA", "is not one (basicConstraints cA)"),
    ("server-needs-certificate", lambda c: server_text(c).replace(
        f"Certificate = {c.server_crt}\nPrivateKey = {c.server_key}\n", "").replace(
        "[Interface]", "[Interface] #<"),
     "Certificate", "peer 'alice' (line 8) authenticates by certificate"),
    ("server-without-peers", lambda c: server_text(c).split("[Peer]")[0].replace(
        "[Interface]", "[Interface] #<"),
     "[Peer]", "a server needs at least one [Peer]"),
    ("client-two-peers", lambda c: client_text(c) + (
        "\n[Peer] #<\nEndpoint = 198.18.2.1:4433\nServerName = vpn.example.net\n"
        "AllowedIPs = 100.64.200.0/24\n"),
     "[Peer]", "a client has exactly one [Peer]"),
    ("client-no-endpoint", _cli("[Peer]\nName = central\nEndpoint = 198.18.1.1:4433\n",
                                "[Peer] #<\nName = central\n"),
     "Endpoint", "missing; expected HOST:PORT of the server"),
    ("client-endpoint-bad-host", _cli("Endpoint = 198.18.1.1:4433",
                                      "Endpoint = bad_host!:4433 #<"),
     "Endpoint", "a host name or address"),
    ("client-commonname", _cli("Name = central\n", "Name = central\nCommonName = x #<\n"),
     "CommonName", "a client checks its server with ServerName"),
    ("client-servername-without-ca", _psk_cli("Endpoint = ",
                                              "ServerName = vpn.example.net #<\nEndpoint = "),
     "ServerName", "expected CA in [Interface]"),
    ("client-needs-certificate", lambda c: client_text(c).replace(
        f"Certificate = {c.alice_crt}\nPrivateKey = {c.alice_key}\n", "").replace(
        "[Interface]", "[Interface] #<"),
     "Certificate", "the server identifies its clients by certificate"),
    ("psk-not-hex", None, "PSKFile", "expected the PSK as hex digits"),  # filled in below
    ("psk-too-short", None, "PSKFile", "expected a PSK of 16 to 256 bytes"),
    ("psk-missing-file", _psk_cli("PSKFile = ", "PSKFile = no-such.psk #<\n#"),
     "PSKFile", "No such file"),
    ("no-interface", lambda c: "# nothing but a peer\n[Peer]\nName = x\n", "[Interface]",
     "missing; expected one [Interface] section"),
    ("second-interface", lambda c: server_text(c) + "\n[Interface] #<\nRole = server\n",
     "[Interface]", "second section (first at line 2)"),
]


def _marked_line(text: str) -> int | None:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(lines) <= 1, "one marked line per case"
    return lines[0] if lines else None


def _special(case_id: str, c: Creds, tmp: Path) -> str:
    """Cases whose broken part is a file, not the config text."""
    bad = tmp / "bad.psk"
    bad.write_text("this is not hex\n" if case_id == "psk-not-hex" else "00112233\n")
    bad.chmod(0o600)
    return psk_client_text(c).replace(f"PSKFile = {c.psk}", f"PSKFile = {bad} #<")


@pytest.mark.parametrize(("case_id", "make", "key", "fragment"), BROKEN,
                         ids=[case[0] for case in BROKEN])
def test_broken_config_names_file_line_and_key(
    case_id: str, make: Callable[[Creds], str] | None, key: str | None, fragment: str,
    creds: Creds, tmp_path: Path,
) -> None:
    text = make(creds) if make is not None else _special(case_id, creds, tmp_path)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.path == str(path)
    assert err.key == key, str(err)
    expected_line = _marked_line(text)
    assert err.line == expected_line, str(err)
    assert fragment in err.msg, str(err)
    where = str(path) if err.line is None else f"{path}:{err.line}"
    assert str(err) == (f"{where}: {key}: {err.msg}" if key else f"{where}: {err.msg}")


def test_table_is_big_enough() -> None:
    assert len(BROKEN) >= 20


def test_error_text_matches_the_documented_format(creds: Creds, tmp_path: Path) -> None:
    text = server_text(creds).replace("ListenAddress = 198.18.1.1:4433",
                                      "ListenAddress = 198.18.0.1")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:4: ListenAddress: expected HOST:PORT, got '198.18.0.1'"


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.conf")
    assert info.value.line is None and "cannot read" in info.value.msg
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[Interface]\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and "UTF-8" in info.value.msg


# --- secret files -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o700 | 0o010])
def test_private_key_mode_is_checked(mode: int, creds: Creds, tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    shutil.copy(creds.server_key, key)
    key.chmod(mode)
    text = server_text(creds).replace(f"PrivateKey = {creds.server_key}", f"PrivateKey = {key}")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == "PrivateKey" and info.value.line == 7
    assert f"{key} has mode {mode:04o}" in info.value.msg
    assert f"chmod 600 {key}" in info.value.msg


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_are_accepted(mode: int, creds: Creds, tmp_path: Path) -> None:
    psk = tmp_path / "sensor.psk"
    shutil.copy(creds.psk, psk)
    psk.chmod(mode)
    text = server_text(creds).replace(f"PSKFile = {creds.psk}", f"PSKFile = {psk}")
    cfg = load_config(write(tmp_path, text))
    assert cfg.peers[2].psk == bytes.fromhex(creds.psk.read_text())


def test_psk_file_mode_is_checked(creds: Creds, tmp_path: Path) -> None:
    psk = tmp_path / "sensor.psk"
    shutil.copy(creds.psk, psk)
    psk.chmod(0o640)
    text = server_text(creds).replace(f"PSKFile = {creds.psk}", f"PSKFile = {psk}")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == "PSKFile" and info.value.line == 23
    assert "has mode 0640" in info.value.msg and str(psk) in info.value.msg


def test_secret_must_be_a_regular_file(creds: Creds, tmp_path: Path) -> None:
    (tmp_path / "dir.psk").mkdir()
    text = server_text(creds).replace(f"PSKFile = {creds.psk}", f"PSKFile = {tmp_path}/dir.psk")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == "PSKFile" and "directory" in info.value.msg


def test_expired_certificate_is_an_error(creds: Creds, tmp_path: Path) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, server_text(creds)), now=later)
    assert info.value.key == "Certificate" or info.value.key == "CA"
    assert "expired at" in info.value.msg


def test_certificate_close_to_expiry_is_a_warning(creds: Creds, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, server_text(creds)))  # the test PKI lasts 30 days
    assert any("expires at" in w for w in cfg.warnings), cfg.warnings


# --- values, defaults and paths ---------------------------------------------------------------


def test_values_and_defaults(creds: Creds, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, server_text(creds), "central.conf"))
    iface = cfg.interface
    assert cfg.name == "central" and iface.role == "server"
    assert iface.listen == ("198.18.1.1", 4433)
    assert iface.device == "dtv-central"
    assert [str(a) for a in iface.addresses] == ["100.64.100.1/24", "fd00:100::1/64"]
    assert iface.mtu is None and iface.mss_clamp is True and iface.log_level == "info"
    assert (iface.heartbeat_interval, iface.dead_peer_timeout) == (2.0, 8.0)
    assert iface.rekey_interval == 3600.0 and dtls_config(cfg).rekey_interval == 3600.0
    assert iface.connection_id is True and dtls_config(cfg).connection_id is True
    assert iface.ticket_store == Path("/var/lib/dtlsvpn/central")
    assert iface.status_socket == Path("/run/dtlsvpn/central.sock")
    alice, bob, sensor = cfg.peers
    assert alice.certificate_name == "alice" and alice.routes == alice.allowed_prefixes
    assert bob.pinned_spki_sha256 and spki_pin_text(next(iter(bob.pinned_spki_sha256))) == \
        creds.bob_pin
    assert sensor.psk_identity == b"sensor-1" and sensor.psk is not None
    assert alice.source.line == 10 and cfg.peer("bob") is bob


def test_case_insensitive_keys_repeats_comments_and_relative_paths(
    creds: Creds, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(creds.dir, pki)
    text = f"""
  # leading comment
[interface]
ROLE = Client   # inline comment
address = 100.64.0.2/24
Address = fd00::2/64
mtu = 1400
heartbeatinterval = 500ms
deadpeertimeout = 3s
certificate = pki/alice.crt
PRIVATEKEY = pki/alice.key
ca = pki/ca.crt
ciphers = ECDHE-ECDSA-CHACHA20-POLY1305, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
ticketstore = state/tickets
mssclamp = off
loglevel = WARN
rekeyinterval = 90m

[ PEER ]
endpoint = [2001:DB8::1]:4433
peerkeypin = {"".join(f"{b:02X}" for b in os.urandom(32))}
allowedips = 100.64.0.0/24
AllowedIPs = fd00::/64, 100.64.10.0/24
route = 100.64.10.0/24
"""
    cfg = load_config(write(tmp_path, text, "branch.conf"))
    iface, (peer,) = cfg.interface, cfg.peers
    assert iface.role == "client" and iface.mtu == 1400
    assert (iface.heartbeat_interval, iface.dead_peer_timeout) == (0.5, 3.0)
    assert iface.certificate == tmp_path / "pki" / "alice.crt"
    assert iface.ticket_store == tmp_path / "state" / "tickets"
    assert iface.cipher_suites == (
        CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    )
    assert iface.mss_clamp is False and iface.log_level == "warning"
    assert peer.name == "peer1" and peer.endpoint == ("2001:db8::1", 4433)
    assert [str(p) for p in peer.allowed_prefixes] == ["100.64.0.0/24", "fd00::/64",
                                                       "100.64.10.0/24"]
    assert [str(r) for r in peer.routes] == ["100.64.10.0/24"]
    assert len(peer.pinned_spki_sha256) == 1
    config = dtls_config(cfg)
    assert config.is_client and config.pinned_spki_sha256 == peer.pinned_spki_sha256
    assert iface.rekey_interval == config.rekey_interval == 5400.0


@pytest.mark.parametrize(("value", "on"), [("yes", True), ("no", False), ("No", False)])
def test_connection_id_switch(value: str, on: bool, creds: Creds, tmp_path: Path) -> None:
    text = server_text(creds).replace("Role = server\n", f"Role = server\nConnectionID = {value}\n")
    cfg = load_config(write(tmp_path, text, "central.conf"))
    assert cfg.interface.connection_id is on
    assert dtls_config(cfg).connection_id is on
    assert dtls_config(cfg).own_cid_length == (8 if on else None)


@pytest.mark.parametrize(("value", "seconds"), [
    ("3", 3.0), ("90s", 90.0), ("1.5 m", 90.0), ("2h", 7200.0), ("1d", 86400.0),
    ("0", None), ("0s", None), ("OFF", None)])
def test_rekey_interval_values(value: str, seconds: float | None, creds: Creds,
                               tmp_path: Path) -> None:
    text = server_text(creds).replace("Role = server\n", f"Role = server\nRekeyInterval = {value}\n")
    cfg = load_config(write(tmp_path, text, "central.conf"))
    assert cfg.interface.rekey_interval == seconds
    assert dtls_config(cfg).rekey_interval == seconds


def test_full_tunnel_and_dns_keys(creds: Creds, tmp_path: Path) -> None:
    """roam: defaults (no DNS, mark and table 51820, no kill switch), then set; a /0 in
    AllowedIPs warns nothing (the full tunnel marks the daemon's own socket)."""
    cfg = load_config(write(tmp_path, client_text(creds)))
    iface = cfg.interface
    assert (iface.dns, iface.fwmark, iface.table, iface.kill_switch) == ((), 51820, 51820,
                                                                          False)
    text = client_text(creds).replace("Role = client\n", "Role = client\n"
                                      "DNS = 100.64.100.1, fd00:100::1\nDNS = corp.example\n"
                                      "FwMark = 0x1234\nKillSwitch = yes\n").replace(
        "AllowedIPs = 100.64.100.0/24", "AllowedIPs = 0.0.0.0/0, ::/0")
    cfg = load_config(write(tmp_path, text, "full.conf"))
    iface = cfg.interface
    assert iface.dns == ("100.64.100.1", "fd00:100::1", "corp.example")
    assert (iface.fwmark, iface.table, iface.kill_switch) == (0x1234, 0x1234, True)
    assert not [w for w in cfg.warnings if "routed through the tunnel" in w], cfg.warnings
    cfg = load_config(write(tmp_path, text.replace("KillSwitch = yes", "Table = 200"),
                            "table.conf"))
    assert (cfg.interface.fwmark, cfg.interface.table) == (0x1234, 200)


@pytest.mark.parametrize(("interval", "warned"), [("2", False), ("20", False), ("25", True),
                                                 ("60", True)])
def test_nat_keepalive_warning(interval: str, warned: bool, creds: Creds,
                               tmp_path: Path) -> None:
    """roam: a client's idle heartbeats must beat a 30 s NAT UDP timeout."""
    text = client_text(creds).replace("Role = client\n", f"Role = client\nHeartbeatInterval "
                                      f"= {interval}\nDeadPeerTimeout = 120\n")
    cfg = load_config(write(tmp_path, text))
    nat = [w for w in cfg.warnings if "NAT" in w]
    assert bool(nat) is warned, cfg.warnings
    if warned:
        assert ":3: HeartbeatInterval:" in nat[0]


def test_default_routes_skip_on_link_prefixes(creds: Creds, tmp_path: Path) -> None:
    text = client_text(creds).replace("AllowedIPs = 100.64.100.0/24",
                                      "AllowedIPs = 100.64.100.0/24, 100.64.10.0/24")
    cfg = load_config(write(tmp_path, text))
    assert [str(r) for r in cfg.peers[0].routes] == ["100.64.10.0/24"]


def test_endpoint_host_name_is_kept_unresolved(creds: Creds, tmp_path: Path) -> None:
    text = client_text(creds).replace("Endpoint = 198.18.1.1:4433",
                                      "Endpoint = vpn.example.net:4433")
    cfg = load_config(write(tmp_path, text))
    assert cfg.peers[0].endpoint == ("vpn.example.net", 4433)


def test_equality_ignores_line_numbers(creds: Creds, tmp_path: Path) -> None:
    a = load_config(write(tmp_path, server_text(creds), "a.conf"), name="x")
    b = load_config(write(tmp_path, "\n\n# moved down\n" + server_text(creds), "b.conf"),
                    name="x")
    assert a.peers == b.peers and a.interface == b.interface
    assert a.peers[0].source.line != b.peers[0].source.line


def test_config_path() -> None:
    assert config_path("office") == Path("/etc/dtlsvpn/office.conf")
    assert config_path("office", Path("/tmp/x")) == Path("/tmp/x/office.conf")
    assert config_path("./office.conf") == Path("office.conf")
    assert config_path("/srv/vpn.conf") == Path("/srv/vpn.conf")


def test_split_list() -> None:
    assert split_list(" a, b ,c ") == ["a", "b", "c"]
    with pytest.raises(ValueError):
        split_list("a,,b")


# --- the shipped examples -----------------------------------------------------------------------


def _make_example(name: str, tmp: Path) -> Path:
    """Copy etc/dtlsvpn/NAME.conf into `tmp` and run the `$ dtlsvpn ...` lines of its header."""
    source = EXAMPLES / f"{name}.conf"
    text = source.read_text()
    commands = re.findall(r"^#\s+\$ dtlsvpn (.+)$", text, re.M)
    assert commands, f"{source} documents no credential commands"
    for command in commands:
        argv = shlex.split(command.replace("/etc/dtlsvpn", str(tmp)))
        assert main(argv) == 0, argv
    target = tmp / f"{name}.conf"
    shutil.copy(source, target)
    return target


EXPECTED_PEERS = {
    "site-server": ["branch-b"],
    "site-branch": ["office-a"],
    "roaming-client": ["central"],
    "central-server": ["alice", "bob", "sensor-1"],
    "fleet-server": ["alice", "bob"],  # issue 15
}


def test_every_example_is_tested() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.conf")) == sorted(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_round_trip(name: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _make_example(name, tmp_path)
    capsys.readouterr()
    cfg = load_config(path)
    assert [p.name for p in cfg.peers] == EXPECTED_PEERS[name]
    assert cfg.name == name and cfg.warnings == ()
    for addr in cfg.interface.addresses:
        assert any(addr.ip in net for net in _TUNNEL_RANGES), addr
    dtls = dtls_config(cfg)
    assert dtls.is_client == (cfg.interface.role == "client")
    # check-config, by instance name through --confdir
    assert main(["check-config", name, "--confdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + len(cfg.peers)
    assert out[0].startswith(f"{name}: {cfg.interface.role}")
    assert all(line.startswith("peer ") for line in out[1:])


def test_check_config_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _make_example("site-server", tmp_path)
    text = path.read_text().replace("ListenAddress = 198.18.0.1:4433", "ListenAddress = 4433")
    path.write_text(text)
    line = text.splitlines().index("ListenAddress = 4433") + 1
    capsys.readouterr()
    assert main(["check-config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{path}:{line}: ListenAddress: expected HOST:PORT, got '4433'\n"


_TUNNEL_RANGES = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00::/8"))


# --- dtls_config and match_peer drive real handshakes ---------------------------------------


def _handshake(client: DtlsConfig, server: DtlsConfig) -> tuple[Simulator, bool]:
    sim = Simulator(client, server, clock=FakeClock(epoch=time.time()))
    trace = sim.handshake(limit_seconds=30)
    return sim, trace.satisfied


def _closed_reason(events: list[tuple[float, Event]]) -> str:
    return " ".join(ev.reason for _t, ev in events if isinstance(ev, AssociationClosed))


def _server_event(sim: Simulator) -> HandshakeCompleted:
    ev = sim.completed("server")
    assert ev is not None
    return ev


@pytest.fixture
def central(creds: Creds, tmp_path: Path) -> Config:
    return load_config(write(tmp_path, server_text(creds), "central.conf"))


@pytest.mark.parametrize(("client", "peer"), [("alice", "alice"), ("bob", "bob")])
def test_certificate_peer_handshake_and_match(
    client: str, peer: str, central: Config, creds: Creds, tmp_path: Path
) -> None:
    client_cfg = load_config(write(tmp_path, client_text(creds, client), "c.conf"))
    sim, ok = _handshake(dtls_config(client_cfg), dtls_config(central))
    assert ok
    ev = _server_event(sim)
    matched = match_peer(central, ev)
    assert matched is not None and matched.name == peer
    client_ev = sim.completed("client")
    assert client_ev is not None
    assert match_peer(client_cfg, client_ev) is client_cfg.peers[0]


def test_psk_peer_handshake_and_match(central: Config, creds: Creds, tmp_path: Path) -> None:
    client_cfg = load_config(write(tmp_path, psk_client_text(creds), "sensor.conf"))
    config = dtls_config(client_cfg)
    assert config.psk_identity == b"sensor-1" and not config.ca_certs
    sim, ok = _handshake(config, dtls_config(central))
    assert ok
    ev = _server_event(sim)
    assert ev.suite_name == "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256"
    matched = match_peer(central, ev)
    assert matched is not None and matched.name == "sensor"


def test_unknown_certificate_from_the_ca_matches_no_peer(
    central: Config, creds: Creds, tmp_path: Path
) -> None:
    # mallory holds a valid certificate from the CA, but no [Peer] names or pins it: the
    # core accepts the chain and match_peer refuses, so the daemon closes the association.
    client_cfg = load_config(write(tmp_path, client_text(creds, "mallory"), "m.conf"))
    sim, ok = _handshake(dtls_config(client_cfg), dtls_config(central))
    assert ok
    assert match_peer(central, _server_event(sim)) is None


def test_server_config_shape(central: Config) -> None:
    config = dtls_config(central)
    assert not config.is_client and config.require_client_cert
    assert config.ca_certs and not config.pinned_spki_sha256  # alice is known by CN only
    assert config.lookup_psk(b"sensor-1") == central.peers[2].psk
    assert config.lookup_psk(b"nobody") is None
    only_bob = dtls_config(central, central.peers[1])
    assert only_bob.pinned_spki_sha256 == central.peers[1].pinned_spki_sha256
    assert only_bob.psk_lookup is None
    only_sensor = dtls_config(central, central.peers[2])
    assert only_sensor.private_key is None and not only_sensor.require_client_cert


def test_pin_only_server_rejects_other_keys(creds: Creds, tmp_path: Path) -> None:
    # Without a CA the union of pins is the core's whole check: bob's pin admits bob only.
    text = server_text(creds).replace(f"CA = {creds.ca}\n", "")
    text = text.split("[Peer]\nName = alice")[0] + text.split("CommonName = alice\n"
                                                              "AllowedIPs = 100.64.100.10/32, "
                                                              "fd00:100::10/128\n\n")[1]
    cfg = load_config(write(tmp_path, text, "pins.conf"))
    server = dtls_config(cfg)
    assert server.pinned_spki_sha256 and not server.ca_certs
    client_text_pinned = client_text(creds, "bob").replace("ServerName = vpn.example.net\n", "")
    bob = load_config(write(tmp_path, client_text_pinned, "bob.conf"))
    sim, ok = _handshake(dtls_config(bob), server)
    assert ok and match_peer(cfg, _server_event(sim)) == cfg.peer("bob")
    alice = load_config(write(tmp_path, client_text(creds, "alice"), "alice.conf"))
    sim, ok = _handshake(dtls_config(alice), server)
    assert not ok
    assert "matches no configured pin" in _closed_reason(sim.server_events)


def test_client_server_name_is_enforced(central: Config, creds: Creds, tmp_path: Path) -> None:
    text = client_text(creds).replace("ServerName = vpn.example.net", "ServerName = other.example")
    client_cfg = load_config(write(tmp_path, text, "wrong-name.conf"))
    sim, ok = _handshake(dtls_config(client_cfg), dtls_config(central))
    assert not ok
    assert "subjectAltName" in _closed_reason(sim.client_events)


def test_offload_switches_default_on_and_parse(tmp_path: Path, creds: Creds) -> None:
    cfg = load_config(write(tmp_path, server_text(creds)))
    assert cfg.interface.udp_offload is True
    text = server_text(creds).replace("[Interface]\n", "[Interface]\nUDPOffload = off\n", 1)
    cfg = load_config(write(tmp_path, text))
    assert cfg.interface.udp_offload is False
    bad = server_text(creds).replace("[Interface]\n", "[Interface]\nUDPOffload = maybe\n", 1)
    with pytest.raises(ConfigError, match="UDPOffload"):
        load_config(write(tmp_path, bad))


@pytest.mark.parametrize(("value", "want"), [(None, "auto"), ("auto", "auto"), ("on", "on"),
                                             ("yes", "on"), ("off", "off"), ("No", "off")])
def test_tun_offload_values(tmp_path: Path, creds: Creds, value: str | None, want: str) -> None:
    text = server_text(creds)
    if value is not None:
        text = text.replace("[Interface]\n", f"[Interface]\nTUNOffload = {value}\n", 1)
    assert load_config(write(tmp_path, text)).interface.tun_offload == want


def test_tun_offload_refuses_other_values(tmp_path: Path, creds: Creds) -> None:
    bad = server_text(creds).replace("[Interface]\n", "[Interface]\nTUNOffload = tso\n", 1)
    with pytest.raises(ConfigError, match="TUNOffload"):
        load_config(write(tmp_path, bad))
