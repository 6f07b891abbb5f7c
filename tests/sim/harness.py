"""Simulator: a DTLS client Association and a ServerEndpoint joined by two SimLinks.

Theory of operation
-------------------
The simulator owns a :class:`FakeClock` and a heap of pending deliveries
``(arrival_time, order, direction, bytes)``.  After every input given to a
side (``connect``, a delivered datagram, ``handle_timer``) it collects that
side's output with ``datagrams_to_send(now)`` and offers each datagram to the
link of that direction, which schedules zero or more deliveries.  One step
jumps the clock to the earliest of the next delivery and each side's
``get_timer()``; deliveries due at that instant are processed first (in heap
order), then the due timers.  Nothing sleeps and no socket is opened.

The server side is driven only through the public ``ServerEndpoint`` API with
one fixed client address (``CLIENT_ADDR``): stateless replies it returns go
back over the server-to-client link; the Association it returns (or holds in
``associations``) is drained with ``datagrams_to_send``.

Several simulators may share one ``ServerEndpoint`` (``endpoint=``) and one
``FakeClock`` (``clock=``): a client that reconnects from a new address
(``client_addr=``) to the same server, as a resuming client does.

``path_hint(side, mtu)`` feeds a kernel/ICMP hint to one side's Association
(``Association.path_hint``) and sends whatever it causes, e.g. a probe.

``run_until(predicate, limit_seconds)`` steps until the predicate holds or the
simulated time budget is spent and returns a :class:`Trace`: simulated time
taken, datagrams per direction, the largest datagram offered to either link,
retransmissions (``stats.retransmissions`` of each side), the events of each
side with their times, and a per-datagram log that failing tests print.
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import Event, HandshakeCompleted
from dtlsvpn.errors import DecodeError
from dtlsvpn.wire.constants import CipherSuite, ContentType
from dtlsvpn.wire.handshake import (
    HandshakeFragment,
    encode_handshake_fragment,
    parse_handshake_fragments,
)
from dtlsvpn.wire.record import encode_record, parse_datagram
from tests.pki import SERVER_NAME, Credential, Pki
from tests.sim.clock import FakeClock
from tests.sim.link import SimLink

CLIENT_ADDR: tuple[str, int] = ("198.18.0.2", 40001)

E = TypeVar("E")

_HDR = struct.Struct("!BHQH")
_TYPE_TAG = {20: "CCS", 21: "ALERT", 22: "HS", 23: "APP", 24: "HB", 25: "CID"}


class SimulationError(AssertionError):
    """The simulation itself went wrong (a core exception, a timer that never moves)."""


def describe_datagram(data: bytes) -> str:
    """A one-line summary of the records in a datagram, tolerant of garbage."""
    parts: list[str] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HDR.size:
            parts.append(f"garbage({len(data) - pos})")
            break
        ctype, _version, es, length = _HDR.unpack_from(data, pos)
        tag = _TYPE_TAG.get(ctype, f"T{ctype}")
        epoch, seq = es >> 48, es & (2**48 - 1)
        extra = ""
        body = data[pos + _HDR.size:pos + _HDR.size + length]
        if ctype == 22 and epoch == 0 and len(body) >= 12:
            msg_type = body[0]
            mseq = int.from_bytes(body[4:6], "big")
            off = int.from_bytes(body[6:9], "big")
            flen = int.from_bytes(body[9:12], "big")
            extra = f":m{msg_type}#{mseq}@{off}+{flen}"
        parts.append(f"{tag}{extra} e{epoch}s{seq} {length}B")
        pos += _HDR.size + length
        if pos > len(data):
            parts[-1] += " (past end)"
    return "[" + ", ".join(parts) + "]"


def rewrite_handshake(data: bytes, msg_type: int, edit: Callable[[bytes], bytes]) -> bytes:
    """``data`` with every whole epoch-0 handshake message of ``msg_type`` replaced by
    ``edit(body)`` (lengths fixed up, record sequence numbers kept).

    An on-path attacker's rewrite of a plaintext hello, for a ``SimLink.tamper``.
    Anything else, including a datagram that does not parse, passes unchanged.
    """
    records, garbage = parse_datagram(data)
    if garbage:
        return data
    out = bytearray()
    for rec in records:
        fragment = rec.fragment
        if rec.content_type == ContentType.handshake and rec.epoch == 0:
            try:
                frags = parse_handshake_fragments(fragment)
            except DecodeError:
                frags = []
            if any(f.msg_type == msg_type and f.is_whole for f in frags):
                parts = []
                for f in frags:
                    if f.msg_type == msg_type and f.is_whole:
                        body = edit(f.body)
                        f = HandshakeFragment(f.msg_type, len(body), f.message_seq, 0, body)
                    parts.append(encode_handshake_fragment(f))
                fragment = b"".join(parts)
        out += encode_record(rec.content_type, rec.epoch, rec.seq, fragment, version=rec.version)
    return bytes(out)


@dataclass
class Trace:
    """What one ``run_until`` did, for numeric assertions and failure messages."""

    satisfied: bool
    start: float
    end: float
    c2s_datagrams: int
    s2c_datagrams: int
    max_datagram: int
    oversize: int
    client_retransmissions: int
    server_retransmissions: int
    stateless_replies: int
    client_events: list[tuple[float, Event]]
    server_events: list[tuple[float, Event]]
    log: list[str] = field(repr=False)

    @property
    def elapsed(self) -> float:
        return self.end - self.start

    @property
    def retransmissions(self) -> int:
        return self.client_retransmissions + self.server_retransmissions

    def summary(self) -> str:
        return (
            f"satisfied={self.satisfied} elapsed={self.elapsed:.4f}s "
            f"c2s={self.c2s_datagrams} s2c={self.s2c_datagrams} max={self.max_datagram}B "
            f"oversize={self.oversize} retx(c/s)={self.client_retransmissions}/"
            f"{self.server_retransmissions} hvr={self.stateless_replies}"
        )

    def format(self, last: int = 200) -> str:
        lines = self.log[-last:]
        events = [f"  {t:9.4f} client {e!r}" for t, e in self.client_events]
        events += [f"  {t:9.4f} server {e!r}" for t, e in self.server_events]
        return "\n".join([self.summary(), "events:", *events, "log:", *lines])


class Simulator:
    """Drive a client Association and a ServerEndpoint over two SimLinks."""

    def __init__(
        self,
        client_config: DtlsConfig,
        server_config: DtlsConfig,
        *,
        c2s: SimLink | None = None,
        s2c: SimLink | None = None,
        clock: FakeClock | None = None,
        client_addr: tuple[str, int] = CLIENT_ADDR,
        seed: int = 0,
        endpoint: ServerEndpoint | None = None,
    ) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.c2s = c2s if c2s is not None else SimLink(random.Random(f"{seed}/c2s"), name="c->s")
        self.s2c = s2c if s2c is not None else SimLink(random.Random(f"{seed}/s2c"), name="s->c")
        self.client_addr = client_addr
        self.client = Association(client_config)
        self.endpoint = endpoint if endpoint is not None else ServerEndpoint(server_config)
        self.client_rx: list[bytes] = []
        self.server_rx: list[bytes] = []
        self.client_events: list[tuple[float, Event]] = []
        self.server_events: list[tuple[float, Event]] = []
        self.stateless_replies = 0
        self.log: list[str] = []
        self._heap: list[tuple[float, int, str, bytes]] = []
        self._order = itertools.count()
        self._connected_at: float | None = None
        self._last_server: Association | None = None

    # --- views -------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    @property
    def server(self) -> Association | None:
        """The server-side Association for the client address, if the endpoint holds one."""
        assoc = self.endpoint.associations.get(self.client_addr)
        if assoc is not None:
            self._last_server = assoc
        return assoc if assoc is not None else self._last_server

    def both_established(self) -> bool:
        srv = self.server
        return self.client.is_established and srv is not None and srv.is_established

    def completed(self, side: str = "client") -> HandshakeCompleted | None:
        events = self.client_events if side == "client" else self.server_events
        for _t, ev in events:
            if isinstance(ev, HandshakeCompleted):
                return ev
        return None

    def events_of(self, side: str, kind: type[E]) -> list[tuple[float, E]]:
        """``(time, event)`` of one side's events of one type, in order."""
        events = self.client_events if side == "client" else self.server_events
        return [(t, e) for t, e in events if isinstance(e, kind)]

    def side(self, side: str) -> Association:
        """The client Association, or the server's for the client address."""
        if side == "client":
            return self.client
        srv = self.server
        assert srv is not None, "the server has no association for the client"
        return srv

    # --- inputs --------------------------------------------------------------

    def connect(self) -> None:
        self._connected_at = self.now
        self.log.append(f"{self.now:9.4f} client connect")
        self.client.connect(self.now, self.clock.wall)
        self._flush()

    def send_from_client(self, datagrams: Iterable[bytes]) -> None:
        """Offer datagrams to the client-to-server link (e.g. the output of ``protect``)."""
        for d in datagrams:
            self._offer(self.c2s, "c2s", d)

    def send_from_server(self, datagrams: Iterable[bytes]) -> None:
        for d in datagrams:
            self._offer(self.s2c, "s2c", d)

    def path_hint(self, side: str, mtu: int) -> None:
        """A kernel or ICMP Packet Too Big hint of ``mtu`` to one side, now."""
        self.log.append(f"{self.now:9.4f} {side} path_hint {mtu}")
        self.side(side).path_hint(mtu, self.now)
        self._flush()

    def deliver_to_server(self, data: bytes) -> list[bytes]:
        """Hand ``data`` to the endpoint now, bypassing the link; return app data."""
        return self._deliver("c2s", data)

    def deliver_to_client(self, data: bytes) -> list[bytes]:
        return self._deliver("s2c", data)

    # --- the loop ------------------------------------------------------------

    def next_time(self) -> float | None:
        times = [t for t in (self.client.get_timer(), self.endpoint.get_timer()) if t is not None]
        if self._heap:
            times.append(self._heap[0][0])
        return min(times) if times else None

    def step(self) -> bool:
        """Advance to the next delivery or timer and process it; False if idle."""
        when = self.next_time()
        if when is None:
            return False
        self._step_at(when)
        return True

    def run_until(
        self,
        predicate: Callable[[], bool],
        limit_seconds: float,
        *,
        max_steps: int = 100_000,
    ) -> Trace:
        """Step until ``predicate()`` holds or ``limit_seconds`` of simulated time pass."""
        start = self._connected_at if self._connected_at is not None else self.now
        self._connected_at = None
        deadline = self.now + limit_seconds
        steps = 0
        while not predicate():
            when = self.next_time()
            if when is None or when > deadline:
                self.clock.advance_to(deadline)
                break
            try:
                self._step_at(when)
            except SimulationError:
                raise
            except Exception as exc:  # a core exception on remote input is a bug: show the trace
                trace = self._trace(start, False)
                raise SimulationError(f"{exc!r} at t={self.now}\n{trace.format()}") from exc
            steps += 1
            if steps > max_steps:
                raise SimulationError(f"no progress after {max_steps} steps\n"
                                      f"{self._trace(start, False).format()}")
        return self._trace(start, predicate())

    def run_for(self, seconds: float) -> Trace:
        """Run with no goal for ``seconds`` of simulated time."""
        return self.run_until(lambda: False, seconds)

    def handshake(self, limit_seconds: float = 120.0) -> Trace:
        """``connect`` and run until both sides are established."""
        self.connect()
        return self.run_until(self.both_established, limit_seconds)

    # --- internals -----------------------------------------------------------

    def _step_at(self, when: float) -> None:
        self.clock.advance_to(when)
        now = self.now
        while self._heap and self._heap[0][0] <= now:
            _t, _o, direction, data = heapq.heappop(self._heap)
            self._deliver(direction, data)
        timer = self.client.get_timer()
        if timer is not None and timer <= now:
            self.log.append(f"{now:9.4f} client timer")
            self.client.handle_timer(now)
            self._flush()
            again = self.client.get_timer()
            if again is not None and again <= now and not self._heap_due(now):
                raise SimulationError(f"client timer {again} not re-armed at {now}")
        timer = self.endpoint.get_timer()
        if timer is not None and timer <= now:
            self.log.append(f"{now:9.4f} server timer")
            self.endpoint.handle_timer(now)
            self._flush()
            again = self.endpoint.get_timer()
            if again is not None and again <= now and not self._heap_due(now):
                raise SimulationError(f"server timer {again} not re-armed at {now}")

    def _heap_due(self, now: float) -> bool:
        return bool(self._heap) and self._heap[0][0] <= now

    def _deliver(self, direction: str, data: bytes) -> list[bytes]:
        now, wall = self.now, self.clock.wall
        self.log.append(f"{now:9.4f} {direction} recv {len(data)}B {describe_datagram(data)}")
        if direction == "c2s":
            assoc, out = self.endpoint.receive(data, self.client_addr, now, wall)
            if assoc is None:
                self.stateless_replies += len(out)
                for reply in out:
                    self._offer(self.s2c, "s2c", reply, note="stateless")
                app: list[bytes] = []
            else:
                app = list(out)
                self.server_rx.extend(app)
        else:
            app = self.client.receive_datagram(data, now, wall)
            self.client_rx.extend(app)
        self._flush()
        return app

    def _flush(self) -> None:
        now = self.now
        for d in self.client.datagrams_to_send(now):
            self._offer(self.c2s, "c2s", d)
        for ev in self.client.pop_events():
            self.client_events.append((now, ev))
            self.log.append(f"{now:9.4f} client event {ev!r}")
        for addr, assoc in list(self.endpoint.associations.items()):
            for d in assoc.datagrams_to_send(now):
                if addr == self.client_addr:
                    self._offer(self.s2c, "s2c", d)
                else:
                    self.log.append(f"{now:9.4f} s2c to {addr} not simulated {len(d)}B")
            for ev in assoc.pop_events():
                self.server_events.append((now, ev))
                self.log.append(f"{now:9.4f} server event {ev!r}")
        _ = self.server  # remembers the last server association even after its removal

    def _offer(self, link: SimLink, direction: str, data: bytes, note: str = "") -> None:
        now = self.now
        deliveries = link.transmit(data, now)
        fate = link.history[-1].fate
        self.log.append(
            f"{now:9.4f} {direction} send {len(data)}B {fate}{' ' + note if note else ''} "
            f"{describe_datagram(data)}"
        )
        for when, payload in deliveries:
            heapq.heappush(self._heap, (when, next(self._order), direction, payload))

    def _trace(self, start: float, satisfied: bool) -> Trace:
        srv = self.server
        return Trace(
            satisfied=satisfied,
            start=start,
            end=self.now,
            c2s_datagrams=self.c2s.counters.sent,
            s2c_datagrams=self.s2c.counters.sent,
            max_datagram=max(self.c2s.max_size, self.s2c.max_size),
            oversize=self.c2s.counters.oversize + self.s2c.counters.oversize,
            client_retransmissions=self.client.stats.retransmissions,
            server_retransmissions=srv.stats.retransmissions if srv is not None else 0,
            stateless_replies=self.stateless_replies,
            client_events=list(self.client_events),
            server_events=list(self.server_events),
            log=list(self.log),
        )


