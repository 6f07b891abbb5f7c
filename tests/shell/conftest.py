"""Fixtures for the in-process daemon tests: a ``World``, loopback worlds and PSK
configurations.

The configurations are the namespace tests' (``tests/netns/harness.py``), so both
layers run the same files; here they are loaded and run on fake devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtlsvpn.daemon import lane
from tests.fakes.loopback import LoopbackWorld
from tests.fakes.world import Host, World
from tests.netns.harness import psk_pair
from tests.support.conf import Value


def _lane_missing() -> str:
    if os.environ.get("DTLSVPN_COMPILED_LANE") == "off":
        return "DTLSVPN_COMPILED_LANE=off turns the compiled lane off: unset it to run these"
    return "dtlsvpn.daemon._lane is not built: run `make venv` (needs gcc and libssl-dev)"


# The compiled lane's test modules: ``pytestmark = needs_lane``.
needs_lane = pytest.mark.skipif(lane.MAX_FLOWS == 0, reason=_lane_missing())

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
