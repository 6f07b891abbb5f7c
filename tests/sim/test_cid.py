"""RFC 9146 connection IDs through real Associations and a ServerEndpoint in the simulator.

The driver here (:class:`Net`, also used by ``test_rekey.py``) differs from
``harness.Simulator`` in what these tests need: the client's address can change
mid-run (datagrams the server sends to an address the client left are lost, as
behind a NAT that rebound), the client may be a :class:`RekeyingClient`, the
server answers on whichever of its associations is the newest established one
(during a rekey overlap: the old one until the new one completes) and to
``endpoint.address_of`` that association, and a stream of numbered inner packets
runs both ways on a fixed period.  Every datagram offered to a link is logged
with its direction, address and fate, and every inner packet with the link fate
of the datagram that carried it, so losses can be told from the link's drops.

Path: 20 ms one way, no loss.  Suite: ECDHE-ECDSA-AES128-GCM (record overhead
13 + 8 + 16 bytes).

What is asserted:

* negotiation: by default the client asks for no CID and the server for 8 bytes,
  so client-to-server protected records are ``tls12_cid`` (type 25) and
  server-to-client ones keep their real type (23 for data); with ``cid_length``
  set on both sides both directions are type 25; with ``connection_id=False`` on
  either side no CID is negotiated and no type-25 record is sent;
* roaming (port only, and address and port): traffic continues both ways with no
  epoch-0 handshake record (no ClientHello, no HelloVerifyRequest) after the move,
  one ``PeerAddressChanged``, ``address_changes == 1``, and the server's records go
  to the new address from the moment it learnt it; at most the packets the server
  sent in the one-way delay before it learnt it are lost (to the old address);
* RFC 9146 §6: a replayed record, or an older (not yet seen) one, from a new
  address moves nothing (a replay is counted, the older one is still delivered);
  a forged record with a known CID from a spoofed address is dropped, counted as
  ``bad_mac`` and moves nothing; an unknown CID is counted as ``unknown_cid``;
* the record overhead (and the PMTU-derived inner MTU) grows by exactly
  ``len(cid) + 1`` (the CID in the header, the real content type inside);
* without CIDs a new client address is a new association: the old one's records
  from the new address are dropped, the client redials and resumes with its ticket.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import (
    Event,
    HandshakeCompleted,
    PathMtuChanged,
    PeerAddressChanged,
    SessionTicketReceived,
)
from dtlsvpn.dtls.pmtu import PmtuSettings
from dtlsvpn.dtls.rekey import Rekeyed, RekeyingClient
from dtlsvpn.wire.constants import ContentType, HandshakeType
from dtlsvpn.wire.record import parse_datagram
from tests.pki import Pki
from tests.sim.clock import FakeClock
from tests.sim.harness import configs_for, report, with_changes
from tests.sim.link import SimLink

pytestmark = pytest.mark.sim

Address = tuple[str, int]
CLIENT_ADDR: Address = ("198.18.0.2", 40001)
MODE = "ecdhe-ecdsa-aes128"
DELAY = 0.02  # one way
PERIOD = 0.05  # one inner packet each way per period
PACKET_SIZE = 120
SECTION = "connection IDs (simulated, 20 ms one way)"
CT_CID = int(ContentType.tls12_cid)
CT_APP = int(ContentType.application_data)
CT_HANDSHAKE = int(ContentType.handshake)

_PKT = struct.Struct("!cIQ")  # direction tag, sender's generation, sequence number


# --- the driver ------------------------------------------------------------------------------


@dataclass(slots=True)
class Packet:
    """One numbered inner packet and what the link did to the datagram carrying it."""

    direction: str  # "c2s" | "s2c"
    seq: int
    generation: int  # which association (0 = the first, n = after n rekeys) sealed it
    sent_at: float
    fate: str  # the link's fate of its datagram: delivered, dropped, ...


@dataclass(slots=True)
class Wire:
    """One datagram offered to a link: source (c2s) or destination (s2c) address."""

    time: float
    direction: str
    addr: Address
    data: bytes
    fate: str
    note: str = ""


@dataclass(slots=True)
class OuterRecord:
    ctype: int
    epoch: int
    msg_type: int | None  # epoch-0 handshake records: the first message's type


def payload(direction: str, generation: int, seq: int) -> bytes:
    head = _PKT.pack(b"C" if direction == "c2s" else b"S", generation, seq)
    return head + bytes(PACKET_SIZE - len(head))


def parse_payload(data: bytes) -> tuple[str, int, int] | None:
    if len(data) != PACKET_SIZE:
        return None
    tag, generation, seq = _PKT.unpack_from(data)
    return ("c2s" if tag == b"C" else "s2c"), generation, seq


class Net:
    """A client (plain or rekeying) and a ServerEndpoint over two addressed SimLinks."""

    def __init__(
        self,
        client_config: DtlsConfig,
        server_config: DtlsConfig,
        *,
        rekeying: bool = False,
        grace: float = 2.0,
        seed: int = 0,
        delay: float = DELAY,
        drop: float = 0.0,
        endpoint: ServerEndpoint | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.client_config = client_config
        self.server_config = server_config
        self.c2s = SimLink(random.Random(f"{seed}/c2s"), name="c2s", delay=delay, drop=drop)
        self.s2c = SimLink(random.Random(f"{seed}/s2c"), name="s2c", delay=delay, drop=drop)
        self.client: Association | RekeyingClient = (
            RekeyingClient(client_config, grace=grace) if rekeying
            else Association(client_config))
        self.client_addr = CLIENT_ADDR
        self.endpoint = (endpoint if endpoint is not None
                         else ServerEndpoint(server_config, rekey_grace=grace))
        self.server_assocs: list[Association] = []  # in order of creation
        self.client_events: list[tuple[float, Event | Rekeyed]] = []
        self.server_events: list[tuple[float, Association, Event]] = []
        self.client_rx: list[tuple[float, bytes]] = []
        self.server_rx: list[tuple[float, bytes]] = []
        self.packets: dict[tuple[str, int], Packet] = {}
        self.wire: list[Wire] = []
        self.log: list[str] = []
        self.misaddressed = 0  # server datagrams to an address the client left
        self._next_seq = {"c2s": 0, "s2c": 0}
        self._heap: list[tuple[float, int, str, bytes, Address]] = []
        self._order = itertools.count()
        self._tick: float | None = None
        self._traffic_until = 0.0

    # --- views ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    @property
    def client_assoc(self) -> Association:
        c = self.client
        return c.current if isinstance(c, RekeyingClient) else c

    @property
    def client_generation(self) -> int:
        c = self.client
        return c.generation if isinstance(c, RekeyingClient) else 0

    def server_sender(self) -> Association | None:
        """The association the server sends on, as the endpoint says: during a rekey
        the old one until the client has used the new keys."""
        if not self.server_assocs:
            return None
        addr = self.endpoint.address_of(self.server_assocs[-1])
        assoc = None if addr is None else self.endpoint.sending_association(addr)
        return assoc if assoc is not None and assoc.is_established else None

    @property
    def server(self) -> Association:
        assert self.server_assocs, "the server has no association"
        return self.server_assocs[-1]

    def both_established(self) -> bool:
        return self.client.is_established and bool(self.server_assocs) and (
            self.server.is_established)

    def client_events_of(self, kind: type[Any]) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.client_events if isinstance(e, kind)]

    def server_events_of(self, kind: type[Any]) -> list[tuple[float, Association, Any]]:
        return [(t, a, e) for t, a, e in self.server_events if isinstance(e, kind)]

    # --- traffic -------------------------------------------------------------------

    def start_traffic(self, seconds: float, period: float = PERIOD) -> None:
        """One inner packet each way every ``period`` for ``seconds``, from now."""
        self._period = period
        self._tick = self.now
        self._traffic_until = self.now + seconds

    def send_packet(self, direction: str) -> Packet | None:
        """Seal and send the next numbered packet of one direction (if established)."""
        now = self.now
        if direction == "c2s":
            if not self.client.is_established:
                return None
            gen = self.client_generation
            seq = self._next_seq[direction]
            data = self.client.protect([payload(direction, gen, seq)])
            fates = [self._offer("c2s", d, self.client_addr) for d in data]
        else:
            sender = self.server_sender()
            addr = None if sender is None else self.endpoint.address_of(sender)
            if sender is None or addr is None:
                return None
            gen = self.server_assocs.index(sender)
            seq = self._next_seq[direction]
            data = sender.protect([payload(direction, gen, seq)])
            fates = [self._offer("s2c", d, addr) for d in data]
        self._next_seq[direction] = seq + 1
        pkt = Packet(direction, seq, gen, now, fates[0])
        self.packets[direction, seq] = pkt
        return pkt

    def sent(self, direction: str) -> list[Packet]:
        return [p for (d, _), p in sorted(self.packets.items()) if d == direction]

    def received(self, direction: str) -> Counter[int]:
        """Sequence numbers of one direction's packets as delivered, with multiplicity."""
        rx = self.server_rx if direction == "c2s" else self.client_rx
        out: Counter[int] = Counter()
        for _t, data in rx:
            parsed = parse_payload(data)
            if parsed is not None and parsed[0] == direction:
                out[parsed[2]] += 1
        return out

    def lost(self, direction: str, packets: Iterable[Packet] | None = None) -> list[Packet]:
        got = self.received(direction)
        pkts = self.sent(direction) if packets is None else packets
        return [p for p in pkts if got[p.seq] == 0]

    def per_generation(self) -> list[str]:
        """Packets sent/delivered per sending generation, both directions."""
        lines = []
        gens = sorted({p.generation for p in self.packets.values()})
        for g in gens:
            parts = []
            for d in ("c2s", "s2c"):
                got = self.received(d)
                pk = [p for p in self.sent(d) if p.generation == g]
                linked = [p for p in pk if p.fate == "delivered"]
                parts.append(f"{d} sent {len(pk):4d} link-delivered {len(linked):4d} "
                             f"decrypted {sum(1 for p in pk if got[p.seq]):4d}")
            lines.append(f"gen {g}: " + " | ".join(parts))
        return lines

    # --- inputs --------------------------------------------------------------------

    def connect(self) -> None:
        self.log.append(f"{self.now:9.4f} client connect from {self.client_addr}")
        self.client.connect(self.now, self.clock.wall)
        self._flush()

    def handshake(self, limit: float = 10.0) -> None:
        self.connect()
        self.run_until(self.both_established, limit)
        assert self.both_established(), self.format()

    def redial(self, config: DtlsConfig) -> None:
        """A new client Association (from the current address) replaces the old one."""
        self.client_config = config
        self.client = Association(config)
        self.connect()

    def inject_c2s(self, data: bytes, addr: Address) -> list[bytes]:
        """Hand ``data`` to the endpoint now, as if from ``addr``; return the app data."""
        return self._deliver("c2s", data, addr)

    def inject_s2c(self, data: bytes) -> list[bytes]:
        return self._deliver("s2c", data, self.client_addr)

    # --- the loop ------------------------------------------------------------------

    def next_time(self) -> float | None:
        times = [t for t in (self.client.get_timer(), self.endpoint.get_timer(), self._tick)
                 if t is not None]
        if self._heap:
            times.append(self._heap[0][0])
        return min(times, default=None)

    def run_until(self, predicate: Callable[[], bool], limit: float,
                  max_steps: int = 200_000) -> bool:
        deadline = self.now + limit
        steps = 0
        while not predicate():
            when = self.next_time()
            if when is None or when > deadline:
                self.clock.advance_to(deadline)
                return predicate()
            self._step_at(when)
            steps += 1
            assert steps <= max_steps, f"no progress after {max_steps} steps\n{self.format()}"
        return True

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def _step_at(self, when: float) -> None:
        self.clock.advance_to(when)
        now = self.now
        while self._heap and self._heap[0][0] <= now:
            _t, _o, direction, data, addr = heapq.heappop(self._heap)
            self._deliver(direction, data, addr)
        t = self.client.get_timer()
        if t is not None and t <= now:
            self.log.append(f"{now:9.4f} client timer")
            if isinstance(self.client, RekeyingClient):
                self.client.handle_timer(now, self.clock.wall)
            else:
                self.client.handle_timer(now)
            self._flush()
            self._check_rearmed("client", self.client.get_timer())
        t = self.endpoint.get_timer()
        if t is not None and t <= now:
            self.log.append(f"{now:9.4f} server timer")
            self.endpoint.handle_timer(now)
            self._flush()
            self._check_rearmed("server", self.endpoint.get_timer())
        if self._tick is not None and self._tick <= now:
            self._tick += self._period
            if self._tick > self._traffic_until:
                self._tick = None
            self.send_packet("c2s")
            self.send_packet("s2c")

    def _check_rearmed(self, side: str, again: float | None) -> None:
        """A handled timer must move on (or something else must be due now)."""
        now = self.now
        due = bool(self._heap) and self._heap[0][0] <= now
        assert again is None or again > now or due, (
            f"{side} timer {again!r} not re-armed by handle_timer at now={now!r}\n"
            f"{self.format(40)}")

    def _deliver(self, direction: str, data: bytes, addr: Address) -> list[bytes]:
        now, wall = self.now, self.clock.wall
        self.log.append(f"{now:9.4f} {direction} recv {addr} {describe(data)}")
        if direction == "c2s":
            assoc, out = self.endpoint.receive(data, addr, now, wall)
            if assoc is None:
                for reply in out:
                    self._offer("s2c", reply, addr, note="stateless")
                app: list[bytes] = []
            else:
                if assoc not in self.server_assocs:
                    self.server_assocs.append(assoc)
                app = list(out)
                self.server_rx.extend((now, d) for d in app)
        elif addr != self.client_addr:
            self.misaddressed += 1
            self.log.append(f"{now:9.4f} s2c to {addr}: the client left that address")
            app = []
        else:
            app = self.client.receive_datagram(data, now, wall)
            self.client_rx.extend((now, d) for d in app)
        self._flush()
        return app

    def _flush(self) -> None:
        now = self.now
        for d in self.client.datagrams_to_send(now):
            self._offer("c2s", d, self.client_addr)
        for ev in self.client.pop_events():
            self.client_events.append((now, ev))
            self.log.append(f"{now:9.4f} client event {ev!r}")
        for a in self.endpoint.associations.values():
            if a not in self.server_assocs:
                self.server_assocs.append(a)
        for a in self.server_assocs:
            out = a.datagrams_to_send(now)
            addr = self.endpoint.address_of(a)
            for d in out:
                if addr is None:
                    self.log.append(f"{now:9.4f} s2c from a forgotten association {describe(d)}")
                else:
                    self._offer("s2c", d, addr)
            for ev in a.pop_events():
                self.server_events.append((now, a, ev))
                self.log.append(f"{now:9.4f} server#{self.server_assocs.index(a)} event {ev!r}")

    def _offer(self, direction: str, data: bytes, addr: Address, note: str = "") -> str:
        now = self.now
        link = self.c2s if direction == "c2s" else self.s2c
        deliveries = link.transmit(data, now)
        fate = link.history[-1].fate
        self.wire.append(Wire(now, direction, addr, data, fate, note))
        self.log.append(f"{now:9.4f} {direction} send {addr} {fate} {note} {describe(data)}")
        for when, d in deliveries:
            heapq.heappush(self._heap, (when, next(self._order), direction, d, addr))
        return fate

    # --- the wire ------------------------------------------------------------------

    def records(self, direction: str, since: float = 0.0) -> list[tuple[Wire, OuterRecord]]:
        """The outer records of the datagrams offered to one link since ``since``."""
        peer_asks = (self.server_config if direction == "c2s" else self.client_config)
        cid_len = peer_asks.own_cid_length or 0
        out = []
        for w in self.wire:
            if w.direction != direction or w.time < since:
                continue
            recs, _ = parse_datagram(w.data, cid_len)
            for r in recs:
                msg = (r.fragment[0] if r.content_type == CT_HANDSHAKE and r.epoch == 0
                       and r.fragment else None)
                out.append((w, OuterRecord(r.content_type, r.epoch, msg)))
        return out

    def handshake_records(self, since: float) -> list[OuterRecord]:
        """Epoch-0 handshake records (hellos, HelloVerifyRequests) either way since then."""
        return [r for d in ("c2s", "s2c") for _w, r in self.records(d, since)
                if r.ctype == CT_HANDSHAKE and r.epoch == 0]

    def format(self, last: int = 150) -> str:
        ev = [f"  {t:9.4f} client {e!r}" for t, e in self.client_events]
        ev += [f"  {t:9.4f} server#{self.server_assocs.index(a)} {e!r}"
               for t, a, e in self.server_events]
        return "\n".join([f"now={self.now:.4f} endpoint={self.endpoint.stats}", "events:", *ev,
                          "log:", *self.log[-last:]])