# --- figures gathered by the lossy tests, printed in the terminal summary ------------------

LOSSY_FIGURES: dict[str, list[tuple[int, float, int]]] = {}
"""mode -> [(seed, simulated seconds, retransmissions)] from ``test_lossy_handshake``."""


FIGURES: dict[str, list[str]] = {}
"""section title -> lines: measured figures other sim tests print in the terminal summary."""


def report(section: str, line: str) -> None:
    """Add one line to a section of the terminal summary (see conftest.py)."""
    FIGURES.setdefault(section, []).append(line)


def lossy_summary() -> str:
    """min/median/max of handshake time and retransmissions per mode."""
    out = []
    for mode, rows in LOSSY_FIGURES.items():
        times = [t for _, t, _ in rows]
        retx = [r for _, _, r in rows]
        out.append(
            f"{mode:20s} n={len(rows):2d}  time min/med/max {min(times):5.2f}/"
            f"{statistics.median(times):5.2f}/{max(times):5.2f} s  "
            f"retransmissions {min(retx)}/{statistics.median(retx):g}/{max(retx)}"
        )
    return "\n".join(out)


# --- test credentials and configurations ----------------------------------------


PSK = bytes(range(32))
PSK_IDENTITY = b"client-1"


@dataclass(frozen=True)
class Mode:
    """A handshake mode: the suite both sides offer and the credentials they use."""

    name: str
    suite: CipherSuite
    server_cert: str | None = None  # "ecdsa" | "rsa"
    mutual: bool = False
    psk: bool = False


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("ecdhe-ecdsa-aes128", CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ecdsa"),
        Mode("ecdhe-ecdsa-aes256", CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "ecdsa"),
        Mode("ecdhe-ecdsa-chacha",
             CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "ecdsa"),
        Mode("ecdhe-rsa-aes128", CipherSuite.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "rsa"),
        Mode("mutual-ecdsa", CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ecdsa",
             mutual=True),
        Mode("psk-aes128", CipherSuite.TLS_PSK_WITH_AES_128_GCM_SHA256, psk=True),
        Mode("ecdhe-psk-chacha", CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
             psk=True),
    )
}


