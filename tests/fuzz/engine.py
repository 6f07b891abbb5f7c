"""The mutation fuzzer: hostile datagrams at every step, in both roles, counted.

One *session* of the fuzzer is one of:

* **vector** — a captured real handshake (``tests/vectors/session_*.json``: OpenSSL and
  GnuTLS peers) replayed at a fresh target: the server role gets the peer client's
  datagrams (``c2s``) at a new ``ServerEndpoint``, the client role the peer server's
  (``s2c``) at a new client ``Association``; every datagram is mutated, duplicated or
  swapped with the next one at random;
* **live** — a real client and a real ``ServerEndpoint`` (a random mode: PSK,
  ECDHE-PSK, ECDSA, RSA, mutual; CIDs on or off; sometimes resuming with a ticket from
  an earlier session) talk over a lossless link, and every datagram bound for the
  fuzzed role is mutated at random on its way, so the mutations land in every
  handshake state; once established, the genuine traffic of the association (data,
  heartbeats when idle, CID records, the NewSessionTicket flight) is recorded and
  replayed at it mutated, and then it must still carry data unless it closed.

Mutations: bit flips, byte overwrites, truncations, a duplicated tail, a record
header field (type, version, epoch, sequence, length) set to an edge value, two
datagrams spliced, and random bytes.  Every call into the core is guarded: an
exception that escapes is counted with its traceback (the count must be 0).  Drops
are the sum of every association's and the endpoint's counters.
"""

from __future__ import annotations

import json
import random
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.dtls import Association, ServerEndpoint
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import SessionTicketReceived
from dtlsvpn.dtls.session import ClientSession
from tests.pki import Pki
from tests.sim.configs import configs_for

ADDR = ("198.18.0.2", 40001)
VECTORS = Path(__file__).resolve().parent.parent / "vectors"
LIVE_MODES = ["psk-aes128", "ecdhe-psk-chacha", "ecdhe-ecdsa-aes128", "ecdhe-ecdsa-aes256",
              "ecdhe-ecdsa-chacha", "ecdhe-rsa-aes128", "mutual-ecdsa"]
EDGE16 = (0, 1, 0x3FFF, 0x4000, 0x4800, 0x4801, 0xFFFF)


@dataclass
class Report:
    role: str
    datagrams: int = 0
    sessions: int = 0
    established: int = 0
    escaped: int = 0
    first_escapes: list[str] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.datagrams / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.drops.most_common())
        return (f"{self.role}: {self.datagrams} datagrams in {self.sessions} sessions "
                f"({self.established} established), {self.seconds:.1f} s, "
                f"{self.rate:.0f} datagrams/s, exceptions escaped {self.escaped}; "
                f"drops: {top}")


def load_vectors() -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(VECTORS.glob("session_*.json"))]


# --- mutations ---------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[str, bytes]:
    """One random mutation of ``data`` (``other``: material for splicing)."""
    how = rng.randrange(9)
    n = len(data)
    if n == 0 or how == 8:
        return "random", rng.randbytes(rng.randrange(1, 80))
    pos = rng.randrange(n)
    if how == 0:
        bit = 1 << rng.randrange(8)
        return "bitflip", data[:pos] + bytes([data[pos] ^ bit]) + data[pos + 1:]
    if how == 1:
        return "truncate", data[:pos]
    if how == 2:
        return "dup_tail", data + data[pos:pos + rng.randrange(1, 64)]
    if how == 3:
        k = rng.randrange(1, 16)
        return "overwrite", data[:pos] + bytes([rng.randrange(256)]) * k + data[pos + k:]
    if how == 4 and n >= 13:
        return "header", _header_edge(rng, data)
    if how == 5:
        cut = rng.randrange(len(other) + 1)
        return "splice", data[:pos] + other[cut:]
    if how == 6:
        return "prefix_record", other[:13] + data
    if how == 7 and n > 25:  # handshake header fields inside the first record
        off = 13 + rng.choice((0, 1, 4, 6, 9))
        if off + 3 <= n:
            return "hs_header", data[:off] + rng.randbytes(3) + data[off + 3:]
    return "bitflip", data[:pos] + bytes([data[pos] ^ 0x80]) + data[pos + 1:]


