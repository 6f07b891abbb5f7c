"""Several real daemons in one process on fake devices, one fake clock and one fake underlay.

``World.start(conf, host)`` loads a configuration file and starts a ``Daemon`` with
``FakeDevices`` and its own ``Loop`` whose clocks read the world's ``FakeClock``.
``run_until(done, within)`` is the only way time passes: it steps every daemon's loop
with ``run_once(max_wait=0)`` while anything ran, and when a whole round was idle it
jumps the clock to the earliest deadline of any loop.  Nothing sleeps; a test reads
the result off the fakes and ``Daemon.snapshot()``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtlsvpn.daemon.daemon import Daemon
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.settings import load_config
from tests.fakes.devices import FakeDevices, FakeLink, FakeNet, FakeTun
from tests.sim.clock import FakeClock

MAX_STEPS = 2_000_000  # rounds without time passing before "no progress" is declared


class Host:
    """One daemon, its loop and its fake devices."""

    def __init__(self, world: World, conf: Path, underlay: str, seed: int,
                 tun: dict[str, bool] | None = None) -> None:
        self.world = world
        self.conf = conf
        clock = world.clock
        self.devices = FakeDevices(world.net, underlay, clock=lambda: clock.now)
        self.devices.tun_options = tun or {}  # FakeTun's vnet_refused, refuse_gso
        self.loop = Loop(clock=lambda: clock.now, wall_clock=lambda: clock.wall)
        self.daemon = Daemon(load_config(conf), devices=self.devices, loop=self.loop,
                             rng=random.Random(seed))
        assert self.daemon.start(), f"{conf.name} did not start"

    @property
    def tun(self) -> FakeTun:
        assert self.devices.tun is not None
        return self.devices.tun

    @property
    def link(self) -> FakeLink:
        return self.devices.link_state

    @property
    def messages(self) -> list[str]:
        return self.devices.notifier.messages

    def snapshot(self) -> dict[str, Any]:
        return self.daemon.snapshot()

    def peer(self, name: str | None = None) -> dict[str, Any]:
        peers = self.snapshot()["peers"]
        if name is None:
            (only,) = peers
            return dict(only)
        return dict(next(p for p in peers if p["name"] == name))

    def next_deadline(self) -> float | None:
        return self.loop.next_deadline()

    def stop(self) -> None:
        """SIGTERM: close_notify to the peers, teardown."""
        self.world.hosts.remove(self)
        self.daemon.stop()

    def crash(self) -> None:
        """SIGKILL: the ports vanish, nothing is said to the peers."""
        self.world.hosts.remove(self)
        self.devices.crash()
        if self.daemon.status is not None:
            self.daemon.status.close()
        self.tun.close()
        self.loop.close()
        if self.daemon.lock is not None:  # the kernel drops a dead process's flock
            self.daemon.lock.release()


class World:
    """The clock, the underlay and the running daemons."""

    def __init__(self, *, path_mtu: int = 1500, start: float = 1000.0,
                 **offloads: bool) -> None:
        """``offloads``: the fake kernel's ``gso``, ``gro``, ``refuse_gso`` (``FakeNet``)."""
        self.clock = FakeClock(start=start)
        self.net = FakeNet(path_mtu=path_mtu, **offloads)
        self.hosts: list[Host] = []
        self._seed = 0

    def start(self, conf: Path, underlay: str, tun: dict[str, bool] | None = None) -> Host:
        self._seed += 1
        host = Host(self, conf, underlay, self._seed, tun)
        self.hosts.append(host)
        return host

    def step(self) -> int:
        return sum(h.loop.run_once(max_wait=0) for h in list(self.hosts))

    def next_deadline(self) -> float | None:
        return min((d for h in self.hosts if (d := h.next_deadline()) is not None),
                   default=None)

    def run_until(self, done: Callable[[], bool], within: float = 30.0) -> bool:
        """Run until ``done()`` or ``within`` fake seconds passed; ``done()`` at the end."""
        limit = self.clock.now + within
        for _ in range(MAX_STEPS):
            if done():
                return True
            if self.step():
                continue
            nxt = self.next_deadline()
            if nxt is None or nxt > limit:
                self.clock.advance_to(limit)
                while self.step():
                    pass
                return done()
            self.clock.advance_to(nxt)
        raise AssertionError("no progress: the loops keep running without time passing")

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, within=seconds)

    def settle(self) -> None:
        """Run what is ready now, without letting time pass."""
        self.run_until(lambda: False, within=0.0)

    def close(self) -> None:
        for host in list(self.hosts):
            host.stop()
