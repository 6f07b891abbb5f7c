"""security.md over the TCP path: the rows that apply to TLS 1.2 on a byte stream.

``StreamAssociation`` shares the handshake machines with DTLS (so the S2-S5, S10-S13
and S16 tables are the same code, tested in ``test_security_*.py``), but its record
layer is its own: implicit sequence numbers, no replay window, and every record-layer
fault fatal (a stream cannot skip a record).  What is checked here is what that record
layer must refuse, and that nothing refused ever reaches the tunnel:

* B5 replay: a record replayed into the stream (the implicit sequence number moved on)
  and a record from another connection both fail authentication: fatal bad_record_mac,
  nothing delivered.  The whole client side of a recorded connection replayed into a
  fresh server connection never completes (new server random, new keys).
* B5 bad tag / forged record: the same fatal alert, counted ``bad_mac``.
* S1: a Finished without its ChangeCipherSpec never completes the handshake.
* S6: application data in the handshake (before keys, or after the CCS but before the
  Finished verified) is ``unexpected_message``; nothing is delivered.
* S14: after close_notify (either way) nothing more is processed (``after_close``).
* S15 / CVE-2014-0224: a CCS before the key exchange is ``unexpected_message``.
* B2 Heartbleed: a heartbeat whose payload_length exceeds the record is dropped
  silently (``heartbeat_malformed``); no answer, the connection lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import AssociationClosed, Event
from dtlsvpn.dtls.stream import StreamAssociation
from dtlsvpn.wire.constants import AlertDescription, ContentType
from dtlsvpn.wire.tls import RecordSplitter, encode_tls_record
from tests.pki import Pki
from tests.sim.clock import DEFAULT_EPOCH
from tests.sim.configs import configs_for

WALL = DEFAULT_EPOCH + 3600.0
MODES = ("psk-aes128", "ecdhe-ecdsa-chacha")


@dataclass
class Wire:
    """A client and a server joined directly; every chunk each side wrote is kept."""

    client: StreamAssociation
    server: StreamAssociation
    c2s: list[bytes] = field(default_factory=list)
    s2c: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)  # application data delivered
    to_server: list[bytes] = field(default_factory=list)

    def pump(self, now: float = 0.0) -> None:
        for _ in range(20):
            a, b = self.client.data_to_send(), self.server.data_to_send()
            if not a and not b:
                return
            if a:
                self.c2s.append(a)
                self.to_server += self.server.receive_data(a, now, WALL)
            if b:
                self.s2c.append(b)
                self.to_client += self.client.receive_data(b, now, WALL)


def connect(c: DtlsConfig, s: DtlsConfig) -> Wire:
    w = Wire(StreamAssociation(c), StreamAssociation(s))
    w.server.accept(0.0)
    w.client.connect(0.0, WALL)
    w.pump()
    assert w.client.is_established and w.server.is_established
    return w


def split(data: bytes) -> list[bytes]:
    """The records of a chunk, each as it was on the wire (header included)."""
    sp = RecordSplitter()
    sp.feed(data)
    out = []
    while (rec := sp.pop()) is not None:
        out.append(encode_tls_record(*rec))
    return out


def closed(side: StreamAssociation) -> AssociationClosed:
    events: list[Event] = side.pop_events()
    got = [e for e in events if isinstance(e, AssociationClosed)]
    assert got, events
    return got[0]


def fatal_sent(side: StreamAssociation, alert: int) -> None:
    ev = closed(side)
    assert ev.local and ev.alert == alert, ev
    out = side.data_to_send()
    assert out[:1] == bytes([ContentType.alert])  # the alert went out (sealed or not)


@pytest.mark.parametrize("mode", MODES)
def test_b5_a_record_replayed_into_the_stream_is_fatal(mode: str, pki: Pki) -> None:
    w = connect(*configs_for(mode, pki))
    w.server.pop_events()
    w.client.send([b"\x45first"])
    record = w.client.data_to_send()
    assert w.server.receive_data(record, 1.0, WALL) == [b"\x45first"]
    assert w.server.receive_data(record, 1.0, WALL) == []  # the same bytes again
    fatal_sent(w.server, AlertDescription.bad_record_mac)
    assert w.server.stats.bad_mac == 1
    w.client.send([b"\x45later"])
    assert w.server.receive_data(w.client.data_to_send(), 1.0, WALL) == []  # after_close
    assert w.server.stats.after_close == 1


@pytest.mark.parametrize("mode", MODES)
def test_b5_a_record_of_another_connection_is_fatal(mode: str, pki: Pki) -> None:
    c, s = configs_for(mode, pki)
    one, two = connect(c, s), connect(c, s)
    one.client.send([b"\x45other"])
    two.server.pop_events()
    assert two.server.receive_data(one.client.data_to_send(), 1.0, WALL) == []
    fatal_sent(two.server, AlertDescription.bad_record_mac)


@pytest.mark.parametrize("mode", MODES)
def test_b5_a_recorded_connection_replayed_to_a_new_server_never_completes(
        mode: str, pki: Pki) -> None:
    c, s = configs_for(mode, pki)
    w = connect(c, s)
    w.client.send([b"\x45secret"])
    w.pump()
    recorded = b"".join(w.c2s)
    fresh = StreamAssociation(s)
    fresh.accept(0.0)
    got: list[bytes] = []
    for rec in split(recorded):
        got += fresh.receive_data(rec, 0.0, WALL)
    assert got == [] and not fresh.is_established and fresh.handshake_result is None
    ev = closed(fresh)
    assert ev.handshake and ev.alert in (AlertDescription.bad_record_mac,
                                         AlertDescription.decrypt_error), ev


def test_b5_a_forged_record_is_fatal_and_counted(pki: Pki) -> None:
    w = connect(*configs_for("psk-aes128", pki))
    w.server.pop_events()
    w.client.send([b"\x45" * 50])
    wire = bytearray(w.client.data_to_send())
    wire[5 + 8] ^= 0x01  # the first ciphertext byte (after the explicit nonce)
    assert w.server.receive_data(bytes(wire), 1.0, WALL) == []
    fatal_sent(w.server, AlertDescription.bad_record_mac)
    assert w.server.stats.bad_mac == 1


@pytest.mark.parametrize("mode", MODES)
def test_s1_a_finished_without_its_ccs_never_completes(mode: str, pki: Pki) -> None:
    c, s = configs_for(mode, pki)
    client, server = StreamAssociation(c), StreamAssociation(s)
    server.accept(0.0)
    client.connect(0.0, WALL)
    server.receive_data(client.data_to_send(), 0.0, WALL)
    client.receive_data(server.data_to_send(), 0.0, WALL)
    flight = split(client.data_to_send())  # [key exchange...], CCS, Finished
    ccs = [r for r in flight if r[0] == ContentType.change_cipher_spec]
    assert len(ccs) == 1
    for rec in flight:
        if rec[0] != ContentType.change_cipher_spec:
            server.receive_data(rec, 0.0, WALL)
    assert not server.is_established and server.handshake_result is None
    ev = closed(server)
    assert ev.handshake and ev.alert in (AlertDescription.unexpected_message,
                                         AlertDescription.decode_error), ev


@pytest.mark.parametrize("declared", [28, 1000, 60_000])
def test_s1_a_message_out_of_place_is_refused_at_its_header(declared: int, pki: Pki) -> None:
    # Without the CCS, the sealed Finished reads as a header of random type and length.
    # Whatever length it declares, the reader refuses it at the header and does not sit
    # waiting for a body that will never come (the flake this pins: ChaCha20 has no
    # explicit nonce, so its ciphertext's first bytes were read as type and length).
    c, s = configs_for("ecdhe-ecdsa-chacha", pki)
    client, server = StreamAssociation(c), StreamAssociation(s)
    server.accept(0.0)
    client.connect(0.0, WALL)
    server.receive_data(client.data_to_send(), 0.0, WALL)
    client.receive_data(server.data_to_send(), 0.0, WALL)
    flight = split(client.data_to_send())
    for rec in flight:
        if rec[0] == ContentType.handshake:
            server.receive_data(rec, 0.0, WALL)  # the ClientKeyExchange
            break
    finished_type = 20
    header = bytes([finished_type]) + declared.to_bytes(3, "big")
    ct = int(ContentType.handshake)
    server.receive_data(encode_tls_record(ct, 0x0303, header + bytes(28)), 0.0, WALL)
    fatal_sent(server, AlertDescription.unexpected_message)


def test_s6_application_data_after_the_ccs_before_the_finished_is_refused(pki: Pki) -> None:
    c, s = configs_for("psk-aes128", pki)
    client, server = StreamAssociation(c), StreamAssociation(s)
    server.accept(0.0)
    client.connect(0.0, WALL)
    server.receive_data(client.data_to_send(), 0.0, WALL)
    client.receive_data(server.data_to_send(), 0.0, WALL)
    flight = split(client.data_to_send())
    i = next(i for i, r in enumerate(flight) if r[0] == ContentType.change_cipher_spec)
    for rec in flight[:i + 1]:  # up to and including the CCS
        server.receive_data(rec, 0.0, WALL)
    # Application data in the Finished's place, sealed under the client's new keys at
    # the Finished's sequence number: it authenticates, and is still refused.
    prot = client._write  # (the keys a peer would seal with)
    assert prot is not None
    ct = int(ContentType.application_data)
    frag = prot.seal(0, ct, b"\x45inner")
    assert server.receive_data(encode_tls_record(ct, 0x0303, frag), 0.0, WALL) == []
    assert not server.is_established and server.stats.early_data == 1
    assert server.stats.bad_mac == 0  # (it did authenticate)
    fatal_sent(server, AlertDescription.unexpected_message)


def test_s6_application_data_before_keys_is_refused(pki: Pki) -> None:
    _c, s = configs_for("psk-aes128", pki)
    server = StreamAssociation(s)
    server.accept(0.0)
    assert server.receive_data(encode_tls_record(ContentType.application_data, 0x0303,
                                                 b"\x45inner"), 0.0, WALL) == []
    fatal_sent(server, AlertDescription.unexpected_message)
    assert server.stats.early_data == 1


@pytest.mark.parametrize("closer", ["client", "server"])
def test_s14_nothing_is_processed_after_close_notify(closer: str, pki: Pki) -> None:
    w = connect(*configs_for("psk-aes128", pki))
    w.client.send([b"\x45sealed before the close"])
    held = w.client.data_to_send()
    (w.client if closer == "client" else w.server).close(1.0)
    w.pump(1.0)
    assert w.client.is_closed and w.server.is_closed
    assert w.server.receive_data(held, 1.0, WALL) == []
    assert w.server.stats.after_close >= 1 and not w.to_server


def test_s15_a_ccs_before_the_key_exchange_is_refused(pki: Pki) -> None:
    c, s = configs_for("ecdhe-ecdsa-chacha", pki)
    client, server = StreamAssociation(c), StreamAssociation(s)
    server.accept(0.0)
    client.connect(0.0, WALL)
    server.receive_data(client.data_to_send(), 0.0, WALL)  # ServerHello .. Done sent
    server.data_to_send()
    server.receive_data(encode_tls_record(ContentType.change_cipher_spec, 0x0303, b"\x01"),
                        0.0, WALL)
    fatal_sent(server, AlertDescription.unexpected_message)
    assert not server.is_established


@pytest.mark.parametrize("payload_length", [0x4000, 0xFFFF, 29, 0x0100])
def test_b2_heartbleed_over_tls_is_dropped_silently(payload_length: int, pki: Pki) -> None:
    w = connect(*configs_for("psk-aes128", pki))
    before = w.server.stats.heartbeat_malformed
    # type request, a payload_length larger than the record holds, 16 bytes of padding
    w.client._seal(int(ContentType.heartbeat),  # (sealed as a peer would send it)
                   bytes([1]) + payload_length.to_bytes(2, "big") + bytes(16))
    w.server.receive_data(w.client.data_to_send(), 1.0, WALL)
    assert w.server.stats.heartbeat_malformed == before + 1
    assert w.server.data_to_send() == b""  # no answer
    assert w.server.is_established
    w.client.send([b"\x45still up"])
    w.pump(1.0)
    assert w.to_server[-1] == b"\x45still up"
