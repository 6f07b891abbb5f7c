"""The status socket's bounds pushed past (README "Security"): clients and request size.

200 clients connect and stay silent, and 20 more send a megabyte without a newline.
The server holds at most ``MAX_CONNECTIONS`` connections and at most ``MAX_REQUEST``
bytes of request per connection; what that costs is printed (``tracemalloc``).  While
16 silent clients hold every slot a status query is refused (printed, not asserted:
the socket is 0600, so only root can do that); when they go, it works again.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import tracemalloc
from pathlib import Path

import pytest

from dtlsvpn.daemon import status
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.status import MAX_CONNECTIONS, MAX_REQUEST, StatusServer, query

SNAP = {"name": "office", "peers": []}


def _run(loop: Loop, stop: threading.Event) -> None:
    timer = loop.timer(lambda now, wall: loop.stop() if stop.is_set()
                       else timer.schedule(now + 0.05))
    timer.schedule(loop.now)
    loop.run()


def test_status_socket_clients_and_request_size_are_capped(tmp_path: Path) -> None:
    loop = Loop()
    path = tmp_path / "office.sock"
    server = StatusServer(path, lambda: SNAP, loop)
    stop = threading.Event()
    thread = threading.Thread(target=_run, args=(loop, stop), daemon=True)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    thread.start()
    idle: list[socket.socket] = []
    try:
        refused = 0
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            idle.append(s)
            try:
                s.connect(str(path))
            except OSError:  # the listen backlog is full: refused at the door
                refused += 1
        big = []
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            with contextlib.suppress(OSError):  # refused, closed on us, or full: bounded
                s.connect(str(path))
                s.sendall(b"x" * (1 << 20))
            big.append(s)
        threading.Event().wait(0.5)
        held = max(0, tracemalloc.get_traced_memory()[0] - base)
        conns = len(server._conns)
        buffered = max((len(entry[1]) for entry in server._conns.values()), default=0)
        try:
            during = query(path, as_json=True)
            answered = "answered"
        except OSError as exc:
            during, answered = "", f"refused ({exc.__class__.__name__})"
        print(f"\nstatus socket: 220 clients ({refused} refused at connect) -> {conns} held "
              f"(cap {MAX_CONNECTIONS}), "
              f"largest request buffer {buffered} B (cap {MAX_REQUEST}), traced memory "
              f"{held / 1024:.1f} KiB; a status query meanwhile: {answered} {len(during)} B")
        assert conns <= MAX_CONNECTIONS
        assert buffered <= MAX_REQUEST
        assert held < 4 * 1024 * 1024
        for s in idle + big:
            s.close()
        idle, big = [], []
        threading.Event().wait(0.5)
        assert '"office"' in query(path, as_json=True, timeout=5.0)
    finally:
        for s in idle:
            s.close()
        stop.set()
        thread.join(5)
        tracemalloc.stop()
        server.close()
        loop.close()



def test_silent_clients_are_closed_after_the_timeout(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slot held by a client that never asks: the daemon closes them after
    ``CONN_TIMEOUT`` (shortened here), and the next query is answered."""
    monkeypatch.setattr(status, "CONN_TIMEOUT", 0.3)
    loop = Loop()
    path = tmp_path / "office.sock"
    server = StatusServer(path, lambda: SNAP, loop)
    stop = threading.Event()
    thread = threading.Thread(target=_run, args=(loop, stop), daemon=True)
    thread.start()
    silent: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            silent.append(s)
        threading.Event().wait(0.1)
        assert len(server._conns) == MAX_CONNECTIONS
        threading.Event().wait(1.0)
        assert not server._conns and not server._timers
        for s in silent:  # the daemon closed them: a read sees the end of the stream
            s.settimeout(1.0)
            assert s.recv(1) == b""
        assert '"office"' in query(path, as_json=True, timeout=5.0)
    finally:
        for s in silent:
            s.close()
        stop.set()
        thread.join(5)
        server.close()
        loop.close()
