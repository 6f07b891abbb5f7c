"""The bench's knobs (BENCH_* in bench/main.py) and the many-idle-peers server
configuration (bench/idle.py), which must load with the daemon's own config loader."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from bench.idle import FIRST_IDLE, IDLE_NET, _summarise, peer_sections
from bench.main import Settings, main
from bench.pairs import Pairing, configs
from bench.procs import BenchError
from dtlsvpn.daemon.settings import load_config
from dtlsvpn.dtls.admission import AdmissionLimits


def test_defaults_are_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert (s.rounds, s.seconds, s.idle_peers, s.idle_rounds) == (3, 5.0, 1000, 5)
    assert s.systems == ["bare", "dtlsvpn", "openvpn", "wireguard", "ocserv", "floor", "idle",
                         "core"]


def test_knobs_are_read_from_the_environment() -> None:
    s = Settings.from_env({"BENCH_ROUNDS": "1", "BENCH_SECONDS": "2.5",
                           "BENCH_SYSTEMS": "dtlsvpn, core", "BENCH_IDLE_PEERS": "20",
                           "BENCH_IDLE_ROUNDS": "2"})
    assert (s.rounds, s.seconds, s.systems, s.idle_peers, s.idle_rounds) == \
        (1, 2.5, ["dtlsvpn", "core"], 20, 2)


@pytest.mark.parametrize("env, message", [
    ({"BENCH_SYSTEMS": "dtlsvpn,strongswan"}, "unknown strongswan"),
    ({"BENCH_ROUNDS": "three"}, "BENCH_ROUNDS='three': expected a whole number"),
    ({"BENCH_ROUNDS": "0"}, "BENCH_ROUNDS='0': must be at least 1"),
    ({"BENCH_IDLE_ROUNDS": "0"}, "BENCH_IDLE_ROUNDS='0': must be at least 1"),
    ({"BENCH_IDLE_ROUNDS": "x"}, "BENCH_IDLE_ROUNDS='x': expected a whole number"),
    ({"BENCH_IDLE_PEERS": "-5"}, "BENCH_IDLE_PEERS='-5': must be at least 1"),
    ({"BENCH_SECONDS": "0.5"}, "BENCH_SECONDS='0.5': must be a finite number"),
    ({"BENCH_SECONDS": "nan"}, "BENCH_SECONDS='nan': must be a finite number"),
    ({"BENCH_SECONDS": "inf"}, "BENCH_SECONDS='inf': must be a finite number"),
    ({"BENCH_IDLE_SETUP": "soon"}, "BENCH_IDLE_SETUP='soon': expected seconds"),
])
def test_bad_knobs_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(BenchError, match=message):
        Settings.from_env(env)


def test_idle_peer_sections_load_as_a_server_config(tmp_path: Path) -> None:
    psk = tmp_path / "idle.psk"
    psk.write_text("ab" * 32 + "\n")
    psk.chmod(0o600)
    conf = tmp_path / "idle.conf"
    conf.write_text(f"""[Interface]
Role = server
ListenAddress = 198.18.0.1:4434
Address = 100.64.1.1/24, {IDLE_NET}
StatusSocket = {tmp_path / "s.sock"}
TicketStore = {tmp_path / "state"}

{peer_sections(300, str(psk))}""")
    conf.chmod(0o600)
    cfg = load_config(conf)
    assert len(cfg.peers) == 300
    assert cfg.peers[0].psk_identity == b"idle-00001"
    assert cfg.peers[299].allowed_prefixes == (ipaddress.ip_network(f"{FIRST_IDLE + 299}/32"),)
    assert all(ipaddress.ip_network(IDLE_NET, strict=False).supernet_of(p.allowed_prefixes[0])
               for p in cfg.peers)


def test_help_prints_the_knobs_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "BENCH_SYSTEMS" in capsys.readouterr().out


def test_an_argument_is_refused_before_anything_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "1"]) == 2
    assert "BENCH_* environment variables" in capsys.readouterr().err


def test_the_core_bench_pairs_more_handshakes_than_the_admission_burst_allows() -> None:
    """The handshake-rate figure measures the core, not the flood guard: every limit of
    the endpoint's admission is lifted (one new association past the burst made the
    core bench report "handshake did not complete in memory")."""
    client, server = configs("psk-plain", None)  # type: ignore[arg-type]  # (no certificate)
    pairing = Pairing(server)
    burst = int(AdmissionLimits().new_per_source_burst)
    for _ in range(burst + 10):  # one fake instant, one source host
        pairing.drop(pairing.handshake(client).server)


def test_idle_summary_pairs_each_round_with_its_own_run_without() -> None:
    series = {"without": [100.0, 200.0, None], "with": [90.0, 150.0, 10.0],
              "established_rounds": [5, 5, 5], "setup_rounds": [1.0, 2.0, 1.5],
              "setup_progress_rounds": [{}], "server_view": [6],
              "server_idle_cores_rounds": [0.1], "idle_clients_cores_rounds": [0.1],
              "idle_clients_busy_cores_rounds": [0.1]}
    out = _summarise(series)
    assert out["ratio_rounds"] == [0.9, 0.75, None]
    assert out["ratio"] == pytest.approx(90.0 / 150.0)  # the medians' ratio: 90 / 150
    assert out["setup_seconds"] == 2.0
