"""``dtlsvpn status --json`` has one shape in every mode, checked against
schema/status.schema.json (validator: tests/support/schema.py).

The daemons run on fake devices, but their status sockets are real UNIX sockets; the
``status`` command runs in a thread while the world's loops answer it."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from dtlsvpn.cli.main import main
from tests.fakes.world import World
from tests.shell.conftest import Pair
from tests.support.schema import validate

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schema" / "status.schema.json")
                    .read_text())
DOCUMENTED = Path(__file__).resolve().parents[2] / "README.md"


def _status(world: World, argv: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    result: list[int] = []

    def run() -> None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            result.append(main(["status", *argv, "--json"]))

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        world.step()
        thread.join(0.001)
    return result[0], json.loads(out.getvalue())


def _valid(doc: dict[str, Any]) -> None:
    errors = validate(doc, SCHEMA)
    assert not errors, "\n".join(errors)


def test_every_mode_has_one_shape(pair: Pair, tmp_path: Path) -> None:
    server, _client = pair()
    world = server.world
    world.run_for(3.0)
    sock = server.daemon.cfg.interface.status_socket
    rundir = sock.parent  # the pair's sockets: server.sock, client.sock
    modes = {
        "named": ["server", "--rundir", str(rundir)],
        "socket": ["--socket", str(sock)],
        "path as NAME": [str(sock)],  # a StatusSocket path given where NAME goes
        "all": ["--rundir", str(rundir)],
    }
    for mode, argv in modes.items():
        rc, doc = _status(world, argv)
        assert rc == 0, (mode, doc)
        _valid(doc)
        names = sorted(t["interface"]["name"] for t in doc["tunnels"])
        print(f"{mode}: version {doc['version']}, tunnels {names}")
        assert names == (["client", "server"] if mode == "all" else ["server"])
    rc, doc = _status(world, ["nothere", "--rundir", str(rundir)])
    assert rc == 1 and doc["tunnels"] == [] and "running" in doc["errors"][0]["error"]
    _valid(doc)
    rc, doc = _status(world, ["--rundir", str(tmp_path / "empty")])
    assert rc == 1 and doc == {"version": 1, "tunnels": [], "errors": []}


def test_schema_rejects_drift() -> None:
    bad = {"version": 1, "tunnels": [{"interface": {"name": "x"}, "peers": [{}]}],
           "errors": []}
    errors = validate(bad, SCHEMA)
    assert any("missing 'device'" in e for e in errors) and any("peers[0]" in e for e in errors)
    assert validate({"version": 2, "tunnels": [], "errors": []}, SCHEMA)
    assert validate({"version": 1, "tunnels": [], "errors": [], "more": 1}, SCHEMA)


@pytest.mark.parametrize("section", ["interface", "peer"])
def test_every_field_is_documented(section: str) -> None:
    readme = DOCUMENTED.read_text()
    fields = SCHEMA["$defs"][section]["properties"]
    missing = [f for f in fields if f"`{f}`" not in readme]
    assert not missing, f"README does not document {section} fields {missing}"


def test_every_drop_reason_is_documented() -> None:
    from dtlsvpn.daemon.snapshot import DTLS_DROP_REASONS
    from dtlsvpn.vpn.router import RouterStats

    readme = DOCUMENTED.read_text()
    daemon_reasons = {"no_session", "too_big", "tun_write", "send_error", "send_buffer_full",
                      "emsgsize", "unbound", "unknown_peer"}
    reasons = DTLS_DROP_REASONS | set(RouterStats().as_dict()) | daemon_reasons
    missing = sorted(r for r in reasons if f"`{r}`" not in readme)
    assert not missing, f"README does not explain drop reasons {missing}"
