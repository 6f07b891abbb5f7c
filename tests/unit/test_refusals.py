"""The refusal log's limits (daemon/refusals.py): a flood does not fill the journal, but
every refusal is counted, and the lines that do go out say how many were left out."""

from __future__ import annotations

import logging

import pytest

from dtlsvpn.daemon import refusals
from dtlsvpn.daemon.refusals import Refusals, explain
from dtlsvpn.dtls.events import AssociationClosed


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_one_line_per_source_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    r = Refusals()
    for i in range(1000):  # one source, 1000 attempts in 100 s
        r.note("wrong_key", "198.18.0.2", "198.18.0.2:4000", "wrong key?", i * 0.1)
    lines = _lines(caplog)
    print(f"1000 refusals of one source in 100 s: {len(lines)} lines")
    assert len(lines) == 2 and r.counts == {"wrong_key": 1000}
    assert "599 more from 198.18.0.2 since the last report" in lines[1], lines


def test_a_flood_of_sources_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    r = Refusals()
    for i in range(10_000):  # 10 000 sources in 10 s
        r.note("timeout", f"198.18.{i // 250}.{i % 250}", "x", "timed out", i * 0.001)
    lines = _lines(caplog)
    print(f"10000 refusals from 10000 sources in 10 s: {len(lines)} lines")
    assert len(lines) <= refusals.BURST + 10 / refusals.REFILL + 1
    assert r.counts == {"timeout": 10_000} and len(r._sources) <= refusals.MAX_SOURCES
    r.note("timeout", "198.19.0.1", "198.19.0.1:1", "timed out", 100.0)
    assert "more refusals not logged (rate limit)" in _lines(caplog)[-1]


@pytest.mark.parametrize(("failure", "reason", "who", "server_says"), [
    ("unknown_ca", "unknown_ca: issuer CN=x is not a configured CA", "certificate CN=a",
     "certificate not signed by CA: issuer CN=x is not a configured CA"),
    ("wrong_key", "bad_record_mac: the peer's Finished failed authentication",
     "PSK identity alice", "PSK identity alice: Finished failed authentication — wrong key?"),
    ("unknown_psk_identity", "unknown_psk_identity: unknown PSK identity",
     "PSK identity bob", "PSK identity bob matches no [Peer]"),
    ("no_client_certificate", "handshake_failure: client certificate required", None,
     "no client certificate"),
    ("timeout", "handshake timed out", None, "handshake did not complete (timed out)"),
    ("unexpected_message", "unexpected_message: message type 1 in state X", None,
     "handshake failed: message type 1 in state X"),
])
def test_explain_in_our_words(failure: str, reason: str, who: str | None,
                              server_says: str) -> None:
    ev = AssociationClosed(local=True, reason=reason, alert=None, handshake=True,
                           failure=failure, peer_identity=who)
    said = explain(ev, server=True)
    assert said.startswith(server_says), said
    assert "candidates exhausted" not in said
