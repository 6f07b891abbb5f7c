"""``dtlsvpn fleet-rules``: the balancer's nftables rules and routes from a fleet config.

What is checked here is the text (the namespace test, tests/netns/test_fleet.py, loads it
into a real kernel and sends real clients through it): every prefix of every configured
server is in the CID map with its server's mark and no other prefix is; the hash buckets
name each server once; the routes send each mark's table to its server or, for a server
that is down, to every live one; bad input is an error naming what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest

from dtlsvpn.cli.fleet import FleetSpec, render_routes, render_rules
from dtlsvpn.cli.main import main
from dtlsvpn.dtls.cid import CidLayout, CidMode, prefix_owners

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(100, 132))
SERVERS = ((1, "198.18.1.2"), (2, "198.18.2.2"), (5, "198.18.5.2"))


def _spec(mode: CidMode, secret: bytes | None = SECRET,
          servers: tuple[tuple[int, str], ...] = SERVERS) -> FleetSpec:
    return FleetSpec(ipaddress.ip_address("198.18.0.1"), 4433, mode, secret, servers)


def _map(text: str) -> dict[int, int]:
    body = text[text.index("map cid_owner"):text.index("chain raw")]
    return {int(k, 16): int(v, 16)
            for k, v in re.findall(r"(0x[0-9a-f]+) : (0x[0-9a-f]+)", body)}


def test_obfuscated_map_holds_exactly_the_configured_servers_prefixes() -> None:
    text = render_rules(_spec(CidMode.OBFUSCATED))
    entries = _map(text)
    owners = prefix_owners(CidMode.OBFUSCATED, SECRET)
    assert len(entries) == 256 * len(SERVERS)
    assert entries == {p: 0x6400 | sid for p, sid in enumerate(owners) if sid in (1, 2, 5)}
    assert "typeof @th,152,16 : meta mark" in text
    # A CID any server issues is routed to its own mark.
    for sid, _hop in SERVERS:
        cid = CidLayout(sid, CidMode.OBFUSCATED, SECRET).issue(os.urandom)
        assert entries[int.from_bytes(cid[:2], "big")] == 0x6400 | sid


def test_plain_map_is_by_server_id_and_the_hash_names_each_server_once() -> None:
    text = render_rules(_spec(CidMode.PLAIN, None))
    assert _map(text) == {1: 0x6401, 2: 0x6402, 5: 0x6405}
    assert "typeof @th,152,8 : meta mark" in text
    (hashed,) = re.findall(r"jhash ip saddr \. udp sport mod (\d+) seed 0x[0-9a-f]+ map "
                           r"\{ ([^}]*) \}", text)
    assert hashed[0] == "3"
    assert hashed[1] == "0 : 0x6401, 1 : 0x6402, 2 : 0x6405"
    assert "@th,64,24 0x19fefd udp length >= 29" in text
    assert "ip daddr 198.18.0.1 udp dport 4433 notrack" in text


def test_the_rules_are_the_same_for_the_same_fleet() -> None:
    assert render_rules(_spec(CidMode.OBFUSCATED)) == render_rules(_spec(CidMode.OBFUSCATED))
    other = render_rules(_spec(CidMode.OBFUSCATED, b"\x01" * 32))
    assert _map(other) != _map(render_rules(_spec(CidMode.OBFUSCATED)))


def test_routes_up_and_down() -> None:
    up = render_routes(_spec(CidMode.PLAIN))
    assert "ip route replace 198.18.0.1/32 table 4602 via 198.18.2.2" in up
    assert "ip rule add fwmark 0x6405 lookup 4605 priority 4605" in up
    down = render_routes(_spec(CidMode.PLAIN), frozenset({2}))
    assert ("ip route replace 198.18.0.1/32 table 4602 nexthop via 198.18.1.2 "
            "nexthop via 198.18.5.2") in down
    assert "ip route replace 198.18.0.1/32 table 4601 via 198.18.1.2" in down
    assert "fib_multipath_hash_policy=1" in down
    assert "\nip route replace 198.18.0.1/32 via 198.18.1.2\n" in down


def test_ipv6_rules() -> None:
    spec = FleetSpec(ipaddress.ip_address("2001:db8::1"), 4433, CidMode.PLAIN, None,
                     ((1, "2001:db8:1::2"), (2, "2001:db8:2::2")))
    text = render_rules(spec)
    assert "ip6 daddr 2001:db8::1 udp dport 4433 notrack" in text
    assert "jhash ip6 saddr . udp sport mod 2" in text
    assert "ip -6 route replace 2001:db8::1/128 table 4601 via 2001:db8:1::2" in (
        render_routes(spec))


def test_the_shipped_template_is_what_the_generator_writes() -> None:
    spec = _spec(CidMode.PLAIN, None, SERVERS[:2])
    assert (ROOT / "etc/dtlsvpn/fleet.nft.example").read_text() == render_rules(spec)


# --- the command ------------------------------------------------------------------------


def _conf(tmp: Path, lines: str, listen: str = "198.18.0.1:4433") -> Path:
    psk = tmp / "peer.psk"
    psk.write_text(os.urandom(32).hex() + "\n")
    psk.chmod(0o600)
    secret = tmp / "fleet.key"
    secret.write_text(SECRET.hex() + "\n")
    secret.chmod(0o600)
    path = tmp / "fleet.conf"
    path.write_text(f"[Interface]\nRole = server\nListenAddress = {listen}\n"
                    f"Address = 100.64.100.1/24\n{lines}\n[Peer]\nName = laptop\n"
                    f"PSKIdentity = laptop\nPSKFile = {psk}\nAllowedIPs = 100.64.100.10/32\n")
    return path


def test_command_writes_rules_and_routes(tmp_path: Path) -> None:
    conf = _conf(tmp_path, f"ServerId = 2\nFleetSecretFile = {tmp_path / 'fleet.key'}\n")
    out = tmp_path / "fleet.nft"
    argv = [str(conf), "--server", "1=198.18.1.2", "--server", "2=198.18.2.2"]
    assert main(["fleet-rules", *argv, "-o", str(out)]) == 0
    assert out.read_text() == render_rules(_spec(CidMode.OBFUSCATED, SECRET, SERVERS[:2]))
    assert main(["fleet-rules", *argv, "--routes", "--down", "1", "-o", str(out)]) == 0
    assert "table 4601 nexthop via 198.18.2.2" in out.read_text()


@pytest.mark.parametrize(("lines", "listen", "extra", "message"), [
    ("", "198.18.0.1:4433", [], "not a fleet server's config"),
    ("ServerId = 3\nFleetCID = plain\n", "198.18.0.1:4433", [], "own ServerId 3"),
    ("ServerId = 1\nFleetCID = plain\n", "[::]:4433", [], "give the public address"),
    ("ServerId = 1\nFleetCID = plain\n", "198.18.0.1:4433", ["--server", "1=198.18.9.9"],
     "given twice"),
    ("ServerId = 1\nFleetCID = plain\n", "198.18.0.1:4433", ["--routes", "--down", "7"],
     "--down: 7 is not a configured server"),
    ("ServerId = 1\nFleetCID = plain\n", "198.18.0.1:4433", ["--server", "4=2001:db8::4"],
     "not of the public address's family"),
    ("ServerId = 1\nFleetCID = plain\n", "198.18.0.1:4433", ["--down", "2"],
     "use it with --routes"),
])
def test_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str,
                        listen: str, extra: list[str], message: str) -> None:
    conf = _conf(tmp_path, lines, listen)
    argv = ["fleet-rules", str(conf), "--server", "1=198.18.1.2", "--server", "2=198.18.2.2"]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err


def test_command_bad_server_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet-rules", "x.conf", "--server", "300=198.18.1.2"]) == 2
    assert "ID=NEXTHOP" in capsys.readouterr().err


def test_command_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = _conf(tmp_path, "ServerId = 1\n")
    assert main(["fleet-rules", str(conf), "--server", "1=198.18.1.2"]) == 1
    assert f"{conf}:5: ServerId: expected FleetSecretFile" in capsys.readouterr().err
