"""Fixtures for the in-process daemon tests: a ``World``, loopback worlds and PSK
configurations (``hub_conf``: a hub with N branches), and the compiled lane's
``needs_lane`` marker.

The configurations are the namespace tests' (``tests/netns/harness.py``), so both
layers run the same files; here they are loaded and run on fake devices.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtlsvpn.daemon import compiled
from tests.fakes.loopback import LOCAL, LoopbackWorld, free_port
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair, secret_file
from tests.support.conf import TunnelConf, Value


def _lane_missing() -> str:
    if os.environ.get("DTLSVPN_COMPILED_LANE") == "off":
        return "DTLSVPN_COMPILED_LANE=off turns the compiled lane off: unset it to run these"
    return "dtlsvpn.daemon._lane is not built: run `make venv` (needs gcc and libssl-dev)"


# The compiled module's test modules (the lane, segment, coalesce, the sealer):
# ``pytestmark = needs_lane``.
needs_lane = pytest.mark.skipif(compiled.module is None, reason=_lane_missing())

SERVER = "198.18.0.1"
CLIENT = "198.18.0.2"


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def worlds() -> Iterator[list[LoopbackWorld]]:
    """Loopback worlds (``tests/fakes/loopback.py``) a test starts; closed after it."""
    made: list[LoopbackWorld] = []
    yield made
    for world in made:
        world.close()


Pair = Callable[..., tuple[Host, Host]]


@pytest.fixture
def pair(world: World, tmp_path: Path) -> Pair:
    """``pair(mtu=..., **interface)``: a server and a client daemon, handshake done
    (``interface``: more [Interface] keys for both, as ``tests.support.conf`` spells them)."""

    def start(mtu: str = "auto", **interface: Value) -> tuple[Host, Host]:
        server_conf, client_conf = psk_pair(tmp_path, mtu=mtu, **interface)
        server = world.start(server_conf, SERVER)
        client = world.start(client_conf, CLIENT)
        assert world.run_until(lambda: established(client) and established(server)), (
            client.snapshot(), server.snapshot())
        return server, client

    return start


def established(host: Host) -> bool:
    return all(p["state"] == "established" for p in host.snapshot()["peers"])


def hub_conf(workdir: Path, branches: dict[str, tuple[str, ...]], hub: tuple[str, ...],
             routes: tuple[str, ...], **common: Any) -> tuple[Path, dict[str, Path]]:
    """A PSK hub (addresses ``hub``, with prefix lengths) and one client per branch
    (its host addresses; /32 or /128 in the hub's AllowedIPs, /24 or /64 on its TUN,
    ``routes`` into the tunnel), written under ``workdir``: (hub, {branch: client})."""
    workdir.mkdir()
    port = free_port()
    server = TunnelConf(comment="hub", role="server", listen_address=f"{LOCAL}:{port}",
                        device="dvs0", address=hub, status_socket=workdir / "hub.sock",
                        ticket_store=workdir / "hub-state", **common)
    clients = {}
    for b, ips in branches.items():
        psk = secret_file(workdir / f"psk-{b}.hex", secrets.token_hex(32) + "\n")
        server.peer(name=f"branch-{b}", psk_identity=f"branch-{b}", psk_file=psk,
                    allowed_ips=tuple(f"{ip}/{128 if ':' in ip else 32}" for ip in ips))
        clients[b] = TunnelConf(
            comment=f"branch {b}", role="client", device="dvc0",
            address=tuple(f"{ip}/{64 if ':' in ip else 24}" for ip in ips),
            status_socket=workdir / f"{b}.sock", ticket_store=workdir / f"tickets-{b}",
            **common,
        ).peer(name="hub", endpoint=f"{LOCAL}:{port}", psk_identity=f"branch-{b}",
               psk_file=psk, allowed_ips=routes).write(workdir / f"{b}.conf")
    return server.write(workdir / "hub.conf"), clients
