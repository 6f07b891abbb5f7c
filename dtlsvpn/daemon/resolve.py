"""The Endpoint's name looked up off the loop: a worker thread, the answer back on the loop.

``getaddrinfo`` may block for seconds (a resolver that does not answer, a captive
portal); the loop must keep moving packets, timers and signals meanwhile.  ``Resolver``
runs each lookup on a short-lived daemon thread, which puts the answer on a queue and
writes one byte to a pipe registered with the loop; the loop's handler then calls the
caller's callback with ``(answer, now)`` on the loop thread.  An answer is a list of
``(family, (host, port))`` in getaddrinfo's order (RFC 6724 preference), without
duplicates, or the ``OSError`` (``gaierror``) the lookup raised.

At most one lookup is current: ``resolve`` again, or ``cancel``, makes the answer of the
one before stale, and it is dropped when it comes (a thread cannot be stopped; it ends
when getaddrinfo does).  An address literal needs no thread: its answer is deferred to
the end of the current loop iteration, as is every answer with ``threaded=False``
(the in-process tests run their fake resolver that way, deterministically).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import socket
import threading
from collections.abc import Callable

from dtlsvpn.daemon.loop import Loop

Addr = tuple[str, int]
Answer = list[tuple[socket.AddressFamily, Addr]] | OSError
Lookup = Callable[[str, int], list[tuple[socket.AddressFamily, Addr]]]
Callback = Callable[[Answer, float], None]


def lookup_all(host: str, port: int) -> list[tuple[socket.AddressFamily, Addr]]:
    """Every UDP address of ``host`` now, in getaddrinfo's order; raises OSError."""
    out: list[tuple[socket.AddressFamily, Addr]] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM):
        entry = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if entry not in out:
            out.append(entry)
    if not out:
        raise OSError(f"no address for {host}")
    return out


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resolver:
    """One current lookup at a time, answered on the loop."""

    def __init__(self, loop: Loop, lookup: Lookup, *, threaded: bool = True) -> None:
        self.loop = loop
        self.lookup = lookup
        self.threaded = threaded
        self._generation = 0
        self._answers: queue.SimpleQueue[tuple[int, Callback, Answer]] = queue.SimpleQueue()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()  # the pipe is not closed under a worker's write
        self._closed = False
        loop.add(self._r, self._readable)
        self.pending = False
        self.lookups = 0

    def resolve(self, host: str, port: int, callback: Callback) -> None:
        self._generation += 1
        self.pending = True
        self.lookups += 1
        gen = self._generation
        if not self.threaded or is_literal(host):
            answer = self._run(host, port)
            self.loop.defer(lambda now, _wall: self._deliver(gen, callback, answer, now))
            return
        threading.Thread(target=self._work, args=(gen, host, port, callback),
                         name=f"resolve-{host}", daemon=True).start()

    def cancel(self) -> None:
        self._generation += 1
        self.pending = False

    def _run(self, host: str, port: int) -> Answer:
        try:
            return self.lookup(host, port)
        except OSError as exc:  # gaierror included
            return exc

    def _work(self, gen: int, host: str, port: int, callback: Callback) -> None:
        self._answers.put((gen, callback, self._run(host, port)))
        with self._lock:
            if not self._closed:  # (closed meanwhile: nobody waits for it)
                with contextlib.suppress(OSError):
                    os.write(self._w, b"\0")

    def _readable(self, _mask: int, now: float, _wall: float) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 512):
                pass
        while True:
            try:
                gen, callback, answer = self._answers.get_nowait()
            except queue.Empty:
                return
            self._deliver(gen, callback, answer, now)

    def _deliver(self, gen: int, callback: Callback, answer: Answer, now: float) -> None:
        if gen != self._generation:
            return  # a newer lookup, or a cancel, made this one stale
        self.pending = False
        callback(answer, now)

    def close(self) -> None:
        self.cancel()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.loop.remove(self._r)
            os.close(self._r)
            os.close(self._w)
