"""The bench's statistics (bench/stats.py): medians over rounds, best peer, ratios, format."""

from __future__ import annotations

import pytest

from bench.stats import Summary, best, fmt_ratio, fmt_summary, ratio, summarise


def test_summary_skips_failed_rounds() -> None:
    s = summarise([500.0, None, 700.0, 600.0])
    assert s == Summary(600.0, 500.0, 700.0, 3)
    assert s.spread == pytest.approx(200 / 600)
    assert summarise([None, None]) is None
    assert summarise([]) is None


def test_even_count_median_is_the_mean_of_the_middle_two() -> None:
    assert summarise([1.0, 2.0, 3.0, 10.0]) == Summary(2.5, 1.0, 10.0, 4)


def test_best_is_highest_or_lowest_median() -> None:
    table = {"openvpn": Summary(575, 500, 600, 3), "wireguard": Summary(488, 400, 500, 3),
             "ocserv": Summary(747, 700, 800, 3), "broken": None}
    assert best(table, higher_is_better=True) == ("ocserv", table["ocserv"])
    assert best(table, higher_is_better=False) == ("wireguard", table["wireguard"])
    assert best({"x": None}, higher_is_better=True) is None


def test_ratio_of_medians() -> None:
    assert ratio(Summary(491, 0, 0, 1), Summary(747, 0, 0, 1)) == pytest.approx(491 / 747)
    assert ratio(None, Summary(1, 1, 1, 1)) is None
    assert ratio(Summary(1, 1, 1, 1), Summary(0, 0, 0, 1)) is None


def test_formatting() -> None:
    assert fmt_summary(Summary(13691.2, 13000, 14000.4, 3)) == "13\u2009691 (13\u2009000–14\u2009000)"
    assert fmt_summary(Summary(0.055, 0.055, 0.055, 3), 3) == "0.055"
    assert fmt_summary(None) == "–"
    assert fmt_ratio(0.6577) == "0.66×"
    assert fmt_ratio(None) == "–"