_TAG = {20: "CCS", 21: "ALERT", 22: "HS", 23: "APP", 24: "HB", 25: "CID"}


def describe(data: bytes) -> str:
    if len(data) < 13:
        return f"[garbage({len(data)})]"
    es = int.from_bytes(data[3:11], "big")
    return f"[{_TAG.get(data[0], data[0])} e{es >> 48}s{es & (2**48 - 1)} {len(data)}B]"


def make_configs(pki: Pki, seed: int, *, client: dict[str, Any] | None = None,
                 server: dict[str, Any] | None = None,
                 **both: Any) -> tuple[DtlsConfig, DtlsConfig]:
    """Client and server configs of MODE; ``both`` to each side, then the per-side ones."""
    c, s = configs_for(MODE, pki, seed=seed, **both)
    return with_changes(c, **(client or {})), with_changes(s, **(server or {}))


def make_ring(seed: int = 0) -> TicketKeyRing:
    return TicketKeyRing(random.Random(f"cid-ring/{seed}").randbytes)


# --- negotiation ------------------------------------------------------------------------------


def _exchange(net: Net, n: int = 10) -> None:
    net.start_traffic(n * PERIOD)
    net.run_for(n * PERIOD + 4 * DELAY)


def _protected_types(net: Net, direction: str) -> Counter[int]:
    return Counter(r.ctype for _w, r in net.records(direction) if r.epoch > 0)


