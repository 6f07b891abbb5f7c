"""The debug tools' pieces on the event loop, in-process: stdin lines, the core timer, HOST:PORT.

No sockets: a pipe and a regular file stand in for stdin, a stub for the sans-I/O core.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from dtlsvpn.cli.argtypes import format_hostport, hostport, seconds
from dtlsvpn.cli.tool_loop import CoreTimer, LineReader
from dtlsvpn.daemon.loop import Loop


def _loop() -> tuple[Loop, list[float]]:
    """A loop on a fake clock: ``clock[0]`` is the monotonic time."""
    clock = [50.0]
    return Loop(clock=lambda: clock[0], wall_clock=lambda: 1_700_000_000.0 + clock[0]), clock


def _collect(loop: Loop, fd: int) -> tuple[LineReader, list[bytes]]:
    got: list[bytes] = []
    return LineReader(loop, fd, lambda lines, _now: got.extend(lines)), got


def test_pipe_lines_and_the_partial_last_line_at_eof() -> None:
    loop, _ = _loop()
    r, w = os.pipe()
    reader, got = _collect(loop, r)
    os.write(w, b"one\ntw")
    loop.run_once(max_wait=0)
    assert got == [b"one\n"] and not reader.eof
    os.write(w, b"o\nthree")
    os.close(w)
    for _ in range(3):
        loop.run_once(max_wait=0)
    assert got == [b"one\n", b"two\n", b"three"]
    assert reader.eof and reader.fd is None
    os.close(r)
    loop.close()


def test_regular_file_is_read_without_epoll(tmp_path: Path) -> None:
    path = tmp_path / "stdin.txt"
    path.write_bytes(b"a\nb\nc")
    loop, clock = _loop()
    with open(path, "rb") as f:
        reader, got = _collect(loop, f.fileno())  # epoll refuses a regular file
        for _ in range(4):
            clock[0] += 0.001
            loop.run_once(max_wait=0)
    assert got == [b"a\n", b"b\n", b"c"] and reader.eof
    loop.close()


def test_no_stdin_is_at_eof_at_once() -> None:
    loop, _ = _loop()
    reader = LineReader(loop, None, lambda lines, now: pytest.fail("no input expected"))
    assert reader.eof
    loop.close()


class Core:
    """A sans-I/O object's timer surface: one deadline, cleared by handle_timer."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.fired: list[float] = []

    def get_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.deadline = None


def test_core_timer_fires_when_due_and_rereads_the_deadline() -> None:
    loop, clock = _loop()
    core = Core(51.0)
    after: list[float] = []
    timer = CoreTimer(loop, core, lambda now, _wall: after.append(now))
    timer.rearm()
    clock[0] = 51.5
    loop.run_once(max_wait=0)
    assert core.fired == [51.5] and after == [51.5]
    # The core's deadline moves later after the Timer was armed: no early handle_timer.
    core.deadline = 52.0
    timer.rearm()
    core.deadline = 60.0
    clock[0] = 52.0
    loop.run_once(max_wait=0)
    assert core.fired == [51.5] and after == [51.5, 52.0]
    loop.close()


@pytest.mark.parametrize(("text", "addr"), [
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:4433", ("::1", 4433)),
    ("vpn.example.net:443", ("vpn.example.net", 443)),
    (":9", ("", 9)),
])
def test_hostport_round_trip(text: str, addr: tuple[str, int]) -> None:
    assert hostport(text) == addr
    assert format_hostport(addr) == text


@pytest.mark.parametrize("text", [":x", ":99999", "[::1]", "host", "a_b:1"])
def test_hostport_refusals_are_argparse_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        hostport(text)


def test_seconds_take_the_config_spellings() -> None:
    assert seconds("2") == 2.0 and seconds("500ms") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="seconds"):
        seconds("0")
