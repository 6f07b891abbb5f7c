"""One instance per tunnel, and start-up errors that name the thing (daemon/startup.py)."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import pytest

from dtlsvpn.daemon import startup
from dtlsvpn.daemon.daemon import Daemon
from dtlsvpn.daemon.settings import load_config
from tests.fakes.devices import FakeDevices
from tests.fakes.world import World
from tests.netns.harness import psk_pair
from tests.shell.conftest import SERVER


def _second(world: World, conf: Path) -> Daemon:
    return Daemon(load_config(conf), devices=FakeDevices(world.net, SERVER))


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_second_instance_refused_first_keeps_its_socket(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_conf, _client_conf = psk_pair(tmp_path)
    first = world.start(server_conf, SERVER)
    sock = first.daemon.cfg.interface.status_socket
    inode = sock.stat().st_ino
    second = _second(world, server_conf)
    assert second.start() is False
    (line,) = _errors(caplog)
    print(line)
    assert "another dtlsvpn already runs this tunnel" in line, line
    assert str(startup.lock_path(sock)) in line and "left alone" in line, line
    assert sock.is_socket() and sock.stat().st_ino == inode  # untouched
    assert first.daemon.status is not None and first.daemon.status.path == sock
    # The first one stops: its lock goes with it, and a new instance starts.
    first.stop()
    assert not startup.lock_path(sock).exists() and not sock.exists()  # nothing left behind
    third = world.start(server_conf, SERVER)
    assert third.daemon.lock is not None


def test_bind_conflict_names_the_address_and_line(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_conf, _ = psk_pair(tmp_path)
    world.start(server_conf, SERVER)
    other_conf, _ = psk_pair(tmp_path, tag="-b")  # same ListenAddress, another tunnel
    line_no = next(i for i, text in enumerate(other_conf.read_text().splitlines(), 1)
                   if text.startswith("ListenAddress"))
    assert _second(world, other_conf).start() is False
    (line,) = _errors(caplog)
    print(line)
    assert "cannot listen on 198.18.0.1:4433" in line, line
    assert f"{other_conf}:{line_no} ListenAddress" in line, line
    assert "already in use" in line and "Errno" not in line, line


def test_udp_holder_is_found() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        holder = startup.udp_holder(s.getsockname()[1])
    print("holder:", holder)
    assert holder is not None and "pid " in holder


def test_busy_tun_names_the_device_and_line(tmp_path: Path) -> None:
    server_conf, _ = psk_pair(tmp_path)
    cfg = load_config(server_conf)
    text = startup.describe_tun(OSError(errno.EBUSY, "Device or resource busy"), cfg)
    print(text)
    assert text.startswith("cannot open TUN device dvs0 (") and " Device)" in text, text
    assert f"{server_conf}:" in text and "busy" in text
