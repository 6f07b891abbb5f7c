"""Simulator: a DTLS client (plain or rekeying) and a ServerEndpoint over two SimLinks.

Theory of operation
-------------------
The simulator owns a :class:`FakeClock` and a heap of pending deliveries
``(arrival_time, order, direction, bytes, address)``.  After every input given to
a side (``connect``, a delivered datagram, ``handle_timer``, a stream tick) it
collects that side's output with ``datagrams_to_send(now)`` and offers each
datagram to the link of that direction, which schedules zero or more deliveries.
One step jumps the clock to the earliest of the next delivery, each side's
``get_timer()`` and the packet stream's next tick; deliveries due at that instant
are processed first (in heap order), then the due timers, then the tick.  Nothing
sleeps and no socket is opened.

Addresses: every datagram carries one, the client's source address for
client-to-server datagrams and the destination the server chose for
server-to-client ones.  ``client_addr`` may be changed mid-run (a NAT rebinding):
the client sends from the new address from then on, and server datagrams still
addressed to the old one are lost (counted in ``misaddressed``).

The server side is driven only through the public ``ServerEndpoint`` API.  The
simulator's server associations (``server_assocs``, in order of creation) are
those the endpoint returned for its datagrams, and whichever the endpoint holds for
the current client address; each is drained to ``endpoint.address_of`` it (during
a rekey overlap the old one too).  Several simulators may share one
``ServerEndpoint`` (``endpoint=``) and one ``FakeClock`` (``clock=``), as a client
that reconnects from a new address (``client_addr=``) does: another simulator's
associations are drained and their output dropped ("not simulated").

``rekeying=True`` drives a :class:`RekeyingClient` (``rekeying_client``; ``grace=``
for it and for a new endpoint), and ``client`` is then its current Association;
``redial(config)`` replaces the client with a new plain Association.
``start_traffic`` runs a :class:`PacketStream` of numbered inner packets both ways
(``stream`` holds what was sent and what arrived).  ``wire`` holds every datagram
offered to a link with its address and fate; ``records``/``handshake_records``
parse it.  ``path_hint(side, mtu)`` feeds a kernel/ICMP hint to one side.

``run_until(predicate, limit_seconds)`` steps until the predicate holds or the
simulated time budget is spent and returns a :class:`Trace`: simulated time taken,
datagrams per direction, the largest datagram offered to either link,
retransmissions, the events of each side with their times, and a per-datagram log
that failing tests print (``format()`` prints the same for the simulator now).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import Event, HandshakeCompleted
from dtlsvpn.dtls.rekey import Rekeyed, RekeyingClient
from tests.sim.clock import FakeClock
from tests.sim.link import SimLink
from tests.sim.records import (
    CT_HANDSHAKE,
    Address,
    OuterRecord,
    Wire,
    describe_datagram,
    outer_records,
)
from tests.sim.stream import PERIOD, Packet, PacketStream
from tests.sim.trace import SimulationError, Trace

CLIENT_ADDR: Address = ("198.18.0.2", 40001)

E = TypeVar("E")


def link_pair(seed: int = 0, **knobs: Any) -> tuple[SimLink, SimLink]:
    """The client-to-server and server-to-client links of one seed, with the same knobs."""
    return (SimLink(random.Random(f"{seed}/c2s"), name="c->s", **knobs),
            SimLink(random.Random(f"{seed}/s2c"), name="s->c", **knobs))


class Simulator:
    """Drive a client and a ServerEndpoint over two SimLinks (see the module docstring)."""

    def __init__(
        self,
        client_config: DtlsConfig,
        server_config: DtlsConfig,
        *,
        c2s: SimLink | None = None,
        s2c: SimLink | None = None,
        clock: FakeClock | None = None,
        client_addr: Address = CLIENT_ADDR,
        seed: int = 0,
        endpoint: ServerEndpoint | None = None,
        rekeying: bool = False,
        grace: float | None = None,
    ) -> None:
        self.clock = clock if clock is not None else FakeClock()
        default_c2s, default_s2c = link_pair(seed)
        self.c2s = c2s if c2s is not None else default_c2s
        self.s2c = s2c if s2c is not None else default_s2c
        self.client_addr = client_addr
        self.client_config = client_config
        self.rekeying_client: RekeyingClient | None = None
        if rekeying:
            self.rekeying_client = (RekeyingClient(client_config) if grace is None
                                    else RekeyingClient(client_config, grace=grace))
        self._client: Association | RekeyingClient = (
            Association(client_config) if self.rekeying_client is None
            else self.rekeying_client)
        if endpoint is None:
            endpoint = (ServerEndpoint(server_config) if grace is None
                        else ServerEndpoint(server_config, rekey_grace=grace))
        self.endpoint = endpoint
        self.server_assocs: list[Association] = []
        self.client_rx: list[bytes] = []
        self.server_rx: list[bytes] = []
        self.client_events: list[tuple[float, Event | Rekeyed]] = []
        self.server_events: list[tuple[float, Event]] = []
        self.server_assoc_events: list[tuple[float, Association, Event]] = []
        self.stateless_replies = 0
        self.misaddressed = 0
        self.stream = PacketStream()
        self.wire: list[Wire] = []
        self.log: list[str] = []
        self._heap: list[tuple[float, int, str, bytes, Address]] = []
        self._order = itertools.count()
        self._connected_at: float | None = None
        self._last_server: Association | None = None

    # --- views -------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    @property
    def server(self) -> Association | None:
        """The server-side Association for the client address, if the endpoint holds one
        (else the last one it held)."""
        assoc = self.endpoint.associations.get(self.client_addr)
        if assoc is not None:
            self._last_server = assoc
        return assoc if assoc is not None else self._last_server

    @property
    def client(self) -> Association:
        """The client's Association (a rekeying client's current one)."""
        c = self._client
        return c.current if isinstance(c, RekeyingClient) else c

    @property
    def client_generation(self) -> int:
        c = self._client
        return c.generation if isinstance(c, RekeyingClient) else 0

    def server_sender(self) -> Association | None:
        """The association the server sends on, as the endpoint says: during a rekey
        the old one until the client has used the new keys."""
        if not self.server_assocs:
            return None
        addr = self.endpoint.address_of(self.server_assocs[-1])
        assoc = None if addr is None else self.endpoint.sending_association(addr)
        return assoc if assoc is not None and assoc.is_established else None

    def both_established(self) -> bool:
        srv = self.server
        return self._client.is_established and srv is not None and srv.is_established

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

    def server_events_of(self, kind: type[E]) -> list[tuple[float, Association, E]]:
        """``(time, association, event)`` of the server's events of one type, in order."""
        return [(t, a, e) for t, a, e in self.server_assoc_events if isinstance(e, kind)]

    def side(self, side: str) -> Association:
        """The client Association, or the server's for the client address."""
        if side == "client":
            return self.client
        srv = self.server
        assert srv is not None, "the server has no association for the client"
        return srv

    def records(self, direction: str, since: float = 0.0) -> list[tuple[Wire, OuterRecord]]:
        """The outer records of the datagrams offered to one link since ``since``."""
        receiver = self.endpoint.config if direction == "c2s" else self.client_config
        return outer_records(self.wire, direction, receiver.own_cid_length or 0, since)

    def handshake_records(self, since: float) -> list[OuterRecord]:
        """Epoch-0 handshake records (hellos, HelloVerifyRequests) either way since then."""
        return [r for d in ("c2s", "s2c") for _w, r in self.records(d, since)
                if r.ctype == CT_HANDSHAKE and r.epoch == 0]

    # --- inputs --------------------------------------------------------------

    def connect(self) -> None:
        self._connected_at = self.now
        self.log.append(f"{self.now:9.4f} client connect from {self.client_addr}")
        self._client.connect(self.now, self.clock.wall)
        self._flush()

    def redial(self, config: DtlsConfig) -> None:
        """A new client Association (from the current address) replaces the old one."""
        self.client_config = config
        self.rekeying_client = None
        self._client = Association(config)
        self.connect()

    def send_from_client(self, datagrams: Iterable[bytes]) -> None:
        """Offer datagrams to the client-to-server link (e.g. the output of ``protect``)."""
        for d in datagrams:
            self._offer("c2s", d, self.client_addr)

    def send_from_server(self, datagrams: Iterable[bytes]) -> None:
        for d in datagrams:
            self._offer("s2c", d, self.client_addr)

    def path_hint(self, side: str, mtu: int) -> None:
        """A kernel or ICMP Packet Too Big hint of ``mtu`` to one side, now."""
        self.log.append(f"{self.now:9.4f} {side} path_hint {mtu}")
        self.side(side).path_hint(mtu, self.now)
        self._flush()

    def deliver_to_server(self, data: bytes, addr: Address | None = None) -> list[bytes]:
        """Hand ``data`` to the endpoint now, bypassing the link, as if from ``addr``
        (default: the client's address); return the app data."""
        return self._deliver("c2s", data, self.client_addr if addr is None else addr)

    def deliver_to_client(self, data: bytes) -> list[bytes]:
        return self._deliver("s2c", data, self.client_addr)

    def start_traffic(self, seconds: float, period: float = PERIOD) -> None:
        """One numbered inner packet each way every ``period`` for ``seconds``, from now."""
        self.stream.start(self.now, seconds, period)

    def send_packet(self, direction: str) -> Packet | None:
        """Seal and send the next numbered packet of one direction (if established)."""
        if direction == "c2s":
            if not self._client.is_established:
                return None
            gen = self.client_generation
            data = self._client.protect([self.stream.next_payload(direction, gen)])
            fates = [self._offer("c2s", d, self.client_addr) for d in data]
        else:
            sender = self.server_sender()
            addr = None if sender is None else self.endpoint.address_of(sender)
            if sender is None or addr is None:
                return None
            gen = self.server_assocs.index(sender)
            data = sender.protect([self.stream.next_payload(direction, gen)])
            fates = [self._offer("s2c", d, addr) for d in data]
        return self.stream.record(direction, gen, self.now, fates[0])

    # --- the loop ------------------------------------------------------------

    def next_time(self) -> float | None:
        times = [t for t in (self._client.get_timer(), self.endpoint.get_timer(),
                             self.stream.next_time()) if t is not None]
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

    def establish(self, limit_seconds: float = 10.0) -> Trace:
        """``handshake``, failing the test unless both sides are established in time."""
        trace = self.handshake(limit_seconds)
        if not trace.satisfied:
            raise SimulationError(f"no handshake in {limit_seconds:g} s\n{self.format()}")
        return trace

    def format(self, last: int = 150) -> str:
        """The state now: endpoint counters, every event (server ones by association
        number), the last ``last`` log lines."""
        ev = [f"  {t:9.4f} client {e!r}" for t, e in self.client_events]
        ev += [f"  {t:9.4f} server#{self.server_assocs.index(a)} {e!r}"
               for t, a, e in self.server_assoc_events]
        return "\n".join([f"now={self.now:.4f} endpoint={self.endpoint.stats}", "events:", *ev,
                          "log:", *self.log[-last:]])

    # --- internals -----------------------------------------------------------

    def _step_at(self, when: float) -> None:
        self.clock.advance_to(when)
        now = self.now
        while self._heap and self._heap[0][0] <= now:
            _t, _o, direction, data, addr = heapq.heappop(self._heap)
            self._deliver(direction, data, addr)
        timer = self._client.get_timer()
        if timer is not None and timer <= now:
            self.log.append(f"{now:9.4f} client timer")
            if isinstance(self._client, RekeyingClient):
                self._client.handle_timer(now, self.clock.wall)
            else:
                self._client.handle_timer(now)
            self._flush()
            self._check_rearmed("client", self._client.get_timer())
        timer = self.endpoint.get_timer()
        if timer is not None and timer <= now:
            self.log.append(f"{now:9.4f} server timer")
            self.endpoint.handle_timer(now)
            self._flush()
            self._check_rearmed("server", self.endpoint.get_timer())
        if self.stream.take_tick(now):
            self.send_packet("c2s")
            self.send_packet("s2c")

    def _check_rearmed(self, side: str, again: float | None) -> None:
        """A handled timer must move on (or a delivery must be due now)."""
        now = self.now
        if again is not None and again <= now and not self._heap_due(now):
            raise SimulationError(f"{side} timer {again} not re-armed at {now}")

    def _heap_due(self, now: float) -> bool:
        return bool(self._heap) and self._heap[0][0] <= now

    def _deliver(self, direction: str, data: bytes, addr: Address) -> list[bytes]:
        now, wall = self.now, self.clock.wall
        self.log.append(f"{now:9.4f} {direction} recv {len(data)}B {addr} "
                        f"{describe_datagram(data)}")
        app: list[bytes] = []
        if direction == "c2s":
            assoc, out = self.endpoint.receive(data, addr, now, wall)
            if assoc is None:
                self.stateless_replies += len(out)
                for reply in out:
                    self._offer("s2c", reply, addr, note="stateless")
            else:
                self._adopt(assoc)
                app = list(out)
                self.server_rx.extend(app)
        elif addr != self.client_addr:
            self.misaddressed += 1
            self.log.append(f"{now:9.4f} s2c to {addr}: the client left that address")
        else:
            app = self._client.receive_datagram(data, now, wall)
            self.client_rx.extend(app)
        self.stream.note_received(direction, app)
        self._flush()
        return app

    def _adopt(self, assoc: Association) -> None:
        if assoc not in self.server_assocs:
            self.server_assocs.append(assoc)

    def _flush(self) -> None:
        now = self.now
        for d in self._client.datagrams_to_send(now):
            self._offer("c2s", d, self.client_addr)
        for ev in self._client.pop_events():
            self.client_events.append((now, ev))
            self.log.append(f"{now:9.4f} client event {ev!r}")
        for addr, assoc in list(self.endpoint.associations.items()):
            if addr == self.client_addr:
                self._adopt(assoc)
            elif assoc not in self.server_assocs:
                for d in assoc.datagrams_to_send(now):
                    self.log.append(f"{now:9.4f} s2c to {addr} not simulated {len(d)}B")
                for ev in assoc.pop_events():
                    self.server_events.append((now, ev))
                    self.log.append(f"{now:9.4f} server at {addr} event {ev!r}")
        for assoc in self.server_assocs:
            self._flush_server(assoc, now)
        _ = self.server  # remembers the last server association even after its removal

    def _flush_server(self, assoc: Association, now: float) -> None:
        addr = self.endpoint.address_of(assoc)
        for d in assoc.datagrams_to_send(now):
            if addr is None:
                self.log.append(f"{now:9.4f} s2c from a forgotten association "
                                f"{describe_datagram(d)}")
            else:
                self._offer("s2c", d, addr)
        challenge = assoc.take_path_challenge()  # to the candidate address alone
        if challenge is not None:
            to = challenge[1]
            assert isinstance(to, tuple)
            self._offer("s2c", challenge[0], to)
        for ev in assoc.pop_events():
            self.server_events.append((now, ev))
            self.server_assoc_events.append((now, assoc, ev))
            self.log.append(f"{now:9.4f} server#{self.server_assocs.index(assoc)} "
                            f"event {ev!r}")

    def _offer(self, direction: str, data: bytes, addr: Address, note: str = "") -> str:
        now = self.now
        link = self.c2s if direction == "c2s" else self.s2c
        deliveries = link.transmit(data, now)
        fate = link.history[-1].fate
        self.wire.append(Wire(now, direction, addr, data, fate, note))
        self.log.append(
            f"{now:9.4f} {direction} send {len(data)}B {fate}{' ' + note if note else ''} "
            f"{addr} {describe_datagram(data)}"
        )
        for when, payload in deliveries:
            heapq.heappush(self._heap, (when, next(self._order), direction, payload, addr))
        return fate

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
