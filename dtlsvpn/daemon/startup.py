"""Start-up guards and start-up errors that name the thing.

One instance per tunnel: before it touches anything the daemon takes an exclusive
``flock`` on ``NAME.lock`` beside its status socket (``StatusSocket`` with ``.lock``
for ``.sock``) and writes its PID there.  A second daemon for the same name or status
socket finds the lock held and refuses to start, naming the holder; it never unlinks
the first one's socket.  The kernel releases the lock when the holder exits however it
exits, so a stale socket (and lock file) of a crashed daemon is replaced.  A daemon that
stops removes its lock file while it still holds the lock; one that took the lock on a
file removed meanwhile sees that the path no longer names its file and takes the new
one, so two daemons never both hold "the" lock.  A second daemon for the
same device with another status socket is refused by the kernel (EBUSY on
TUNSETIFF); :func:`describe` then names the device and the process holding it.

:func:`describe` turns the OSError of a start-up step into a sentence with the value,
the config line (``file:line Key``) and, where it can be found in ``/proc``, the
process in the way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from dtlsvpn.config import Config
from dtlsvpn.config.model import HINTS, VOCABULARY
from dtlsvpn.config.parser import parse
from dtlsvpn.errors import DtlsvpnError


class StartupError(DtlsvpnError):
    """A start-up step failed; the message names what and where (see ``describe_*``)."""


class AlreadyRunning(StartupError):
    """Another daemon holds this tunnel's lock."""


def lock_path(status_socket: Path) -> Path:
    name = status_socket.name
    stem = name[:-5] if name.endswith(".sock") else name
    return status_socket.with_name(f"{stem}.lock")


class InstanceLock:
    """The exclusive lock of one tunnel (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, cfg: Config) -> InstanceLock:
        sock = cfg.interface.status_socket
        path = lock_path(sock)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        for _attempt in range(5):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise AlreadyRunning(
                    f"another dtlsvpn already runs this tunnel{holder}: {path} is locked "
                    f"(StatusSocket {sock}, {config_line(cfg, 'StatusSocket')}); not "
                    f"starting, and its status socket is left alone") from None
            except OSError:
                os.close(fd)
                raise
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {cfg.name} {cfg.path}\n".encode())
                return cls(path, fd)
            os.close(fd)  # a stopping daemon removed it after we opened it: again
        raise StartupError(f"cannot take the lock {path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file (still holding the lock), then let go of it."""
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        words = os.pread(fd, 4096, 0).decode().split()
        pid = int(words[0])
        return f" (pid {pid}, {words[2]})" if len(words) > 2 else f" (pid {pid})"
    return ""


def config_line(cfg: Config, key: str, section: str = "Interface") -> str:
    """``file:line Key`` of ``key`` in ``section`` (the first one), or the file alone."""
    with contextlib.suppress(OSError, DtlsvpnError, UnicodeDecodeError):
        text = Path(cfg.path).read_text(encoding="utf-8-sig")
        for sec in parse(text, cfg.path, VOCABULARY, HINTS):
            if sec.name != section:
                continue
            for entry in sec.entries:
                if entry.key == key:
                    return f"{cfg.path}:{entry.line} {key}"
            return f"{cfg.path}:{sec.line} [{section}], {key} not set: default"
    return f"{cfg.path} {key}"


# --- who holds it (/proc) -------------------------------------------------------------


def _processes() -> list[tuple[int, Path]]:
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                out.append((int(entry.name), Path(entry.path)))
    return out


def _name_of(pid: int, proc: Path) -> str:
    try:
        comm = (proc / "comm").read_text().strip()
    except OSError:
        comm = "?"
    return f"{comm} (pid {pid})"


def _fds(proc: Path) -> list[tuple[str, str]]:
    """(fd number, link target) of a process (empty when we may not look)."""
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(proc / "fd"):
            with contextlib.suppress(OSError):
                out.append((entry.name, os.readlink(entry.path)))
    return out


def _netns(proc: Path) -> int | None:
    try:
        return os.stat(proc / "ns" / "net").st_ino
    except OSError:
        return None


def tun_holder(device: str) -> str | None:
    """The process of this network namespace (device names are per namespace) with a
    /dev/net/tun descriptor attached to ``device`` (its fdinfo says ``iff:``)."""
    ours = _netns(Path("/proc/self"))
    for pid, proc in _processes():
        if _netns(proc) != ours:
            continue
        for fd, target in _fds(proc):
            if target != "/dev/net/tun":
                continue
            with contextlib.suppress(OSError):
                info = (proc / "fdinfo" / fd).read_text()
                if f"iff:\t{device}\n" in info or info.endswith(f"iff:\t{device}"):
                    return _name_of(pid, proc)
    return None


def udp_holder(port: int, proto: str = "udp") -> str | None:
    """The process owning a UDP (``proto`` "tcp": TCP) socket bound to ``port`` in this
    network namespace."""
    inodes: set[str] = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for pid, proc in _processes():
        if any(target in inodes for _fd, target in _fds(proc)):
            return _name_of(pid, proc)
    return None


# --- the sentences ----------------------------------------------------------------------


def describe_listen(exc: OSError, cfg: Config, *, tcp: bool = False) -> str:
    """Why the server cannot listen: its UDP port, or (``tcp``) its TCP fallback's port
    (``TCPPort``, by default ListenAddress's port number)."""
    iface = cfg.interface
    assert iface.listen is not None
    host, port = iface.listen
    key = "TCPPort" if tcp and iface.tcp_port else "ListenAddress"
    port = (iface.tcp_port or port) if tcp else port
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    where = f"TCP {where}" if tcp else where
    line = config_line(cfg, key)
    if exc.errno == errno.EADDRINUSE:
        proto = "TCP" if tcp else "UDP"
        holder = udp_holder(port, proto.lower())
        return (f"cannot listen on {where} ({line}): the {proto} port is already in use"
                + (f" by {holder}" if holder else " (by another process)"))
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where} ({line}): {host} is not an address of this host "
                "(use 0.0.0.0 or :: for every address)")
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where} ({line}): ports below 1024 need CAP_NET_BIND_SERVICE"
    return f"cannot listen on {where} ({line}): {exc.strerror or exc}"


def describe_tun(exc: OSError, cfg: Config) -> str:
    device = cfg.interface.device
    line = config_line(cfg, "Device")
    if exc.errno == errno.EBUSY:
        holder = tun_holder(device)
        return (f"cannot open TUN device {device} ({line}): it is busy, "
                + (f"held by {holder}" if holder else
                   "but no process holding it was found (another network device of that "
                   "name? `ip link show " + device + "`)"))
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (f"cannot open TUN device {device} ({line}): permission denied "
                "(needs root or CAP_NET_ADMIN)")
    if exc.errno == errno.EINVAL:
        return (f"cannot open TUN device {device} ({line}): a network device of that name "
                "exists and is not a TUN device")
    return f"cannot open TUN device {device} ({line}): {exc.strerror or exc}"


def describe_status(exc: OSError, cfg: Config) -> str:
    sock = cfg.interface.status_socket
    return (f"cannot create the status socket {sock} ({config_line(cfg, 'StatusSocket')}): "
            f"{exc.strerror or exc}")
