"""systemd integration: sd_notify messages and journal logging, both optional.

``Notifier`` sends READY=1, STATUS=..., WATCHDOG=1, RELOADING=1 and STOPPING=1 through
systemd-python's ``systemd.daemon.notify`` when ``NOTIFY_SOCKET`` is set (systemd, or a
test that owns the socket); without it every call is a no-op.  When systemd-python is
not importable (a bare interpreter), or the environment was given explicitly, the
datagram is sent directly: the protocol is one
AF_UNIX datagram of newline-separated ``KEY=value`` lines (sd_notify(3)), and a socket
path starting with ``@`` is in the abstract namespace.

``WATCHDOG_USEC`` (set by systemd for ``WatchdogSec=``) gives ``watchdog_interval``:
the loop pings at half of it, as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
from typing import Any

_sd_daemon: Any = None
with contextlib.suppress(ImportError):  # systemd-python; absent from a bare interpreter
    _sd_daemon = importlib.import_module("systemd.daemon")


def _send_raw(path: str, message: str) -> bool:
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


class Notifier:
    """sd_notify for the daemon; a no-op when not started by a service manager."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        interval = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            interval = None  # sd_watchdog_enabled(3): the watchdog is for another process
        self.watchdog_interval = interval
        self._last_status: str | None = None
        # libsystemd reads NOTIFY_SOCKET from the process environment itself.
        self._use_libsystemd = _sd_daemon is not None and environ is None

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, message: str) -> bool:
        if self.socket_path is None:
            return False
        if self._use_libsystemd:
            try:
                return bool(_sd_daemon.notify(message))
            except OSError:  # the manager went away: notifying is best effort
                return False
        return _send_raw(self.socket_path, message)

    def ready(self, status: str | None = None) -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")


def under_systemd(environ: dict[str, str] | None = None) -> bool:
    """True when stderr goes to the journal (systemd sets JOURNAL_STREAM for services)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM")) and bool(env.get("INVOCATION_ID"))


def setup_logging(level: str, *, name: str = "dtlsvpn") -> logging.Logger:
    """Log to the journal under systemd (when systemd-python is there), else to stderr."""
    handler: logging.Handler | None = None
    if under_systemd():
        try:
            from systemd.journal import JournalHandler

            jh: Any = JournalHandler(SYSLOG_IDENTIFIER=name)
            handler = jh
        except ImportError:  # pragma: no cover
            handler = None
    if handler is None:
        handler = logging.StreamHandler()
        # ops: timestamps when not under journald (the journal stamps its own lines)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d %(name)s: %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False
    return logger
