"""``dtlsvpn check-config``: every mistake at once, forwarding warnings, a closed pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dtlsvpn.cli.main import main
from dtlsvpn.config import load_config
from dtlsvpn.daemon import forwarding
from tests.support.conf import TunnelConf

BAD = """[Interface]
Role = server
ListenAddress = 198.18.0.1:99999
Device = dtv-x
Address = 100.64.0.1/33
MTU = 12
Bogus = 1
HeartbeatInterval = soon

[Peer]
Name = b
PSKIdentity = b
PSKFile = {psk}
AllowedIPs = 100.64.0.2/32, 300.1.1.0/24
"""


def _psk(tmp_path: Path) -> Path:
    psk = tmp_path / "psk.hex"
    psk.write_text("ab" * 32 + "\n")
    psk.chmod(0o600)
    return psk


def test_every_mistake_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(BAD.format(psk=_psk(tmp_path)))
    assert main(["check-config", str(conf)]) == 1
    err = capsys.readouterr().err
    print(err)
    for line, key in ((3, "ListenAddress"), (5, "Address"), (6, "MTU"), (7, "Bogus"),
                      (8, "HeartbeatInterval"), (14, "AllowedIPs")):
        assert f"{conf}:{line}: {key}: " in err, err
    assert f"{conf}: 6 mistakes" in err
    lines = [int(x.split(":")[1]) for x in err.splitlines()
             if x.startswith(f"{conf}:") and "mistakes" not in x]
    assert lines == sorted(lines)


def test_one_mistake_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(BAD.format(psk=_psk(tmp_path)).replace("99999", "4433")
                    .replace("/33", "/24").replace("MTU = 12", "MTU = auto")
                    .replace("Bogus = 1\n", "").replace("soon", "2")
                    .replace(", 300.1.1.0/24", ""))
    assert main(["check-config", str(conf)]) == 0
    conf.write_text(conf.read_text().replace("MTU = auto", "MTU = 1"))
    assert main(["check-config", str(conf)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{conf}:6: MTU: "), err


def _site(tmp_path: Path) -> Path:
    return TunnelConf(role="server", listen_address="198.18.0.1:4433", device="dvs0",
                      address="100.64.0.1/24", status_socket=tmp_path / "s.sock",
                      ticket_store=tmp_path / "t").peer(
        name="branch", psk_identity="branch", psk_file=_psk(tmp_path),
        allowed_ips=["100.64.0.2/32", "100.64.20.0/24", "fd00:20::/64"]).write(
            tmp_path / "site.conf")


def test_forwarding_off_is_named(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    said = forwarding.problems(cfg, read={"net.ipv4.ip_forward": "0",
                                          "net.ipv6.conf.all.forwarding": "1"}.get)
    print(said)
    (text,) = said
    assert "100.64.20.0/24 ([Peer] branch)" in text and "net.ipv4.ip_forward is 0" in text
    assert "sysctl -w net.ipv4.ip_forward=1" in text and "fd00" not in text
    assert forwarding.problems(cfg, read=lambda _name: "1") == []
    unreadable = forwarding.problems(cfg, read=lambda _name: None)
    assert len(unreadable) == 2 and "could not be read" in unreadable[0]


def test_tunnel_only_and_full_tunnel_need_no_forwarding(tmp_path: Path) -> None:
    conf = _site(tmp_path)
    conf.write_text(conf.read_text().replace(", 100.64.20.0/24, fd00:20::/64", ""))
    assert forwarding.problems(load_config(conf), read=lambda _name: "0") == []
    conf.write_text(conf.read_text().replace("100.64.0.2/32", "100.64.0.2/32, 0.0.0.0/0"))
    assert forwarding.problems(load_config(conf), read=lambda _name: "0") == []


def test_closed_pipe_no_traceback(tmp_path: Path) -> None:
    conf = _site(tmp_path)
    res = subprocess.run(
        f"{sys.executable} -m dtlsvpn --help | head -c 1 >/dev/null; "
        f"{sys.executable} -m dtlsvpn check-config {conf} | head -c 1 >/dev/null",
        shell=True, capture_output=True, text=True, timeout=60)
    print(res.stderr)
    assert "Traceback" not in res.stderr and "BrokenPipeError" not in res.stderr, res.stderr
