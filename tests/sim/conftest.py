"""Fixtures for the simulation tests.

``pki`` overrides the suite-wide fixture of the same name with the same
``tests.pki.Pki``, anchored at the simulator's calendar (``FakeClock`` epoch) so
that certificates are valid at every simulated ``wall`` time, whatever today is.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.pki import Pki, make_pki
from tests.sim.clock import DEFAULT_EPOCH
from tests.sim.trace import FIGURES, LOSSY_FIGURES, lossy_summary


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("sim-pki"),
                    now=dt.datetime.fromtimestamp(DEFAULT_EPOCH, dt.UTC))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the simulation tests measured (handshakes under loss, PMTU,
    liveness, resumption), for whichever of them ran."""
    if LOSSY_FIGURES:
        terminalreporter.write_sep("-", "simulated handshakes at 30 % loss, 576-byte path")
        terminalreporter.write_line(lossy_summary())
    for section, lines in FIGURES.items():
        terminalreporter.write_sep("-", section)
        for line in lines:
            terminalreporter.write_line(line)
