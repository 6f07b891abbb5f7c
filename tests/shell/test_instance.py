"""One instance per tunnel, start-up errors that name the thing (daemon/startup.py), and
a start that fails on a socket before it touches the TUN, an address or a route."""

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
from tests.shell.conftest import CLIENT, SERVER, established


def _second(world: World, conf: Path, underlay: str = SERVER) -> Daemon:
    return Daemon(load_config(conf), devices=FakeDevices(world.net, underlay))


def _calls(daemon: Daemon) -> list[str]:
    assert isinstance(daemon.devices, FakeDevices)
    return daemon.devices.calls


def _untouched(daemon: Daemon) -> None:
    """No TUN was opened and no link configured (no address, no route)."""
    devices = daemon.devices
    assert isinstance(devices, FakeDevices)
    print("calls:", devices.calls)
    assert devices.tun is None and devices.links == [], devices.calls


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
    second = _second(world, other_conf)
    assert second.start() is False
    (line,) = _errors(caplog)
    print(line)
    assert "cannot listen on 198.18.0.1:4433" in line, line
    assert f"{other_conf}:{line_no} ListenAddress" in line, line
    assert "already in use" in line and "Errno" not in line, line
    _untouched(second)  # it failed before the TUN: no interface, address or route
    assert _calls(second) == ["udp 198.18.0.1:4433"]
    assert not second.cfg.interface.status_socket.exists()


def test_sockets_are_bound_before_the_tun(world: World, tmp_path: Path) -> None:
    server_conf, client_conf = psk_pair(tmp_path)  # Transport = auto: UDP and TCP
    server = world.start(server_conf, SERVER)
    print(server.devices.calls)
    assert server.devices.calls[:4] == ["udp 198.18.0.1:4433", "tcp 198.18.0.1:4433",
                                        "tun dvs0", "link dvs0"]
    client = world.start(client_conf, CLIENT)
    assert client.devices.calls[:2] == ["tun dvc0", "link dvc0"]  # it dials later
    assert world.run_until(lambda: established(client) and established(server))


def test_tcp_only_server_fails_before_the_tun(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_conf, _ = psk_pair(tmp_path, transport="tcp")
    daemon = _second(world, server_conf)
    assert isinstance(daemon.devices, FakeDevices)
    daemon.devices.tcp_refused = errno.EADDRINUSE
    assert daemon.start() is False
    (line,) = _errors(caplog)
    print(line)
    line_no = next(i for i, text in enumerate(server_conf.read_text().splitlines(), 1)
                   if text.startswith("ListenAddress"))
    assert line.endswith(f"cannot listen on TCP 198.18.0.1:4433 ({server_conf}:{line_no} "
                         "ListenAddress): the TCP port is already in use (by another "
                         "process)"), line
    _untouched(daemon)
    assert _calls(daemon) == ["tcp 198.18.0.1:4433"]  # (no UDP socket with Transport = tcp)


def test_tcp_fallback_refused_is_logged_and_udp_serves(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_conf, _ = psk_pair(tmp_path, tcp_port=4443)
    daemon = _second(world, server_conf)
    assert isinstance(daemon.devices, FakeDevices)
    daemon.devices.tcp_refused = errno.EADDRINUSE
    assert daemon.start() is True
    (line,) = _errors(caplog)
    print(line)
    assert "cannot listen on TCP 198.18.0.1:4443 (" in line and " TCPPort)" in line, line
    assert line.endswith("already in use (by another process): no TCP fallback for clients")
    calls = _calls(daemon)
    assert calls.index("tcp 198.18.0.1:4443") < calls.index("tun dvs0"), calls
    daemon.stop()


@pytest.mark.parametrize("role", ["server", "client"])
def test_status_socket_refused_before_the_tun(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, role: str) -> None:
    server_conf, client_conf = psk_pair(tmp_path)
    conf = server_conf if role == "server" else client_conf
    long_dir = tmp_path / ("d" * 120)  # an AF_UNIX path holds 108 bytes
    text = conf.read_text()
    old = next(x for x in text.splitlines() if x.startswith("StatusSocket"))
    conf.write_text(text.replace(old, f"StatusSocket = {long_dir / 'x.sock'}"))
    daemon = _second(world, conf, SERVER if role == "server" else CLIENT)
    assert daemon.start() is False
    (line,) = _errors(caplog)
    print(line)
    assert "cannot create the status socket" in line and " StatusSocket)" in line, line
    _untouched(daemon)
    if role == "server":  # its port was bound first, and closed again
        assert _calls(daemon)[:1] == ["udp 198.18.0.1:4433"]
        assert ("198.18.0.1", 4433) not in world.net.ports
    assert not (long_dir / "x.lock").exists()  # the lock went with it


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