@pytest.mark.parametrize(("client", "server", "expect"), [
    ({}, {}, (0, 8)),
    ({"cid_length": 4}, {"cid_length": 4}, (4, 4)),
    ({"cid_length": 5}, {"cid_length": 0}, (5, 0)),
    ({"connection_id": False}, {}, None),
    ({}, {"connection_id": False}, None),
    ({"connection_id": False}, {"connection_id": False}, None),
], ids=["default", "both-4", "client-5-server-0", "client-off", "server-off", "both-off"])
def test_cid_negotiation_and_outer_record_types(
        pki: Pki, client: dict[str, Any], server: dict[str, Any],
        expect: tuple[int, int] | None) -> None:
    """``expect``: (CID length on server-to-client records, on client-to-server ones)."""
    net = Net(*make_configs(pki, 1, client=client, server=server))
    net.handshake()
    _exchange(net)
    c_ids, s_ids = net.client_assoc.connection_ids, net.server.connection_ids
    c2s, s2c = _protected_types(net, "c2s"), _protected_types(net, "s2c")
    if expect is None:
        assert c_ids is None and s_ids is None
        assert CT_CID not in c2s and CT_CID not in s2c, (c2s, s2c)
    else:
        to_client, to_server = expect
        assert c_ids is not None and s_ids is not None
        assert (len(c_ids[0]), len(c_ids[1])) == (to_client, to_server)
        assert s_ids == (c_ids[1], c_ids[0])  # what one sends is what the other expects
        # Every protected record in a direction with a CID is tls12_cid; the others keep
        # their real outer type (application_data for the data).
        for types, cid_len in ((c2s, to_server), (s2c, to_client)):
            if cid_len:
                assert set(types) == {CT_CID}, types
            else:
                assert CT_CID not in types and types[CT_APP] >= 10, types
    assert not net.lost("c2s") and not net.lost("s2c")
    report(SECTION, f"negotiation {client or 'default'}/{server or 'default'}: ids "
                    f"{None if c_ids is None else tuple(len(x) for x in c_ids)}, outer types "
                    f"c2s {dict(c2s)} s2c {dict(s2c)}")


