"""Client ticket store: one file per server, mode 0600, replaced by atomic rename.

A ticket file holds a master secret (``ClientSession.encode``), so it is written to a
temporary file created with mode 0600 in the same directory, fsync'ed and renamed over
the old one: a reader sees the old file or the new one, never half of either.  A file
that does not decode, or a session the server refused, is deleted.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import DecodeError
from dtlsvpn.fileutil import replace_private

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class TicketStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, server: str) -> Path:
        return self.directory / (_UNSAFE.sub("_", server) + ".ticket")

    def load(self, server: str, wall: float) -> ClientSession | None:
        path = self._path(server)
        try:
            if path.stat().st_mode & 0o077:
                # It holds a master secret: one others could read is no longer secret.
                self.forget(server)
                return None
            session = ClientSession.decode(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, DecodeError, ValueError):
            self.forget(server)
            return None
        if not session.usable(wall):
            self.forget(server)
            return None
        return session

    def save(self, server: str, session: ClientSession) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_private(self._path(server), session.encode().encode())

    def forget(self, server: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(server).unlink()
