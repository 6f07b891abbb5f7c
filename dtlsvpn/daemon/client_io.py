"""One client association over a real UDP socket, driven synchronously (``dtlsvpn probe``).

The daemon's loop serves many fds and never blocks; a one-shot tool only needs "run this
association until something happened or the deadline passed".  ``ClientConnection``
does that with the daemon's own socket code (``udp.py``: PMTU probing mode, the ICMP
error queue, large buffers) and the sans-I/O core, in the order of the daemon's loop::

    wait for the socket until min(core timer, deadline)       select on one fd
    now, wall = monotonic(), time()                           once per iteration
    error queue → assoc.path_hint(mtu)                        EMSGSIZE / ICMP too big
    recv × budget → assoc.receive_datagram                    application data is ignored
    assoc.handle_timer(now) when its deadline passed
    events → self.events;  assoc.datagrams_to_send → send

Nothing here prints or decides what a result means: callers read ``events``.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from collections.abc import Callable

from dtlsvpn.daemon.udp import Addr, open_udp, read_errors, socket_mtu
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import Event

BUDGET = 64
MAX_DATAGRAM = 65535


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, Addr]:
    """The first UDP address of ``host`` (a name is resolved now); raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"no address for {host}")
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


class ClientConnection:
    """A client ``Association`` on a connected, non-blocking UDP socket."""

    def __init__(self, config: DtlsConfig, family: socket.AddressFamily, addr: Addr) -> None:
        self.addr = addr
        self.sock = open_udp(family, connect=addr)
        self.assoc = Association(config, peer=f"{addr[0]}:{addr[1]}".encode(),
                                 ip_header=40 if family == socket.AF_INET6 else 20)
        self.events: list[Event] = []
        self.send_errors: list[str] = []
        self.started_at: float | None = None

    def connect(self) -> None:
        self.started_at = time.monotonic()
        self.assoc.connect(self.started_at, time.time())
        self._flush(self.started_at)

    def path_mtu_hint(self) -> None:
        """Give the core the kernel's MTU towards the peer (caps the PMTU search)."""
        mtu = socket_mtu(self.sock)
        if mtu is not None:
            self.assoc.path_hint(mtu, time.monotonic())
            self._flush(time.monotonic())

    def run(self, done: Callable[[], bool], deadline: float) -> bool:
        """Pump until ``done()`` (True) or ``deadline`` (monotonic) or closure (False)."""
        assoc = self.assoc
        while not done():
            if assoc.is_closed:
                return False
            now = time.monotonic()
            if now >= deadline:
                return False
            timer = assoc.get_timer()
            wake = deadline if timer is None else min(deadline, timer)
            readable, _, errors = select.select([self.sock], [], [self.sock],
                                                max(0.0, wake - now))
            now = time.monotonic()
            wall = time.time()
            if readable or errors:
                self._receive(now, wall)
            timer = assoc.get_timer()
            if timer is not None and now >= timer:
                assoc.handle_timer(now)
            self.events += assoc.pop_events()
            self._flush(now)
        return True

    def close(self) -> None:
        now = time.monotonic()
        if not self.assoc.is_closed:
            self.assoc.close(now)
            self._flush(now)
        self.events += self.assoc.pop_events()
        self.sock.close()

    def _hints(self, now: float) -> None:
        for hint in read_errors(self.sock):
            if hint.mtu is not None:
                self.assoc.path_hint(hint.mtu, now)

    def _receive(self, now: float, wall: float) -> None:
        recv = self.sock.recv
        for _ in range(BUDGET):
            try:
                data = recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:  # a queued ICMP error (refused, too big, unreachable)
                if exc.errno != errno.EMSGSIZE:
                    self.send_errors.append(exc.strerror or str(exc))
                self._hints(now)
                continue
            self.assoc.receive_datagram(data, now, wall)
        self._hints(now)

    def _flush(self, now: float) -> None:
        for datagram in self.assoc.datagrams_to_send(now):
            try:
                self.sock.send(datagram)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:  # a PMTU probe above the interface MTU
                    self._hints(now)
                else:
                    self.send_errors.append(exc.strerror or str(exc))
                    with contextlib.suppress(OSError):
                        self._hints(now)
