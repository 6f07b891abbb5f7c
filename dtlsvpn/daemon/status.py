"""Status socket: a UNIX stream socket (mode 0600) answering one request per connection.

Protocol (one request line, then the reply, then the daemon closes the connection):

- ``get``       → ``key=value`` lines in the spirit of wireguard-go's UAPI: the
                  interface's keys, then for each peer a ``peer=NAME`` line followed by
                  that peer's keys; drop counters appear as ``drop_<reason>=N``.
- ``get json``  → the same data as one JSON document.

The listener and its connections are non-blocking fds in the daemon's loop; a reply that
does not fit in the socket buffer at once is finished when the connection is writable.
The socket is created under umask 077 and chmod'ed to 0600, so only root can ask.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtlsvpn.daemon.loop import EPOLLOUT, Loop

MAX_REQUEST = 1024
MAX_CONNECTIONS = 16

Snapshot = Callable[[], dict[str, Any]]


def format_text(snap: dict[str, Any]) -> str:
    """The ``key=value`` form of a snapshot."""
    lines: list[str] = []

    def emit(prefix: str, items: dict[str, Any]) -> None:
        for key, value in items.items():
            if isinstance(value, dict):
                emit(f"{prefix}{key}_", value)
            elif isinstance(value, bool):
                lines.append(f"{prefix}{key}={'yes' if value else 'no'}")
            elif isinstance(value, (list, tuple)):
                lines.append(f"{prefix}{key}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"{prefix}{key}={'' if value is None else value}")

    emit("", snap.get("interface", {}))
    for peer in snap.get("peers", []):
        lines.append(f"peer={peer.get('name', '')}")
        emit("", {k: v for k, v in peer.items() if k != "name"})
    return "\n".join(lines) + "\n"


class StatusServer:
    """Serves snapshots on ``path`` from inside the daemon loop."""

    def __init__(self, path: Path, snapshot: Snapshot, loop: Loop) -> None:
        self.path = path
        self.snapshot = snapshot
        self.loop = loop
        self._conns: dict[int, tuple[socket.socket, bytearray, bytearray]] = {}
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
        self.sock = sock
        loop.add(sock.fileno(), self._on_accept)

    def _on_accept(self, _mask: int, _now: float, _wall: float) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            self._conns[fd] = (conn, bytearray(), bytearray())
            self.loop.add(fd, self._conn_handler(fd))

    def _conn_handler(self, fd: int) -> Callable[[int, float, float], None]:
        def handler(_mask: int, _now: float, _wall: float) -> None:
            self._on_conn(fd)

        return handler

    def _on_conn(self, fd: int) -> None:
        entry = self._conns.get(fd)
        if entry is None:
            return
        conn, inbuf, outbuf = entry
        if outbuf:
            self._flush(fd, conn, outbuf)
            return
        try:
            data = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if inbuf:
                self._answer(fd, conn, bytes(inbuf), outbuf)
            else:
                self._drop(fd)
            return
        inbuf += data
        if b"\n" in inbuf or len(inbuf) >= MAX_REQUEST:
            self._answer(fd, conn, bytes(inbuf), outbuf)

    def _answer(self, fd: int, conn: socket.socket, request: bytes, outbuf: bytearray) -> None:
        words = request.split(b"\n", 1)[0].decode(errors="replace").split()
        if words[:1] != ["get"]:
            reply = "error=unknown request (expected 'get' or 'get json')\n"
        else:
            snap = self.snapshot()
            reply = (json.dumps(snap, indent=2, sort_keys=False) + "\n"
                     if words[1:2] == ["json"] else format_text(snap))
        outbuf += reply.encode()
        self._flush(fd, conn, outbuf)

    def _flush(self, fd: int, conn: socket.socket, outbuf: bytearray) -> None:
        try:
            sent = conn.send(outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(fd)
            return
        del outbuf[:sent]
        if outbuf:
            self.loop.modify(fd, EPOLLOUT)
        else:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        entry = self._conns.pop(fd, None)
        self.loop.remove(fd)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        for fd in list(self._conns):
            self._drop(fd)
        self.loop.remove(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def query(path: Path, *, as_json: bool = False, timeout: float = 5.0) -> str:
    """Ask a running daemon for its status (used by ``dtlsvpn status``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b"get json\n" if as_json else b"get\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode()