# --- record overhead and inner MTU ------------------------------------------------------------


@pytest.mark.parametrize(("cid_length", "to_server", "to_client"),
                         [(None, 8, 0), (4, 4, 4), (16, 16, 16)])
def test_inner_mtu_accounts_for_the_cid(pki: Pki, cid_length: int | None, to_server: int,
                                        to_client: int) -> None:
    pmtu = PmtuSettings()
    results: dict[bool, tuple[Association, Association]] = {}
    for on in (False, True):
        net = Net(*make_configs(pki, 2, pmtu=pmtu, connection_id=on, cid_length=cid_length))
        net.handshake()
        results[on] = (net.client_assoc, net.server)
        for side in (net.client_assoc, net.server):
            # A real record is exactly record_overhead longer than its payload.
            (rec,) = side.protect([b"x" * 100])
            assert len(rec) == 100 + side.record_overhead
        events = [e for _t, e in net.client_events_of(PathMtuChanged)]
        assert events and events[-1].inner_mtu == net.client_assoc.inner_mtu
    (c_off, s_off), (c_on, s_on) = results[False], results[True]
    assert c_on.record_overhead - c_off.record_overhead == to_server + 1
    assert s_on.record_overhead - s_off.record_overhead == (to_client + 1 if to_client else 0)
    assert c_off.inner_mtu is not None and c_on.inner_mtu is not None
    assert c_off.plpmtu == c_on.plpmtu
    assert c_off.inner_mtu - c_on.inner_mtu == to_server + 1
    assert s_off.inner_mtu is not None and s_on.inner_mtu is not None
    assert s_off.inner_mtu - s_on.inner_mtu == (to_client + 1 if to_client else 0)
    report(SECTION, f"cid_length={cid_length}: client overhead {c_off.record_overhead} -> "
                    f"{c_on.record_overhead}, inner MTU {c_off.inner_mtu} -> {c_on.inner_mtu} "
                    f"at PLPMTU {c_on.plpmtu}; server overhead {s_off.record_overhead} -> "
                    f"{s_on.record_overhead}")