def server_credential(mode: Mode, pki: Pki) -> Credential:
    """The server certificate a certificate mode uses (ECDSA or RSA, both for server.test)."""
    return pki.server if mode.server_cert == "ecdsa" else pki.rsa_server


def seeded_random(seed: int, role: str) -> Callable[[int], bytes]:
    """A reproducible ``random_bytes`` for one side."""
    return random.Random(f"{seed}/{role}").randbytes


def configs_for(
    mode: Mode | str,
    pki: Pki,
    *,
    seed: int = 0,
    mtu: int = 1400,
    **overrides: Any,
) -> tuple[DtlsConfig, DtlsConfig]:
    """Client and server DtlsConfig for ``mode``; ``overrides`` apply to both sides.

    Path MTU discovery is off unless asked for (``pmtu=PmtuSettings(...)``): its
    probes are meant to exceed the path, which the handshake tests' size
    assertions forbid; tests/sim/test_pmtu.py exercises it on capped links.
    """
    m = MODES[mode] if isinstance(mode, str) else mode
    client: dict[str, Any] = dict(
        is_client=True, cipher_suites=(m.suite,), mtu=mtu,
        random_bytes=seeded_random(seed, "client"), pmtu=None,
    )
    server: dict[str, Any] = dict(
        is_client=False, cipher_suites=(m.suite,), mtu=mtu,
        random_bytes=seeded_random(seed, "server"), pmtu=None,
    )
    if m.psk:
        client.update(psk=PSK, psk_identity=PSK_IDENTITY)
        server.update(psk_lookup={PSK_IDENTITY: PSK}.get)
    else:
        creds = server_credential(m, pki)
        ca = pki.ca if m.server_cert == "ecdsa" else pki.rsa_ca
        client.update(ca_certs=(ca.cert,), server_name=SERVER_NAME)
        server.update(certificate_chain=(creds.cert,), private_key=creds.key)
        if m.mutual:
            client.update(certificate_chain=(pki.client.cert,), private_key=pki.client.key)
            server.update(ca_certs=(pki.ca.cert,), require_client_cert=True)
    client.update(overrides)
    server.update(overrides)
    return DtlsConfig(**client), DtlsConfig(**server)


def with_changes(config: DtlsConfig, **changes: Any) -> DtlsConfig:
    """A copy of a frozen config with some fields changed."""
    return replace(config, **changes)
