"""Files that hold secrets: written whole or not at all, never readable by others.

``replace_private`` is the one way the project replaces such a file (session
tickets, ticket keys): a temporary file of mode 0600 in the same directory,
written and fsynced, renamed over the target, then the directory fsynced so
the rename survives a crash.  A reader sees the old content or the new, never
a mix, and never a moment with wider permissions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def replace_private(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data`` (file mode ``mode``, default 0600)."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