# --- roaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("new_addr", [("198.18.0.2", 50123), ("198.19.7.7", 6001)],
                         ids=["port", "address-and-port"])
def test_client_address_change_needs_no_handshake(pki: Pki, new_addr: Address) -> None:
    net = Net(*make_configs(pki, 3))
    net.handshake()
    server = net.server
    net.start_traffic(4.0)
    net.run_for(2.0)
    hvr_before = net.endpoint.stats.hello_verify_sent
    moved_at = net.now
    net.client_addr = new_addr  # a NAT rebinding: the old address is gone
    net.run_for(2.5)
    # No handshake of any kind after the move: no hello, no HelloVerifyRequest.
    assert net.handshake_records(moved_at) == [], net.format()
    assert net.endpoint.stats.hello_verify_sent == hvr_before
    assert net.server_assocs == [server] and net.endpoint.associations == {new_addr: server}
    # One move, reported once, and the server's replies follow it.
    moves = net.server_events_of(PeerAddressChanged)
    assert [(a, e.old, e.new) for _t, a, e in moves] == [(server, CLIENT_ADDR, new_addr)]
    assert net.endpoint.stats.address_changes == 1
    assert net.endpoint.address_of(server) == new_addr
    learnt = moves[0][0]
    after = [w for w in net.wire if w.direction == "s2c" and w.time >= learnt]
    assert after and all(w.addr == new_addr for w in after)
    # Traffic continued both ways: every client packet arrived; of the server's, only those
    # sent to the old address in the one-way delay before it learnt the move are lost.
    assert not net.lost("c2s"), net.lost("c2s")
    lost = net.lost("s2c")
    assert all(moved_at <= p.sent_at < learnt for p in lost), (lost, net.format())
    assert len(lost) <= 1 and net.misaddressed == len(lost)
    delivered_after = [p for p in net.sent("s2c") if p.sent_at >= learnt]
    assert len(delivered_after) >= 30 and not net.lost("s2c", delivered_after)
    assert all(net.received(d)[p.seq] <= 1 for d in ("c2s", "s2c") for p in net.sent(d))
    report(SECTION, f"move {CLIENT_ADDR} -> {new_addr} at {moved_at:.2f} s: learnt after "
                    f"{(learnt - moved_at) * 1000:.0f} ms, packets c2s "
                    f"{sum(net.received('c2s').values())}/{len(net.sent('c2s'))}, s2c "
                    f"{sum(net.received('s2c').values())}/{len(net.sent('s2c'))} "
                    f"({len(lost)} sent to the old address), handshakes after the move 0")


