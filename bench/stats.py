"""Medians, spreads and ratios over the rounds of one run.

Invariants: a summary is computed only from the values that were measured (a failed
round leaves a gap, never a zero); "best peer" is the best competitor measured in this
same run (OpenVPN, wireguard-go, ocserv: never dtlsvpn itself, never the bare link),
highest for throughput and lowest for latency and CPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# metric -> (label, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "c2s_mbit": ("c→s 1 stream", "Mbit/s", True),
    "s2c_mbit": ("s→c 1 stream", "Mbit/s", True),
    "p4_mbit": ("c→s 4 streams", "Mbit/s", True),
    "rtt_idle_ms": ("RTT idle", "ms", False),
    "rtt_load_ms": ("RTT under load", "ms", False),
    "cpu_c2s": ("CPU c→s", "cores per Gbit/s", False),
    "cpu_s2c": ("CPU s→c", "cores per Gbit/s", False),
    "cpu_p4": ("CPU 4 streams", "cores per Gbit/s", False),
}


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        """(max − min) / median: the relative range over the rounds."""
        return (self.high - self.low) / self.median if self.median else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n,
                "spread": self.spread}


def summarise(values: Iterable[float | None]) -> Summary | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return Summary(statistics.median(got), min(got), max(got), len(got))


def best(summaries: Mapping[str, Summary | None], higher_is_better: bool
         ) -> tuple[str, Summary] | None:
    """The system with the best median among ``summaries`` (name, summary)."""
    known = [(name, s) for name, s in summaries.items() if s is not None]
    if not known:
        return None
    pick = max if higher_is_better else min
    return pick(known, key=lambda item: item[1].median)


def ratio(value: Summary | None, reference: Summary | None) -> float | None:
    if value is None or reference is None or reference.median == 0:
        return None
    return value.median / reference.median


def fmt_num(value: float | None, digits: int = 0) -> str:
    """``13 691``-style thousands with a thin space, or "–" for no value."""
    if value is None:
        return "–"
    text = f"{value:,.{digits}f}"
    return text.replace(",", "\u2009")


def fmt_summary(s: Summary | None, digits: int = 0) -> str:
    if s is None:
        return "–"
    if s.n == 1 or s.low == s.high:
        return fmt_num(s.median, digits)
    return f"{fmt_num(s.median, digits)} ({fmt_num(s.low, digits)}–{fmt_num(s.high, digits)})"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"
