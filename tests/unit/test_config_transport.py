"""The TCP fallback's configuration keys: Transport, TCPPort, TCPFallbackAfter."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtlsvpn.config.loader import load_config
from dtlsvpn.config.values import port, transport
from dtlsvpn.errors import ConfigError
from tests.support.conf import TunnelConf


class Creds:
    """A PSK file for the two configurations below."""

    def __init__(self, directory: Path) -> None:
        self.psk = directory / "psk.hex"
        self.psk.write_text("00" * 32 + "\n")
        self.psk.chmod(0o600)


@pytest.fixture
def creds(tmp_path: Path) -> Creds:
    return Creds(tmp_path)


def server_text(c: Creds) -> str:
    return TunnelConf(role="server", listen_address="198.18.0.1:4433", device="dvs0",
                      address=("100.64.0.1/24",)).peer(
        name="branch", psk_identity="branch", psk_file=c.psk,
        allowed_ips=("100.64.0.2/32",)).render()


def client_text(c: Creds) -> str:
    return TunnelConf(role="client", device="dvc0", address=("100.64.0.2/24",)).peer(
        name="office", endpoint="198.18.0.1:4433", psk_identity="branch", psk_file=c.psk,
        allowed_ips=("100.64.0.0/24",)).render()


def write(tmp: Path, text: str) -> Path:
    path = tmp / "office.conf"
    path.write_text(text)
    return path


def _with(text: str, lines: str) -> str:
    return text.replace("[Interface]\n", f"[Interface]\n{lines}", 1)


def test_defaults_are_auto_same_port_three_seconds(tmp_path: Path, creds: Creds) -> None:
    for text in (server_text(creds), client_text(creds)):
        iface = load_config(write(tmp_path, text)).interface
        assert iface.transport == "auto"
        assert iface.tcp_port is None
        assert iface.tcp_fallback_after == 3.0


def test_values_parse(tmp_path: Path, creds: Creds) -> None:
    text = _with(client_text(creds), "Transport = TCP\nTCPPort = 443\nTCPFallbackAfter = 1.5\n")
    iface = load_config(write(tmp_path, text)).interface
    assert (iface.transport, iface.tcp_port, iface.tcp_fallback_after) == ("tcp", 443, 1.5)


@pytest.mark.parametrize("line, key, words", [
    ("Transport = quic\n", "Transport", "expected one of auto, udp, tcp, got 'quic'"),
    ("TCPPort = 0\n", "TCPPort", "expected a port number 1-65535"),
    ("TCPPort = https\n", "TCPPort", "expected a port number 1-65535"),
    ("TCPFallbackAfter = 0.1\n", "TCPFallbackAfter", "expected 0.5 to 60 seconds"),
    ("TCPFallbackAfter = soon\n", "TCPFallbackAfter", ""),
])
def test_bad_values_name_file_line_and_key(line: str, key: str, words: str, tmp_path: Path,
                                           creds: Creds) -> None:
    path = write(tmp_path, _with(server_text(creds), line))
    with pytest.raises(ConfigError, match=key) as err:
        load_config(path)
    first = _with(server_text(creds), line).splitlines().index(line.strip()) + 1
    assert err.value.line == first and err.value.key == key
    assert words in str(err.value)


def test_value_parsers() -> None:
    assert transport(" Auto ") == "auto"
    assert port("65535") == 65535
    with pytest.raises(ValueError):
        port("65536")
