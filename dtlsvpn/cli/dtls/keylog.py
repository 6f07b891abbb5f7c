"""``--keylog FILE`` of ``dtlsvpn dtls server|client``: the NSS key log, on request only.

Every line written holds a session's master secret: whoever reads the file decrypts
every captured record of that session.  So:

- it exists only as an option of the two debug tools; the daemon's configuration has
  no key for it (an unknown key there is an error naming file, line and key);
- the file is opened ``O_NOFOLLOW`` (no symlink), created with mode 0600, and refused
  when it already exists with any group or other permission bit, with an error naming
  the file and its mode;
- opening it prints a loud warning on stderr, whatever the verbosity.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable

from dtlsvpn.cli.argtypes import ArgumentProblem

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def keylog_warning(path: str) -> str:
    return (f"WARNING: --keylog {path}: the master secret of every session of this run is "
            f"written to {path}; anyone who can read it can decrypt the captured traffic. "
            "For debugging only: delete the file when done.")


def open_keylog(path: str, warn: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A callback appending key log lines to ``path``; checked (and warned about) now."""
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as exc:
        raise ArgumentProblem(f"--keylog: cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ArgumentProblem(f"--keylog: {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ArgumentProblem(f"--keylog: {path} has mode {mode:04o}; a key log must not be "
                              f"accessible by group or others (chmod 600 {path})")
    (warn or _stderr)(keylog_warning(path))

    def write(line: str) -> None:
        # Opened per line (the core calls this once per handshake), with the same checks.
        fd = os.open(path, _FLAGS, 0o600)
        try:
            os.write(fd, (line if line.endswith("\n") else line + "\n").encode("ascii"))
        finally:
            os.close(fd)

    return write


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