def _header_edge(rng: random.Random, data: bytes) -> bytes:
    field_ = rng.randrange(5)
    b = bytearray(data)
    if field_ == 0:
        b[0] = rng.choice((0, 19, 20, 21, 22, 23, 24, 25, 26, 255))
    elif field_ == 1:
        b[1:3] = struct.pack("!H", rng.choice((0xFEFD, 0xFEFF, 0xFEFC, 0x0303, 0)))
    elif field_ == 2:
        b[3:5] = struct.pack("!H", rng.choice((0, 1, 2, 0xFFFF)))
    elif field_ == 3:
        b[5:11] = rng.choice((bytes(6), b"\xff" * 6, rng.randbytes(6)))
    else:
        b[11:13] = struct.pack("!H", rng.choice(EDGE16))
    return bytes(b)


# --- the targets --------------------------------------------------------------------------


class Target:
    """The fuzzed side: a ServerEndpoint (role server) or a client Association."""

    def __init__(self, role: str, report: Report, config: DtlsConfig, *,
                 endpoint: ServerEndpoint | None = None,
                 client: Association | None = None) -> None:
        self.role = role
        self.report = report
        self.endpoint = endpoint
        self.client: Association | None = None
        if role == "client":
            self.client = client or Association(config)
        elif endpoint is None:
            self.endpoint = ServerEndpoint(config)

    def call(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception:  # the point: nothing may escape the core
            self.report.escaped += 1
            if len(self.report.first_escapes) < 5:
                self.report.first_escapes.append(traceback.format_exc())
            return None

    def associations(self) -> list[Association]:
        if self.client is not None:
            return [self.client]
        assert self.endpoint is not None
        return list(self.endpoint.associations.values())

    def feed(self, data: bytes, now: float, wall: float) -> list[bytes]:
        """Deliver one datagram; return what the fuzzed side sends back."""
        self.report.datagrams += 1
        out: list[bytes] = []
        if self.client is not None:
            client = self.client
            self.call(lambda: client.receive_datagram(data, now, wall))
            out += self.call(lambda: client.datagrams_to_send(now)) or []  # type: ignore[operator]
            self.call(client.pop_events)
            return out
        ep = self.endpoint
        assert ep is not None
        got = self.call(lambda: ep.receive(data, ADDR, now, wall))
        if isinstance(got, tuple):
            assoc, res = got
            if assoc is None:
                out += res
        for a in list(ep.associations.values()):
            out += self.call(lambda a=a: a.datagrams_to_send(now)) or []  # type: ignore[misc]
        return out

    def tick(self, now: float) -> None:
        if self.client is not None:
            client = self.client
            t = client.get_timer()
            if t is not None and now >= t:
                self.call(lambda: client.handle_timer(now))
        else:
            ep = self.endpoint
            assert ep is not None
            self.call(lambda: ep.handle_timer(now))

    def count_drops(self, assocs: list[Association]) -> None:
        skip = {"rx_records", "rx_bytes", "tx_records", "tx_bytes", "retransmissions",
                "heartbeat_answered", "heartbeats_sent", "probes_sent"}
        for a in assocs:
            for k, v in a.stats.as_dict().items():
                if v and k not in skip:
                    self.report.drops[k] += v
        if self.endpoint is not None:
            s = self.endpoint.stats
            self.report.drops["endpoint.not_client_hello"] += s.not_client_hello
            self.report.drops["endpoint.unknown_cid"] += s.unknown_cid
            self.report.drops["endpoint.table_full"] += s.table_full
            adm = self.endpoint.admission
            self.report.drops["endpoint.hvr_rate_limited"] += adm.hvr_rate_limited
            self.report.drops["endpoint.source_limited"] += adm.source_limited


# --- the fuzzer ------------------------------------------------------------------------------


class Fuzzer:
    def __init__(self, pki: Pki, seed: int = 0, *, mutation_rate: float = 0.4,
                 established_rounds: int = 120) -> None:
        self.pki = pki
        self.rng = random.Random(f"fuzz/{seed}")
        self.mutation_rate = mutation_rate
        self.established_rounds = established_rounds
        self.vectors = load_vectors()
        self.wall = pki.now.timestamp()
        self.tickets: dict[str, ClientSession] = {}

    def run(self, role: str, datagrams: int, progress: Callable[[Report], None] | None = None,
            every: int = 50_000) -> Report:
        report = Report(role)
        start = time.perf_counter()
        next_progress = every
        while report.datagrams < datagrams:
            if self.rng.random() < 0.25:
                self._vector_session(role, report)
            else:
                self._live_session(role, report)
            report.sessions += 1
            if progress is not None and report.datagrams >= next_progress:
                report.seconds = time.perf_counter() - start
                progress(report)
                next_progress += every
        report.seconds = time.perf_counter() - start
        return report

    def _maybe_mutate(self, report: Report, data: bytes, other: bytes) -> list[bytes]:
        """The datagram as it arrives: unchanged, mutated, duplicated, or both."""
        rng = self.rng
        out = [data]
        if rng.random() < self.mutation_rate:
            kind, mutated = mutate(rng, data, other)
            report.mutations[kind] += 1
            out = [mutated] if rng.random() < 0.7 else [mutated, data]
        if rng.random() < 0.05:
            report.mutations["duplicate"] += 1
            out.append(out[-1])
        return out

    # -- captured real handshakes --

    def _vector_session(self, role: str, report: Report) -> None:
        vec = self.rng.choice(self.vectors)
        direction = "c2s" if role == "server" else "s2c"
        grams = [bytes.fromhex(str(d["hex"])) for d in vec["datagrams"]  # type: ignore[attr-defined]
                 if d["dir"] == direction]
        if self.rng.random() < 0.3 and len(grams) > 1:  # reorder: swap a neighbour pair
            i = self.rng.randrange(len(grams) - 1)
            grams[i], grams[i + 1] = grams[i + 1], grams[i]
            report.mutations["reorder"] += 1
        mode = "ecdhe-psk-chacha" if "PSK" in str(vec["suite"]) else "ecdhe-ecdsa-aes128"
        c_cfg, s_cfg = configs_for(mode, self.pki, seed=self.rng.randrange(1 << 30))
        target = Target(role, report, c_cfg if role == "client" else s_cfg)
        now = 0.0
        if target.client is not None:
            client = target.client
            target.call(lambda: client.connect(0.0, self.wall))
            target.call(lambda: client.datagrams_to_send(0.0))
        for i, g in enumerate(grams):
            other = grams[(i + 1) % len(grams)]
            for d in self._maybe_mutate(report, g, other):
                now += 0.01
                target.feed(d, now, self.wall + now)
            if self.rng.random() < 0.2:
                now += 2.0
                target.tick(now)
        target.count_drops(target.associations())

    # -- live handshakes and established traffic --

    def _configs(self) -> tuple[str, DtlsConfig, DtlsConfig]:
        rng = self.rng
        mode = rng.choice(LIVE_MODES)
        over: dict[str, object] = {"connection_id": rng.random() < 0.6}
        c_cfg, s_cfg = configs_for(mode, self.pki, seed=rng.randrange(1 << 30), **over)
        s_cfg = replace(s_cfg, ticket_keys=TicketKeyRing(random.Random(mode).randbytes))
        if mode in self.tickets and rng.random() < 0.5:
            c_cfg = replace(c_cfg, resume_session=self.tickets[mode])
        return mode, c_cfg, s_cfg

    def _live_session(self, role: str, report: Report) -> None:
        mode, c_cfg, s_cfg = self._configs()
        client = Association(c_cfg)
        endpoint = ServerEndpoint(s_cfg)
        target = (Target("server", report, s_cfg, endpoint=endpoint) if role == "server"
                  else Target("client", report, c_cfg, client=client))
        now, wall = 0.0, self.wall
        target.call(lambda: client.connect(now, wall))
        to_server = list(client.datagrams_to_send(now))
        to_client: list[bytes] = []
        recorded: list[bytes] = []  # genuine datagrams bound for the fuzzed role
        for _step in range(40):
            if not to_server and not to_client:
                now += 1.1
                self._timers(target, client, endpoint, now, to_server, to_client)
                if not to_server and not to_client:
                    break
            now += 0.01
            self._exchange(role, report, target, client, endpoint, to_server, to_client,
                           recorded, now)
            if client.is_established and not to_server and not to_client:
                break
        for ev in client.pop_events():
            if isinstance(ev, SessionTicketReceived):
                self.tickets[mode] = ev.session
        server = endpoint.associations.get(ADDR)
        if client.is_established and server is not None and server.is_established:
            report.established += 1
            self._established(role, report, target, (client, server, endpoint), recorded,
                              now, mode)
        target.count_drops([client] if role == "client"
                           else list(endpoint.associations.values()))

    @staticmethod
    def _timers(target: Target, client: Association, endpoint: ServerEndpoint, now: float,
                to_server: list[bytes], to_client: list[bytes]) -> None:
        """Fire both sides' due timers (retransmissions) and collect what they send."""
        def step() -> None:
            t = client.get_timer()
            if t is not None and now >= t:
                client.handle_timer(now)
            endpoint.handle_timer(now)
            to_server.extend(client.datagrams_to_send(now))
            for a in list(endpoint.associations.values()):
                to_client.extend(a.datagrams_to_send(now))

        target.call(step)

    def _exchange(self, role: str, report: Report, target: Target, client: Association,
                  endpoint: ServerEndpoint, to_server: list[bytes], to_client: list[bytes],
                  recorded: list[bytes], now: float) -> None:
        wall = self.wall + now
        if to_server:
            d = to_server.pop(0)
            if role == "server":
                recorded.append(d)
                for m in self._maybe_mutate(report, d, self.rng.choice(recorded)):
                    to_client += target.feed(m, now, wall)
            else:
                got = target.call(lambda: endpoint.receive(d, ADDR, now, wall))
                if isinstance(got, tuple) and got[0] is None:
                    to_client += got[1]
                for a in list(endpoint.associations.values()):
                    to_client += target.call(lambda a=a: a.datagrams_to_send(now)) or []  # type: ignore[misc]
        elif to_client:
            d = to_client.pop(0)
            if role == "client":
                recorded.append(d)
                for m in self._maybe_mutate(report, d, self.rng.choice(recorded)):
                    to_server += target.feed(m, now, wall)
            else:
                target.call(lambda: client.receive_datagram(d, now, wall))
                to_server += target.call(lambda: client.datagrams_to_send(now)) or []  # type: ignore[operator]
                target.call(client.pop_events)

    def _established(self, role: str, report: Report, target: Target,
                     pair: tuple[Association, Association, ServerEndpoint],
                     recorded: list[bytes], now: float, mode: str) -> None:
        """Genuine traffic of the association, replayed at it mutated; then it must work."""
        rng = self.rng
        client, server, endpoint = pair
        sender = server if role == "client" else client
        for i in range(8):
            recorded += sender.protect([rng.randbytes(rng.randrange(1, 200)) for _ in range(2)])
            if i % 3 == 2:  # idle: keepalive heartbeats (and their answers)
                now += 20.0
                sender.handle_timer(now)
                recorded += sender.datagrams_to_send(now)
        recorded = recorded[-60:]
        for _ in range(self.established_rounds):
            d = rng.choice(recorded)
            kind, m = mutate(rng, d, rng.choice(recorded))
            report.mutations[kind] += 1
            now += 0.001
            target.feed(m, now, self.wall + now)
            if rng.random() < 0.05:  # a replayed genuine record: must be a replay drop
                target.feed(d, now, self.wall + now)
        if client.is_closed or server.is_closed:
            return
        # Still established and not closed by an alert it had to send: data flows.
        (rec,) = client.protect([b"after the storm"])
        got = target.call(lambda: endpoint.receive(rec, ADDR, now, self.wall))
        ok = isinstance(got, tuple) and got[1] == [b"after the storm"]
        (back,) = server.protect([b"and back"])
        ok = ok and target.call(lambda: client.receive_datagram(back, now, self.wall)) == [
            b"and back"]
        if not ok and not client.is_closed and not server.is_closed:
            report.escaped += 1
            report.first_escapes.append(f"{mode}: an established association stopped working")