def _established_with_traffic(pki: Pki, seed: int) -> Net:
    net = Net(*make_configs(pki, seed))
    net.handshake()
    _exchange(net)
    assert not net.lost("c2s")
    return net


def _assert_not_moved(net: Net, server: Association) -> None:
    assert net.endpoint.stats.address_changes == 0
    assert net.server_events_of(PeerAddressChanged) == []
    assert net.endpoint.address_of(server) == CLIENT_ADDR
    assert net.endpoint.associations == {CLIENT_ADDR: server}


def test_replayed_record_from_new_address_moves_nothing(pki: Pki) -> None:
    net = _established_with_traffic(pki, 4)
    server = net.server
    old = [w.data for w in net.wire if w.direction == "c2s" and w.data[0] == CT_CID
           and w.fate == "delivered"]
    replays = server.stats.replay
    spoofed: Address = ("192.0.2.66", 9999)
    newest, oldest = old[-1], old[-10]
    assert net.inject_c2s(newest, spoofed) == []
    assert net.inject_c2s(oldest, spoofed) == []
    assert server.stats.replay == replays + 2
    _assert_not_moved(net, server)
    # The association still works from where the client really is.
    assert net.send_packet("c2s") is not None
    net.run_for(4 * DELAY)
    assert not net.lost("c2s")
    _assert_not_moved(net, server)


