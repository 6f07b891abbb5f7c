"""One client association over a real UDP socket, pumped until a condition (``dtlsvpn probe``).

The probe asks "run this association until something happened or the deadline passed".
:class:`ClientConnection` does that on the daemon's event loop and socket code
(``daemon/udp.py``: PMTU probing mode, the ICMP error queue, large buffers) with the
sans-I/O core.  :meth:`ClientConnection.run` turns the loop one iteration at a time::

    wait for the socket until min(core timer, deadline)       loop.run_once(deadline − now)
    socket readable or in error:
        recv × RECV_BUDGET → assoc.receive_datagram           application data is ignored
        error queue → assoc.path_hint(mtu)                    EMSGSIZE / ICMP too big
    core timer due → assoc.handle_timer(now)
    events → self.events;  assoc.datagrams_to_send → send     once, at the end

Nothing here prints or decides what a result means: callers read ``events``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable

from dtlsvpn.cli.tool_loop import CoreTimer
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.udp import (
    MAX_DATAGRAM,
    RECV_BUDGET,
    SockAddr,
    open_udp,
    read_errors,
    socket_mtu,
)
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import Event


class ClientConnection:
    """A client ``Association`` on a connected, non-blocking UDP socket on ``loop``."""

    def __init__(self, loop: Loop, config: DtlsConfig, family: socket.AddressFamily,
                 addr: SockAddr) -> None:
        self.loop = loop
        self.addr = addr
        self.sock = open_udp(family, connect=addr)
        self.assoc = Association(config, peer=f"{addr[0]}:{addr[1]}".encode(),
                                 ip_header=40 if family == socket.AF_INET6 else 20)
        self.events: list[Event] = []
        self.send_errors: list[str] = []
        self.started_at: float | None = None
        self._closed = False
        self._timer = CoreTimer(loop, self.assoc, self._after_timer)
        loop.add(self.sock.fileno(), self._on_socket)

    def connect(self) -> None:
        self.started_at = self.loop.refresh_clock()
        self.assoc.connect(self.started_at, self.loop.wall)
        self._flush(self.started_at)
        self._timer.rearm()

    def path_mtu_hint(self) -> None:
        """Give the core the kernel's MTU towards the peer (caps the PMTU search)."""
        mtu = socket_mtu(self.sock)
        if mtu is not None:
            now = self.loop.refresh_clock()
            self.assoc.path_hint(mtu, now)
            self._flush(now)
            self.loop.defer(self._service)

    def run(self, done: Callable[[], bool], deadline: float) -> bool:
        """Pump until ``done()`` (True) or ``deadline`` (monotonic) or closure (False)."""
        while not done():
            if self.assoc.is_closed:
                return False
            now = self.loop.refresh_clock()
            if now >= deadline:
                return False
            self.loop.run_once(deadline - now)
        return True

    def close(self) -> None:
        now = self.loop.refresh_clock()
        if not self.assoc.is_closed:
            self.assoc.close(now)
            self._flush(now)
        self.events += self.assoc.pop_events()
        self._closed = True
        self._timer.cancel()
        self.loop.remove(self.sock.fileno())
        self.sock.close()

    # --- loop callbacks ---------------------------------------------------------------

    def _on_socket(self, _mask: int, now: float, wall: float) -> None:
        self._receive(now, wall)
        self._timer.rearm()
        self.loop.defer(self._service)

    def _after_timer(self, _now: float, _wall: float) -> None:
        self.loop.defer(self._service)

    def _service(self, now: float, _wall: float) -> None:
        if self._closed:
            return
        self.events += self.assoc.pop_events()
        self._flush(now)
        self._timer.rearm()

    # --- socket -----------------------------------------------------------------------

    def _hints(self, now: float) -> None:
        for hint in read_errors(self.sock):
            if hint.mtu is not None:
                self.assoc.path_hint(hint.mtu, now)

    def _receive(self, now: float, wall: float) -> None:
        recv = self.sock.recv
        for _ in range(RECV_BUDGET):
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
