"""Two daemons with known secrets: none of them in logs, notifications or status.

The PSK of the pair, the session master secret the client stored in its ticket file
and the server's ticket keys are read back from the files the daemons use, then
searched for (hex, upper-case hex, bytes repr, base64) in every log record (DEBUG
level), every systemd notification and the JSON status snapshot of both daemons,
after a handshake, traffic and a resumption.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from pathlib import Path

import pytest

from dtlsvpn.crypto.tickets import parse_keys
from dtlsvpn.dtls.session import ClientSession
from tests.shell.conftest import Pair, established


def _secrets(workdir: Path) -> list[bytes]:
    found = [bytes.fromhex(p.read_text().strip()) for p in workdir.glob("psk*.hex")]
    for path in workdir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".ticket":
            found.append(ClientSession.decode(data.decode()).master_secret)
        elif b"\n" in data and path.suffix not in (".conf", ".hex", ".sock"):
            with contextlib.suppress(ValueError):
                found += [k.secret for k in parse_keys(data)]
    return found


def test_no_secret_in_logs_notifications_or_status(
    pair: Pair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, client = pair()
    world = server.world
    world.run_for(5.0)
    client.stop()
    again = world.start(client.conf, "198.18.0.2")  # the same credentials: it resumes
    assert world.run_until(lambda: established(again))
    world.run_for(2.0)
    secrets = _secrets(tmp_path)
    assert len(secrets) >= 2, "expected the PSK and at least one stored master secret"
    texts = ["\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records),
             "\n".join(server.messages + client.messages + again.messages),
             json.dumps(server.snapshot(), default=str), json.dumps(again.snapshot(), default=str)]
    assert caplog.records, "no log records captured: the test would prove nothing"
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), repr(secret)[2:-1],
                     base64.b64encode(secret).decode()):
            for text in texts:
                assert form not in text, f"secret {form[:8]}… in {text[:120]}"
