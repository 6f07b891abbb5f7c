"""Unit tests for the pieces the Association is built from: epoch state
(epoch.py), the flight retransmitter, repeat sorting in the reassembler, and
the typed event set the shell matches on."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.dtls.epoch import MAX_FUTURE_RECORDS, ReadState, WriteState, records_exhausted
from dtlsvpn.dtls.events import EVENT_TYPES, CoreEvent, Event, PeerAlive, Rekeyed
from dtlsvpn.dtls.flight import (
    REPEAT_RESEND_GAP,
    SHRINK_AFTER,
    SMALL_MTU,
    FlightState,
    OutMessage,
    Retransmitter,
)
from dtlsvpn.dtls.reassembly import Reassembler
from dtlsvpn.dtls.rekey import Rekeyed as RekeyedFromRekey
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.wire.constants import CipherSuite, ContentType, HandshakeType
from dtlsvpn.wire.handshake import HandshakeFragment
from dtlsvpn.wire.record import parse_datagram

SUITE = SUITES[int(CipherSuite.TLS_PSK_WITH_AES_128_GCM_SHA256)]


def _protection(byte: int) -> RecordProtection:
    return RecordProtection(SUITE, bytes([byte]) * SUITE.key_len,
                            bytes([byte]) * SUITE.fixed_iv_len)


def _pair(cid: bytes = b"") -> tuple[WriteState, ReadState]:
    writer = WriteState.initial(0)
    writer.install(_protection(7))
    writer.cid = cid
    writer.seal(ContentType.change_cipher_spec, 0, b"\x01")
    reader = ReadState(cid=cid)
    reader.pending = _protection(7)
    reader.advance()
    return writer, reader


# --- epoch state ------------------------------------------------------------------


@pytest.mark.parametrize("cid", [b"", b"\x01\x02\x03\x04"])
def test_epoch_seal_open_then_replay(cid: bytes) -> None:
    writer, reader = _pair(cid)
    assert writer.epoch == 1 and reader.epoch == 1
    record = writer.seal(ContentType.application_data, 1, b"hello")
    [rec], garbage = parse_datagram(record, len(cid))
    stats = Stats()
    assert not garbage
    assert reader.open(rec, stats) == (ContentType.application_data, b"hello")
    assert reader.open(rec, stats) is None and stats.replay == 1
    assert writer.record_overhead() == 13 + SUITE.record_iv_len + SUITE.tag_len + (
        len(cid) + 1 if cid else 0)


def test_epoch_forgery_counts_and_keeps_the_window() -> None:
    writer, reader = _pair()
    record = bytearray(writer.seal(ContentType.application_data, 1, b"data"))
    record[-1] ^= 1
    [rec], _ = parse_datagram(bytes(record))
    stats = Stats()
    assert reader.open(rec, stats) is None
    assert stats.bad_mac == 1 and reader.auth_failures == 1 and reader.window.top == -1


def test_epoch_holds_next_epoch_records_up_to_the_cap() -> None:
    reader = ReadState()
    writer = WriteState.initial(0)
    writer.install(_protection(1))
    writer.seal(ContentType.change_cipher_spec, 0, b"\x01")
    [rec], _ = parse_datagram(writer.seal(ContentType.handshake, 1, b"x"))
    stats = Stats()
    for _ in range(MAX_FUTURE_RECORDS + 1):
        reader.hold(rec, stats)
    assert stats.buffer_full == 1
    reader.pending = _protection(1)
    assert len(reader.advance()) == MAX_FUTURE_RECORDS
    assert reader.epoch == 1 and reader.pending is None and not reader.future


def test_records_exhausted_by_either_direction() -> None:
    writer, reader = _pair()
    assert not records_exhausted(writer, reader, 3)
    for _ in range(3):
        writer.seal(ContentType.application_data, 1, b"")
    assert records_exhausted(writer, reader, 3)
    writer, reader = _pair()
    reader.window.commit(3)
    assert records_exhausted(writer, reader, 3) and not records_exhausted(writer, reader, 4)


# --- flights -------------------------------------------------------------------------


def _retransmitter(max_tries: int = 3) -> tuple[Retransmitter, list[int], Stats]:
    sent: list[int] = []
    stats = Stats()
    rt = Retransmitter(initial=1.0, maximum=60.0, max_retransmissions=max_tries, mtu=1400,
                       stats=stats, transmit=lambda msgs, mtu: sent.append(mtu))
    return rt, sent, stats


def test_retransmitter_backs_off_shrinks_and_gives_up() -> None:
    rt, sent, stats = _retransmitter(max_tries=3)
    rt.send([OutMessage(0, HandshakeType.client_hello, 0, b"x")], 0.0, expect_reply=True)
    assert rt.state is FlightState.WAITING and rt.timer.deadline == 1.0
    assert rt.on_timer(1.0) and rt.timer.deadline == 3.0
    assert rt.on_timer(3.0) and rt.on_timer(7.0)
    assert not rt.on_timer(15.0)
    assert sent[0] == 1400 and sent[SHRINK_AFTER] == SMALL_MTU
    assert stats.retransmissions == 3


def test_retransmitter_repeats_rate_limited_and_final_flight_untimed() -> None:
    rt, sent, stats = _retransmitter()
    rt.on_peer_repeat(0.0)
    assert sent == []  # nothing sent yet: nothing to repeat
    rt.send([OutMessage(0, HandshakeType.finished, 3, b"f")], 0.0, expect_reply=False)
    assert rt.state is FlightState.FINISHED and rt.timer.deadline is None
    rt.on_peer_repeat(1.0)
    rt.on_peer_repeat(1.0 + REPEAT_RESEND_GAP / 2)
    rt.on_peer_repeat(1.0 + REPEAT_RESEND_GAP)
    assert len(sent) == 3 and stats.retransmissions == 2


# --- repeats in the reassembler --------------------------------------------------------


def test_reassembler_sorts_repeats_stale_and_fresh() -> None:
    reasm = Reassembler()
    assert reasm.add(HandshakeFragment(HandshakeType.server_hello, 3, 0, 0, b"abc")) is None
    assert reasm.pop_ready() == (HandshakeType.server_hello, 0, b"abc")
    repeat, fresh, stale = reasm.sort([
        HandshakeFragment(HandshakeType.server_hello, 3, 0, 1, b"bc"),  # exact, partial
        HandshakeFragment(HandshakeType.server_hello, 3, 0, 0, b"abd"),  # differs
        HandshakeFragment(HandshakeType.certificate, 1, 1, 0, b"c"),  # new
    ], client=False)
    assert repeat and stale == 1 and [f.message_seq for f in fresh] == [1]
    hvr = HandshakeFragment(HandshakeType.hello_verify_request, 1, 0, 0, b"v")
    fresh_reasm = Reassembler(1)
    assert fresh_reasm.sort([hvr], client=True)[0]
    assert not fresh_reasm.sort([hvr], client=False)[0]


# --- events ----------------------------------------------------------------------------


def test_event_union_lists_every_event_type() -> None:
    assert set(typing.get_args(Event)) == set(EVENT_TYPES)
    for cls in EVENT_TYPES:
        assert issubclass(cls, CoreEvent) and dataclasses.is_dataclass(cls)
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen and "__slots__" in cls.__dict__ and "__dict__" not in dir(cls)
    assert RekeyedFromRekey is Rekeyed
    with pytest.raises(dataclasses.FrozenInstanceError):
        Rekeyed(generation=1).generation = 2  # type: ignore[misc]
    assert PeerAlive() == PeerAlive()
