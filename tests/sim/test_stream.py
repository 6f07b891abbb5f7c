"""TLS 1.2 over a byte stream: ``StreamAssociation`` pairs on the same handshake machines.

A ``Pipe`` joins two associations and delivers each side's bytes cut at seeded
random points (down to one byte at a time), with a fake clock.  Checked: every
handshake mode of ``tests/sim/configs.py``, the TLS wire shapes (5-byte
records, 4-byte handshake headers, no cookie), data both ways, tickets (also
across DTLS and TLS), heartbeats and liveness, and that every record-layer
fault is a fatal alert rather than an exception.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import pytest

from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import (
    AlertReceived,
    AssociationClosed,
    Event,
    HandshakeCompleted,
    HeartbeatAnswered,
    PeerUnresponsive,
    SessionTicketReceived,
)
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.dtls.stream import MAX_RENEGOTIATIONS, StreamAssociation
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import AlertDescription, ContentType, HandshakeType
from dtlsvpn.wire.tls import TLS_1_2, decode_tls_client_hello
from tests.pki import Pki
from tests.sim.clock import DEFAULT_EPOCH
from tests.sim.configs import MODES, configs_for, with_changes

WALL = DEFAULT_EPOCH + 3600.0  # inside the sim PKI validity


@dataclass
class Pipe:
    """Two stream associations and the bytes between them, cut at random points."""

    client: StreamAssociation
    server: StreamAssociation
    rng: random.Random
    max_chunk: int = 64
    now: float = 0.0
    c2s: list[bytes] = field(default_factory=list)  # what the client wrote, as written
    s2c: list[bytes] = field(default_factory=list)
    got_client: list[bytes] = field(default_factory=list)  # app data delivered to the client
    got_server: list[bytes] = field(default_factory=list)
    events_client: list[Event] = field(default_factory=list)
    events_server: list[Event] = field(default_factory=list)

    def start(self) -> None:
        self.server.accept(self.now)
        self.client.connect(self.now, WALL)

    def _deliver(self, data: bytes, to: StreamAssociation, got: list[bytes]) -> None:
        i = 0
        while i < len(data):
            n = self.rng.randint(1, self.max_chunk)
            got += to.receive_data(data[i:i + n], self.now, WALL + self.now)
            i += n

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            a = self.client.data_to_send()
            b = self.server.data_to_send()
            self.events_client += self.client.pop_events()
            self.events_server += self.server.pop_events()
            if not a and not b:
                return
            if a:
                self.c2s.append(a)
                self._deliver(a, self.server, self.got_server)
            if b:
                self.s2c.append(b)
                self._deliver(b, self.client, self.got_client)

    def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for side in (self.client, self.server):
                t = side.get_timer()
                if t is not None and t <= self.now:
                    side.handle_timer(self.now)
            self.pump()


def pair(client_cfg: DtlsConfig, server_cfg: DtlsConfig, seed: int = 0,
         max_chunk: int = 64) -> Pipe:
    p = Pipe(StreamAssociation(client_cfg), StreamAssociation(server_cfg),
             random.Random(seed), max_chunk)
    p.start()
    p.pump()
    return p


def records(stream: bytes) -> list[tuple[int, int, int]]:
    """(type, version, length) of each record in a captured direction."""
    out = []
    i = 0
    while i < len(stream):
        t, v, n = struct.unpack_from("!BHH", stream, i)
        out.append((t, v, n))
        i += 5 + n
    assert i == len(stream)
    return out


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("seed", [1, 2])
def test_every_mode_handshakes_and_carries_data(mode: str, seed: int, pki: Pki) -> None:
    c, s = configs_for(mode, pki, seed=seed)
    p = pair(c, s, seed=seed, max_chunk=1 if seed == 1 else 300)
    assert p.client.is_established and p.server.is_established
    done = [e for e in p.events_client if isinstance(e, HandshakeCompleted)]
    assert done and done[0].suite == MODES[mode].suite and done[0].ems
    packets = [bytes([0x45]) + bytes(random.Random(i).randbytes(n))
               for i, n in enumerate((20, 1400, 1, 16383))]
    p.client.send(packets)
    p.server.send(packets[::-1])
    p.pump()
    assert p.got_server == packets and p.got_client == packets[::-1]
    # The wire is TLS: 5-byte records of version 0x0303, a cookie-less ClientHello
    # with the 4-byte handshake header.
    c2s = b"".join(p.c2s)
    recs = records(c2s)
    assert all(v == TLS_1_2 for _, v, _ in recs)
    assert recs[0][0] == ContentType.handshake
    assert c2s[5] == HandshakeType.client_hello
    body_len = int.from_bytes(c2s[6:9], "big")
    ch = decode_tls_client_hello(c2s[9:9 + body_len])
    assert ch.version == TLS_1_2 and ch.cookie == b""


def test_server_flight_shares_records(pki: Pki) -> None:
    """ServerHello .. ServerHelloDone go out in one record (messages share records)."""
    c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    p = pair(c, s)
    first = records(p.s2c[0])
    assert first[0][0] == ContentType.handshake and len(first) == 1


def test_big_certificate_message_spans_records(pki: Pki) -> None:
    """A handshake message above 2^14 is cut across records and joined again."""
    c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    chain = (pki.server.cert,) + (pki.ca.cert,) * 40  # padding certificates: > 16 KiB
    s = with_changes(s, certificate_chain=chain)
    c = with_changes(c, verify_peer=False, ca_certs=())
    p = pair(c, s, max_chunk=700)
    assert p.client.is_established
    assert len(records(p.s2c[0])) >= 2


@pytest.mark.parametrize("across", ["tls-tls", "dtls-tls"])
def test_ticket_resumes(across: str, pki: Pki) -> None:
    ring = TicketKeyRing(random.Random(5).randbytes)
    c, s = configs_for("ecdhe-ecdsa-aes128", pki, seed=3)
    s = with_changes(s, ticket_keys=ring)
    if across == "tls-tls":
        p = pair(c, s)
        got = [e for e in p.events_client if isinstance(e, SessionTicketReceived)]
    else:
        got = _dtls_ticket(c, s)
    assert got, "no ticket issued"
    p2 = pair(with_changes(c, resume_session=got[0].session), s, seed=9)
    done = [e for e in p2.events_client if isinstance(e, HandshakeCompleted)]
    assert done and done[0].resumed
    p2.client.send([b"\x45resumed"])
    p2.pump()
    assert p2.got_server == [b"\x45resumed"]


def _dtls_ticket(c: DtlsConfig, s: DtlsConfig) -> list[SessionTicketReceived]:
    """A ticket from a DTLS handshake (no cookie exchange, datagrams passed directly)."""
    client = Association(c)
    server = Association(s)
    client.connect(0.0, WALL)
    events: list[Event] = []
    for _ in range(10):
        for d in client.datagrams_to_send(0.0):
            server.receive_datagram(d, 0.0, WALL)
        for d in server.datagrams_to_send(0.0):
            client.receive_datagram(d, 0.0, WALL)
        events += client.pop_events()
    return [e for e in events if isinstance(e, SessionTicketReceived)]


def test_heartbeats_keep_liveness_and_detect_silence(pki: Pki) -> None:
    hb = HeartbeatSettings(interval=2.0)
    c, s = configs_for("ecdhe-psk-chacha", pki, heartbeat_settings=hb)
    p = pair(c, s)
    p.advance(10.0)
    answered = [e for e in p.events_client if isinstance(e, HeartbeatAnswered)]
    assert answered, p.events_client
    assert p.server.stats.heartbeat_answered >= 1
    # The server stops reading: the client declares it unresponsive, never crashes.
    p.server = StreamAssociation(s)  # a sink that never answers
    before = len(p.events_client)
    for _ in range(200):
        p.now += 1.0
        t = p.client.get_timer()
        if t is not None and t <= p.now:
            p.client.handle_timer(p.now)
        p.client.data_to_send()
        p.events_client += p.client.pop_events()
        if any(isinstance(e, PeerUnresponsive) for e in p.events_client[before:]):
            break
    assert any(isinstance(e, PeerUnresponsive) for e in p.events_client[before:])


def _closed(events: list[Event]) -> AssociationClosed:
    closed = [e for e in events if isinstance(e, AssociationClosed)]
    assert closed, events
    return closed[0]


def test_corrupted_record_is_fatal_bad_record_mac(pki: Pki) -> None:
    c, s = configs_for("ecdhe-ecdsa-chacha", pki)
    p = pair(c, s)
    p.client.send([b"\x45" * 100])
    wire = bytearray(p.client.data_to_send())
    wire[-3] ^= 1
    p.server.receive_data(bytes(wire), 1.0, WALL)
    closed = _closed(p.server.pop_events())
    assert closed.local and closed.alert == AlertDescription.bad_record_mac
    assert p.server.stats.bad_mac == 1
    p.pump()
    got = [e for e in p.events_client if isinstance(e, AlertReceived)]
    assert got and got[0].description == AlertDescription.bad_record_mac
    assert p.client.is_closed


@pytest.mark.parametrize("wire, alert", [
    (b"\x17\x03\x03\x48\x01", AlertDescription.record_overflow),  # 18433 bytes > 2^14 + 2048
    (b"\x80\x2e\x01\x00\x02", AlertDescription.decode_error),  # SSLv2 ClientHello
    (b"\x16\xfe\xfd\x00\x10", AlertDescription.decode_error),  # a DTLS record
    (b"\x17\x03\x03\x00\x01\x00", AlertDescription.unexpected_message),  # data before keys
    (b"\x14\x03\x03\x00\x01\x01", AlertDescription.unexpected_message),  # CCS before keys
    (b"\x63\x03\x03\x00\x01\x00", AlertDescription.unexpected_message),  # unknown type
    (b"\x16\x03\x03\x00\x04\x03\x00\x00\x00", AlertDescription.unexpected_message),  # HVR
    (b"\x18\x03\x03\x00\x00", AlertDescription.unexpected_message),  # heartbeat before keys
    (b"\x18\x03\x03\x00\x13\x01\x00\x00" + bytes(16),  # a well-formed request
     AlertDescription.unexpected_message),
])
def test_bad_first_records_are_fatal_alerts(wire: bytes, alert: int, pki: Pki) -> None:
    c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    side = StreamAssociation(c if wire[5:6] == b"\x03" else s)
    if side.config.is_client:
        side.connect(0.0, WALL)
    else:
        side.accept(0.0)
    side.data_to_send()
    for b in wire:  # byte by byte
        side.receive_data(bytes([b]), 0.0, WALL)
    closed = _closed(side.pop_events())
    assert closed.local and closed.alert == alert
    sent = side.data_to_send()
    assert sent[:1] == b"\x15" and sent[-1] == alert  # the fatal alert went out
    before = side.stats.after_close
    assert side.receive_data(b"more", 0.0, WALL) == []
    assert side.stats.after_close == before + 1


def test_a_stream_of_heartbeats_before_the_handshake_ends_at_the_first(pki: Pki) -> None:
    """An unauthenticated client streaming empty heartbeat records (5 bytes each) got
    every one parsed and counted (1 MiB: 209 712 records in one wake-up): now the first
    is a fatal unexpected_message and the rest is not even split into records."""
    _c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    side = StreamAssociation(s)
    side.accept(0.0)
    side.receive_data(b"\x18\x03\x03\x00\x00" * 2000, 0.0, WALL)
    closed = _closed(side.pop_events())
    assert closed.local and closed.alert == AlertDescription.unexpected_message
    assert side.stats.heartbeat_dropped == 1 and side.stats.rx_records == 1
    sent = side.data_to_send()
    assert sent == b"\x15\x03\x03\x00\x02\x02" + bytes([AlertDescription.unexpected_message])


def test_handshake_times_out(pki: Pki) -> None:
    _c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    side = StreamAssociation(s, handshake_timeout=5.0)
    side.accept(10.0)
    assert side.get_timer() == 15.0
    side.handle_timer(15.0)
    assert _closed(side.pop_events()).reason == "handshake timed out"


def test_renegotiation_is_refused_with_a_warning(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    p = pair(c, s)
    # A HelloRequest from the server after the handshake (sealed under its keys).
    p.server._seal(int(ContentType.handshake), b"\x00\x00\x00\x00")
    p.pump()
    warn = [e for e in p.events_server if isinstance(e, AlertReceived)]
    assert warn and warn[0].description == AlertDescription.no_renegotiation
    assert p.client.is_established and p.server.is_established


def _alerts_in(p: Pipe, out: bytes) -> list[tuple[int, int]]:
    """(level, description) of every alert record ``p.server`` wrote, opened by the client."""
    p.client.pop_events()
    p.client.receive_data(out, p.now, WALL)
    return [(e.level, e.description) for e in p.client.pop_events()
            if isinstance(e, AlertReceived)]


def test_a_record_full_of_client_hellos_gets_one_warning(pki: Pki) -> None:
    """A 16 KiB record packs 4096 empty ClientHellos: one no_renegotiation, not 4096
    (the audit: 262 608 bytes in, 2 031 616 out)."""
    c, s = configs_for("psk-aes128", pki)
    p = pair(c, s)
    p.client._seal(int(ContentType.handshake), b"\x01\x00\x00\x00" * 4096)
    p.server.receive_data(p.client.data_to_send(), 1.0, WALL)
    out = p.server.data_to_send()
    assert _alerts_in(p, out) == [(1, AlertDescription.no_renegotiation)]
    assert p.server.stats.renegotiation_ignored == 4095
    assert p.server.is_established and p.client.is_established


def test_a_peer_that_keeps_asking_to_renegotiate_is_closed(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    p = pair(c, s)
    got: list[tuple[int, int]] = []
    for _ in range(MAX_RENEGOTIATIONS):
        p.client._seal(int(ContentType.handshake), b"\x01\x00\x00\x00" * 2)
        p.server.receive_data(p.client.data_to_send(), 1.0, WALL)
        got += _alerts_in(p, p.server.data_to_send())
    assert got == [(1, AlertDescription.no_renegotiation)] * MAX_RENEGOTIATIONS
    assert p.server.is_established
    for _ in range(3):  # once more: fatal; what follows is not even opened
        p.client._seal(int(ContentType.handshake), b"\x00\x00\x00\x00")
    p.server.receive_data(p.client.data_to_send(), 1.0, WALL)
    closed = _closed(p.server.pop_events())
    assert closed.local and closed.alert == AlertDescription.unexpected_message
    assert _alerts_in(p, p.server.data_to_send()) == [(2, AlertDescription.unexpected_message)]
    assert p.server.stats.renegotiation_ignored == MAX_RENEGOTIATIONS


def test_close_notify_both_ways(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    p = pair(c, s)
    p.client.close(1.0)
    p.pump()
    assert _closed(p.events_server).reason == "peer sent close_notify"
    assert p.client.is_closed and p.server.is_closed


def test_misuse_raises_usage_error(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    a = StreamAssociation(c)
    with pytest.raises(UsageError):
        a.receive_data(b"", 0.0, WALL)
    with pytest.raises(UsageError):
        a.accept(0.0)
    a.connect(0.0, WALL)
    with pytest.raises(UsageError):
        a.send([b"x"])
    p = pair(c, s)
    with pytest.raises(UsageError):
        p.client.send([bytes(2**14 + 1)])


def test_keys_stop_at_twice_the_record_budget(pki: Pki) -> None:
    """Renewal is the shell's job (a new connection at the budget); should it not come,
    the keys stop at 2x the budget: close_notify, ``close_cause`` record_limit on both
    sides, and no record beyond it is sealed."""
    c, s = configs_for("psk-aes128", pki, rekey_records=10)
    p = pair(c, s)
    assert p.client.record_limit == 20 and not p.client.records_exhausted()
    sealed = 0
    while p.client.is_established:
        sealed += p.client.send([b"\x45" + bytes([sealed])])
        if sealed == 9:
            assert p.client.records_exhausted()  # (the budget: time to renew)
        p.pump()
    assert sealed == 19  # (the Finished was the first record under these keys)
    assert len(p.got_server) == 19
    assert p.client.close_cause == p.server.close_cause == "record_limit"
    assert "20 records sent" in (p.client.close_reason or "")
    assert "20 records received" in (p.server.close_reason or "")
    # Each side's last record is its close_notify (a sealed 2-byte alert).
    for sent in (p.c2s, p.s2c):
        last = records(b"".join(sent))[-1]
        assert last[0] == ContentType.alert and last[2] == 2 + p.client.record_overhead - 5
    closed = _closed(p.events_client)
    assert closed.local and not closed.handshake


def test_keys_stop_at_twice_the_rekey_interval(pki: Pki) -> None:
    hb = HeartbeatSettings(interval=2.0)
    c, s = configs_for("ecdhe-psk-chacha", pki, rekey_interval=10.0, heartbeat_settings=hb)
    p = pair(c, s)
    p.advance(19.5)
    assert p.client.is_established and p.server.is_established  # (heartbeats went on)
    p.advance(1.0, step=0.1)
    assert p.client.is_closed and p.server.is_closed
    causes = {p.client.close_cause, p.server.close_cause}
    assert "key_age" in causes and causes <= {"key_age", "peer_closed"}, causes
    first = p.client if p.client.close_cause == "key_age" else p.server
    assert "2 x RekeyInterval (10s)" in (first.close_reason or "")


def test_close_causes_are_stable_words(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    p = pair(c, s)
    p.client.close(1.0)
    p.pump()
    assert (p.client.close_cause, p.server.close_cause) == ("closed", "peer_closed")
    side = StreamAssociation(s, handshake_timeout=5.0)
    side.accept(0.0)
    side.handle_timer(5.0)
    assert side.close_cause == "timeout"


def test_a_server_without_heartbeats_still_finds_a_silent_client_dead(pki: Pki) -> None:
    """The client did not allow heartbeats, so the server cannot ask: DeadPeerTimeout of
    silence is death anyway (once); traffic before that keeps the link."""
    hb = HeartbeatSettings(interval=2.0, timeout=8.0)
    c, s = configs_for("psk-aes128", pki, heartbeat_settings=hb)
    p = pair(with_changes(c, heartbeat=False), s)
    assert p.server.is_established
    for _ in range(10):  # 10 s of traffic, one packet a second: alive
        p.client.send([b"\x45"])
        p.advance(1.0)
    assert not [e for e in p.events_server if isinstance(e, PeerUnresponsive)]
    p.advance(7.0)  # (the last packet came 0.5 s into the last second)
    assert not [e for e in p.events_server if isinstance(e, PeerUnresponsive)]
    p.advance(2.0)
    dead = [e for e in p.events_server if isinstance(e, PeerUnresponsive)]
    assert len(dead) == 1 and dead[0].silent_for == 8.0, dead
    p.advance(20.0)
    assert len([e for e in p.events_server if isinstance(e, PeerUnresponsive)]) == 1
    assert not [e for e in p.events_client if isinstance(e, PeerUnresponsive)]
