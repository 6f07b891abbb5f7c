"""What a simulation run measured: the :class:`Trace` of one ``run_until``, and the
figures the sim tests gather for the terminal summary (see ``conftest.py``).

A Trace is a snapshot: counts and events at the end of the run, with the log a
failing test prints.  ``report(section, line)`` adds a line to a named section;
``LOSSY_FIGURES`` holds the per-seed handshake figures under loss.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from dtlsvpn.dtls.events import Event
from dtlsvpn.dtls.rekey import Rekeyed


class SimulationError(AssertionError):
    """The simulation itself went wrong (a core exception, a timer that never moves)."""


@dataclass
class Trace:
    """What one ``run_until`` did, for numeric assertions and failure messages."""

    satisfied: bool
    start: float
    end: float
    c2s_datagrams: int
    s2c_datagrams: int
    max_datagram: int
    oversize: int
    client_retransmissions: int
    server_retransmissions: int
    stateless_replies: int
    client_events: list[tuple[float, Event | Rekeyed]]
    server_events: list[tuple[float, Event]]
    log: list[str] = field(repr=False)

    @property
    def elapsed(self) -> float:
        return self.end - self.start

    @property
    def retransmissions(self) -> int:
        return self.client_retransmissions + self.server_retransmissions

    def summary(self) -> str:
        return (
            f"satisfied={self.satisfied} elapsed={self.elapsed:.4f}s "
            f"c2s={self.c2s_datagrams} s2c={self.s2c_datagrams} max={self.max_datagram}B "
            f"oversize={self.oversize} retx(c/s)={self.client_retransmissions}/"
            f"{self.server_retransmissions} hvr={self.stateless_replies}"
        )

    def format(self, last: int = 200) -> str:
        lines = self.log[-last:]
        events = [f"  {t:9.4f} client {e!r}" for t, e in self.client_events]
        events += [f"  {t:9.4f} server {e!r}" for t, e in self.server_events]
        return "\n".join([self.summary(), "events:", *events, "log:", *lines])


# --- figures gathered by the lossy tests, printed in the terminal summary ------------------

LOSSY_FIGURES: dict[str, list[tuple[int, float, int]]] = {}
"""mode -> [(seed, simulated seconds, retransmissions)] from ``test_lossy_handshake``."""


FIGURES: dict[str, list[str]] = {}
"""section title -> lines: measured figures other sim tests print in the terminal summary."""


def report(section: str, line: str) -> None:
    """Add one line to a section of the terminal summary (see conftest.py)."""
    FIGURES.setdefault(section, []).append(line)


def lossy_summary() -> str:
    """min/median/max of handshake time and retransmissions per mode."""
    out = []
    for mode, rows in LOSSY_FIGURES.items():
        times = [t for _, t, _ in rows]
        retx = [r for _, _, r in rows]
        out.append(
            f"{mode:20s} n={len(rows):2d}  time min/med/max {min(times):5.2f}/"
            f"{statistics.median(times):5.2f}/{max(times):5.2f} s  "
            f"retransmissions {min(retx)}/{statistics.median(retx):g}/{max(retx)}"
        )
    return "\n".join(out)