def test_older_record_from_new_address_is_delivered_but_moves_nothing(pki: Pki) -> None:
    net = _established_with_traffic(pki, 5)
    server = net.server
    client = net.client_assoc
    # Two records the network holds: the newer reaches the server first, from the client's
    # address; the older one, never seen before, then comes from elsewhere.
    older, newer = client.protect([b"older"]), client.protect([b"newer"])
    assert net.inject_c2s(newer[0], CLIENT_ADDR) == [b"newer"]
    replays = server.stats.replay
    assert net.inject_c2s(older[0], ("192.0.2.77", 4242)) == [b"older"]
    assert server.stats.replay == replays and not server.advanced
    _assert_not_moved(net, server)


@pytest.mark.parametrize("where", ["ciphertext", "tag", "header-seq"])
def test_forged_record_with_known_cid_from_spoofed_address(pki: Pki, where: str) -> None:
    net = _established_with_traffic(pki, 6)
    server = net.server
    (genuine,) = net.client_assoc.protect([b"genuine"])
    assert genuine[0] == CT_CID
    # Header: type(1) version(2) epoch+seq(8) cid(8) length(2); then the GCM fragment
    # (explicit nonce, ciphertext, tag).  "header-seq" adds 256 to the sequence number: a
    # newer record for the replay check, but the header is in the AAD.
    pos = {"ciphertext": 21 + 8 + 3, "tag": len(genuine) - 1, "header-seq": 9}[where]
    forged = genuine[:pos] + bytes([genuine[pos] ^ 0x01]) + genuine[pos + 1:]
    bad_mac = server.stats.bad_mac
    assert net.inject_c2s(forged, ("192.0.2.99", 31337)) == []
    assert server.stats.bad_mac == bad_mac + 1
    _assert_not_moved(net, server)
    # The forgery did not move the replay window: the genuine record still gets in.
    assert net.inject_c2s(genuine, CLIENT_ADDR) == [b"genuine"]
    _assert_not_moved(net, server)


