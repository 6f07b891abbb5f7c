"""The bench's result document and its Markdown (bench/document.py, bench/report.py), on a
made-up run: ratios against the best peer and the bare link, goals, a missing system."""

from __future__ import annotations

from typing import Any

import pytest

from bench import document, report
from bench.rounds import SystemRun
from bench.systems.base import System


def _system(name: str, label: str, peer: bool) -> System:
    s = System()
    s.name, s.label, s.is_peer = name, label, peer
    return s


def _run(name: str, label: str, peer: bool, c2s: list[float | None], rtt: float,
         cpu: float) -> SystemRun:
    r = SystemRun(_system(name, label, peer), f"{label} 1.0")
    r.values["c2s_mbit"] = list(c2s)
    r.values["s2c_mbit"] = [v * 0.9 if v else None for v in c2s]
    r.values["rtt_idle_ms"] = [rtt] * len(c2s)
    r.values["cpu_c2s"] = [None if name == "bare" else cpu] * len(c2s)
    r.mtus = ["1500"] * len(c2s)
    return r


@pytest.fixture
def doc() -> dict[str, Any]:
    runs = [
        _run("bare", "bare veth", False, [13000, 14000, 13691], 0.05, 0),
        _run("dtlsvpn", "dtlsvpn", False, [480, 491, None], 0.91, 3.38),
        _run("openvpn", "OpenVPN", True, [575, 560, 600], 0.28, 2.5),
        _run("wireguard", "wireguard-go", True, [488, 470, 500], 0.48, 3.11),
    ]
    missing = SystemRun(_system("ocserv", "ocserv DTLS", True), "ocserv 1.1.6",
                        error="ocserv did not start: bind: Address in use")
    systems = [document.system_entry(r) for r in [*runs, missing]]
    best_peer, ratios = document.comparisons(systems)
    idle = {"requested": 1000, "established": 1000, "ratio": 384 / 476,
            "without_summary": {"median": 476, "min": 470, "max": 480, "n": 3},
            "with_summary": {"median": 384, "min": 380, "max": 390, "n": 3},
            "setup_seconds": 12.0, "server_idle_cores": 0.5, "idle_clients_cores": 0.02,
            "idle_clients_busy_cores": 0.31,
            "server_start_seconds": 3.0, "server_view_established": 1001,
            "ratio_rounds": [0.8, 384 / 476, None]}
    return {"date": "2026-12-01 21:40 UTC", "duration_seconds": 530.0,
            "machine": {"nproc": 2, "cpu": "Test CPU", "kernel": "6.1", "python": "3.11.7",
                        "cryptography": "45"},
            "git": {"commit": "0123456789abcdef", "branch": "main", "dirty": False},
            "settings": {"rounds": 3, "seconds": 5.0}, "versions": {"iperf3": "iperf 3.12"},
            "systems": systems, "best_peer": best_peer, "ratios": ratios,
            "idle_peers": idle, "core": None, "goals": document.goals(ratios, idle)}


def test_best_peer_is_a_competitor_never_dtlsvpn_or_bare(doc: dict[str, Any]) -> None:
    assert doc["best_peer"]["c2s_mbit"] == {"system": "openvpn", "median": 575}
    assert doc["best_peer"]["rtt_idle_ms"] == {"system": "openvpn", "median": 0.28}
    assert doc["best_peer"]["cpu_c2s"] == {"system": "openvpn", "median": 2.5}


def test_ratios_use_medians_of_the_measured_rounds(doc: dict[str, Any]) -> None:
    r = doc["ratios"]["dtlsvpn"]
    assert r["c2s_mbit"]["best_peer"] == pytest.approx(485.5 / 575)
    assert r["c2s_mbit"]["bare"] == pytest.approx(485.5 / 13691)
    assert r["rtt_idle_ms"]["openvpn"] == pytest.approx(0.91 / 0.28)
    assert doc["ratios"]["ocserv"]["c2s_mbit"]["best_peer"] is None


def test_goals_are_checked_against_their_reference(doc: dict[str, Any]) -> None:
    goals = {g["goal"]: g for g in doc["goals"]}
    assert goals["single stream c→s ≥ 2 × OpenVPN"]["met"] is False
    assert goals["CPU per Gbit/s c→s below every peer"]["ratio"] == pytest.approx(3.38 / 2.5)
    assert goals["RTT under load no worse than OpenVPN's"]["met"] is None
    idle = goals["busy peer keeps ≥ 90 % with 1000 idle peers"]
    assert idle["met"] is False and idle["ratio"] == pytest.approx(384 / 476)


def test_markdown_shows_every_system_and_the_missing_one(doc: dict[str, Any]) -> None:
    text = report.render(doc)
    assert "| dtlsvpn | dtlsvpn 1.0 | 486 (480–491) |" in text
    assert ("| ocserv DTLS | ocserv 1.1.6 | MISSING: ocserv did not start: bind: Address in use |"
            in text)
    assert "× best peer (OpenVPN)" in text
    assert "| 1000 | 12.0 s | 476 (470–480) | 384 (380–390) | 0.81× | – | – | 50 % of a core |" in text
    assert "2 % of a core with no data flowing and 31 % during the busy runs" in text
    assert "own ratio (with / without, seconds apart): 0.80×, 0.81×, –." in text
    assert "commit `0123456789ab` on `main`" in text
    assert "3 rounds × 5 s per iperf3 test" in text
