"""The ticket key file: a server's :class:`~dtlsvpn.crypto.tickets.TicketKeyRing` on disk.

Purpose: keep the session-ticket keys across restarts and share them between servers
of one deployment (protocol.md "Session tickets and resumption").  The text format is
:mod:`dtlsvpn.crypto.tickets`' (``dumps`` / ``parse_keys``); this module owns the file.

Invariants:
- The file must be a regular file (opened with ``O_NOFOLLOW``: a symlink is refused)
  that group and others can neither read nor write: it holds every live ticket key.
- It is replaced atomically (:func:`dtlsvpn.fileutil.replace_private`: a 0600 temporary
  file in the same directory, fsync, rename), so readers never see half a file.
- A :class:`TicketKeyFile` remembers the file's signature (device, inode, mtime, size)
  from its last load, save or reload; :meth:`~TicketKeyFile.reload_if_changed` costs one
  ``stat`` while it is unchanged.  An atomic replace makes a new inode, so a change
  shows even within one mtime tick.
- Every problem with the file is a :class:`~dtlsvpn.errors.ConfigError` naming it (and
  the line, for a bad key line); a failed reload leaves the ring's keys as they were.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from dtlsvpn.crypto.tickets import (
    DEFAULT_ROTATE_EVERY,
    DEFAULT_TICKET_LIFETIME,
    KeyFileError,
    TicketKey,
    TicketKeyRing,
    parse_keys,
)
from dtlsvpn.errors import ConfigError
from dtlsvpn.fileutil import replace_private

Signature = tuple[int, int, int, int]


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class TicketKeyFile:
    """The key file at ``path``, and what this process last saw of it."""

    __slots__ = ("_signature", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._signature: Signature | None = None

    def load(
        self,
        random_bytes: Callable[[int], bytes],
        *,
        rotate_every: int = DEFAULT_ROTATE_EVERY,
        ticket_lifetime: int = DEFAULT_TICKET_LIFETIME,
    ) -> TicketKeyRing:
        """A ring holding the file's keys; :class:`ConfigError` if the file is unusable.

        A ring that only reads a file another server writes should pass
        ``rotate_every=0``.
        """
        keys, sig = self._read()
        ring = TicketKeyRing(random_bytes, rotate_every=rotate_every,
                             ticket_lifetime=ticket_lifetime, keys=keys)
        self._signature = sig
        return ring

    def save(self, ring: TicketKeyRing) -> None:
        """Write ``ring``'s keys atomically: a 0600 temporary file, fsync, rename."""
        replace_private(self.path, ring.dumps().encode("ascii"))
        self._signature = _signature(os.stat(self.path))

    def reload_if_changed(self, ring: TicketKeyRing) -> bool:
        """Give ``ring`` the file's keys if the file changed since the last load or save.

        True when the keys were replaced.  A file object that has not loaded or saved yet
        reads the file and replaces the keys only if they differ from the ring's.  On
        :class:`ConfigError` the ring's keys stay.
        """
        try:
            sig = _signature(os.stat(self.path))
        except OSError as e:
            raise ConfigError(self.path, None, None,
                              f"cannot stat ticket key file: {e.strerror}") from e
        if sig == self._signature:
            return False
        first_look = self._signature is None
        keys, sig = self._read()
        self._signature = sig
        if first_look and keys == ring.keys:
            return False
        ring.replace_keys(keys)
        return True

    def _read(self) -> tuple[tuple[TicketKey, ...], Signature]:
        name = self.path
        try:
            # O_NONBLOCK: a FIFO in the file's place must not hang the open.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise ConfigError(name, None, None, f"cannot open ticket key file: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(name, None, None, "ticket key file is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    name, None, None,
                    f"ticket key file has mode {stat.S_IMODE(st.st_mode):04o}: it must not be "
                    "readable or writable by group or others (chmod 600)",
                )
            with os.fdopen(fd, "rb") as f:
                fd = -1
                raw = f.read()
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            keys = parse_keys(raw)
        except KeyFileError as e:
            raise ConfigError(name, e.line, None, e.reason) from e
        return keys, _signature(st)