def test_unknown_cid_is_counted(pki: Pki) -> None:
    net = _established_with_traffic(pki, 7)
    server = net.server
    ids = server.connection_ids
    assert ids is not None
    unknown = bytes(b ^ 0x5A for b in ids[0])
    (genuine,) = net.client_assoc.protect([b"x"])
    forged = genuine[:11] + unknown + genuine[19:]
    before = dataclasses.replace(net.endpoint.stats)
    assoc, out = net.endpoint.receive(forged, ("192.0.2.5", 1000), net.now, net.clock.wall)
    assert (assoc, out) == (None, [])
    assoc, out = net.endpoint.receive(forged, CLIENT_ADDR, net.now, net.clock.wall)
    assert (assoc, out) == (None, [])
    assert net.endpoint.stats.unknown_cid == before.unknown_cid + 2
    assert net.endpoint.stats.hello_verify_sent == before.hello_verify_sent
    assert server.stats.bad_mac == 0 and server.stats.replay == 0
    _assert_not_moved(net, server)


# --- without connection IDs -------------------------------------------------------------------


def test_without_cid_new_address_means_a_new_association_resumed_with_ticket(pki: Pki) -> None:
    ring = make_ring(8)
    c, s = make_configs(pki, 8, connection_id=False, ticket_keys=ring)
    net = Net(c, s)
    net.handshake()
    _exchange(net)
    old_server = net.server
    ((_t, ticket),) = net.client_events_of(SessionTicketReceived)
    new_addr: Address = ("198.18.0.2", 50555)
    net.client_addr = new_addr
    # The old association's records from the new address reach no association.
    before = net.endpoint.stats.not_client_hello
    sent = net.send_packet("c2s")
    net.run_for(4 * DELAY)
    assert sent is not None and net.received("c2s")[sent.seq] == 0
    assert net.endpoint.stats.not_client_hello == before + 1
    assert old_server.stats.rx_records > 0 and net.endpoint.stats.address_changes == 0
    # The client redials from there with its ticket and resumes.
    redial_at = net.now
    net.redial(with_changes(c, resume_session=ticket.session))
    assert net.run_until(net.both_established, 5.0), net.format()
    new_server = net.server
    assert new_server is not old_server
    assert net.endpoint.associations == {CLIENT_ADDR: old_server, new_addr: new_server}
    done = [e for _t, e in net.client_events_of(HandshakeCompleted)]
    assert done[-1].resumed
    assert [e.resumed for _t, a, e in net.server_events_of(HandshakeCompleted)
            if a is new_server] == [True]
    kinds = [r.msg_type for r in net.handshake_records(redial_at)]
    assert kinds.count(HandshakeType.hello_verify_request) == 1  # the cookie, as always
    assert HandshakeType.certificate not in kinds
    took = net.now - redial_at
    first = len(net.sent("c2s"))
    _exchange(net)
    assert not net.lost("c2s", net.sent("c2s")[first:])
    report(SECTION, f"without CID: new address -> redial, resumed in {took * 1000:.0f} ms "
                    f"(cookie + abbreviated handshake)")
