"""Scripted attack conversations against the server handshake (security.md B1, B3).

Each test drives the real ``ServerEndpoint`` with datagrams built by
:class:`ScriptedClient`, a deliberately minimal DTLS 1.2 client written from
``dtlsvpn.wire`` codecs and ``dtlsvpn.crypto`` primitives (X25519 only, EMS
always, no retransmission logic of its own), in the spirit of tlsfuzzer's
named conversations: the test decides which message goes in which record, in
which epoch, and in which order.  Each case asserts what was dropped (which
``stats`` counter moved, and that no other drop counter did), what was
answered, and that the association's state did not change.

Only public API is used: ``ServerEndpoint.receive/associations/get_timer/
handle_timer``, ``Association.datagrams_to_send/pop_events/stats/
is_established/is_closed/protect/close``.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.events import AlertReceived, AssociationClosed
from dtlsvpn.dtls.reassembly import MAX_FRAGMENT_GAPS
from dtlsvpn.wire.constants import (
    DTLS_1_2,
    MAX_CIPHERTEXT,
    MAX_HANDSHAKE_MESSAGE,
    MAX_SEQ,
    AlertDescription,
    AlertLevel,
    HandshakeType,
)
from dtlsvpn.wire.handshake import encode_handshake
from dtlsvpn.wire.record import MAX_RECORDS_PER_DATAGRAM, encode_record, parse_datagram
from tests.pki import Pki
from tests.sim.clock import FakeClock
from tests.sim.configs import MODES, configs_for
from tests.sim.harness import CLIENT_ADDR
from tests.sim.scripted import (
    APP,
    CCS,
    HS,
    ServerUnderTest,
    assert_only,
    complete,
    drops,
    flight5,
    make_client,
    record_types,
    to_flight4,
)

pytestmark = pytest.mark.sim


# --- conversations ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["psk-aes128", "ecdhe-psk-chacha", "ecdhe-ecdsa-aes128",
                                  "ecdhe-ecdsa-aes256", "ecdhe-rsa-aes128", "mutual-ecdsa"])
def test_scripted_client_completes(pki: Pki, mode: str) -> None:
    """Control: the scripted client is correct, so the attack cases below mean something."""
    c, srv, _ = complete(pki, mode)
    got = srv.send(c.app_record(b"hello"))
    assert got == [] and srv.app == [b"hello"]
    c.absorb(srv.assoc.protect([b"world"]))
    assert c.app == [b"world"]
    assert drops(srv.assoc) == dict.fromkeys(drops(srv.assoc), 0)


# --- S1 / S9: Finished without ChangeCipherSpec -----------------------------------------


def test_s1_finished_in_epoch0_without_ccs_never_completes(pki: Pki) -> None:
    c, srv = to_flight4(pki)
    msgs, fin = flight5(c)
    before = drops(srv.assoc)
    out = srv.send(c.hs(*msgs), c.hs(fin, epoch=0))
    assert not srv.assoc.is_established and not srv.completed()
    # Either an abort with unexpected_message or a counted silent drop; never a Finished.
    assert CCS not in record_types(out)
    c.absorb(out)
    if srv.assoc.is_closed:
        assert c.alerts == [(0, AlertLevel.fatal, AlertDescription.unexpected_message)]
        (closed,) = [e for e in srv.events if isinstance(e, AssociationClosed)]
        assert closed.local and closed.alert == AlertDescription.unexpected_message
    else:
        assert out == [] and c.alerts == []
        assert_only(before, drops(srv.assoc), unexpected=1)
    assert srv.send(c.app_record(b"sneak")) == [] and srv.app == []
    srv.advance(10.0)
    assert not srv.assoc.is_established and not srv.completed() and srv.app == []


def test_s1_epoch1_finished_without_ccs_never_completes_s9_completes_after_ccs(
    pki: Pki,
) -> None:
    c, srv = to_flight4(pki)
    msgs, fin = flight5(c)
    out = srv.send(c.hs(*msgs), c.hs(fin, epoch=1))  # no CCS
    assert not srv.assoc.is_established and not srv.completed()
    assert CCS not in record_types(out) and not srv.assoc.is_closed
    assert srv.send(c.app_record(b"sneak")) == [] and srv.app == []
    assert not srv.assoc.is_established
    # S9: the CCS arrives late; with the Finished buffered or retransmitted, it completes.
    out = srv.send(c.ccs())
    if not srv.assoc.is_established:
        out += srv.send(c.hs(fin, epoch=1))
    c.absorb(out)
    assert srv.assoc.is_established and c.server_finished_ok
    assert b"sneak" not in srv.app


# --- S6: application data before Finished --------------------------------------------------


def test_s6_epoch0_app_data_dropped_before_and_after_handshake(pki: Pki) -> None:
    srv0 = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    assert srv0.send(encode_record(APP, 0, 0, b"\x45" + bytes(19))) == []
    assert not srv0.endpoint.associations and srv0.app == []

    c, srv = to_flight4(pki)
    before = drops(srv.assoc)
    assert srv.send(c.record(APP, b"\x45" + bytes(19), 0)) == []
    assert srv.app == [] and not srv.assoc.is_closed
    assert_only(before, drops(srv.assoc), early_data=1)

    msgs, fin = flight5(c)
    srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1))
    assert srv.assoc.is_established
    before = drops(srv.assoc)
    assert srv.send(c.record(APP, b"\x45" + bytes(19), 0)) == []
    assert srv.app == [] and srv.assoc.is_established
    moved = {k: drops(srv.assoc)[k] - before[k] for k in before}
    # Counted once, as early/unexpected data or as a record of an epoch no longer read.
    assert sum(moved.values()) == 1, moved
    assert moved["early_data"] + moved["unexpected"] + moved["unknown_epoch"] == 1, moved


def test_s6_epoch1_app_data_before_finished_not_delivered(pki: Pki) -> None:
    c, srv = to_flight4(pki)
    msgs, fin = flight5(c)
    before = drops(srv.assoc)
    out = srv.send(c.hs(*msgs) + c.ccs() + c.app_record(b"early"))
    assert srv.app == [], "application data delivered before the client Finished was verified"
    assert not srv.assoc.is_established and not srv.assoc.is_closed
    assert CCS not in record_types(out)
    out = srv.send(c.hs(fin, epoch=1))
    c.absorb(out)
    assert srv.assoc.is_established and c.server_finished_ok
    # Buffering (delivered after Finished) or dropping (counted) are both allowed.
    assert srv.app in ([], [b"early"])
    if not srv.app:
        assert_only(before, drops(srv.assoc), early_data=1)


# --- S7 / S8: wrong epochs --------------------------------------------------------------


def test_s7_client_hello_in_epoch1_ignored_by_endpoint(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    c = make_client(pki, "psk-aes128")
    ch = c.client_hello()
    assert srv.send(c.record(HS, ch, 1, plaintext=True)) == []
    assert not srv.endpoint.associations
    # With a valid cookie too: no association from an epoch-1 ClientHello.
    c.absorb(srv.send(c.hs(c.client_hello())))
    assert c.cookie
    assert srv.send(c.record(HS, c.client_hello(), 1, plaintext=True)) == []
    assert not srv.endpoint.associations


def test_s7_s8_plaintext_epoch1_during_handshake_silently_dropped(pki: Pki) -> None:
    c, srv = to_flight4(pki)
    before = drops(srv.assoc)
    msgs, fin = flight5(c)
    # The key exchange in the clear but labelled epoch 1: no keys for it, silent drop.
    out = srv.send(c.record(HS, b"".join(msgs), 1, plaintext=True))
    assert out == [] and not srv.assoc.is_closed and not srv.assoc.is_established
    after = drops(srv.assoc)
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert set(moved) <= {"unknown_epoch", "buffer_full"}, moved
    # The association survives: the genuine flight completes it.
    c.write_seq[1] = 0
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok
    assert srv.assoc.stats.unknown_epoch + srv.assoc.stats.bad_mac >= 1


def test_s8_plaintext_epoch1_and_unknown_epoch_after_handshake(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    before = drops(srv.assoc)
    out = srv.send(c.record(HS, encode_handshake(HandshakeType.client_hello, 5, bytes(40)), 1,
                            plaintext=True))
    assert out == [] and srv.assoc.is_established and not srv.assoc.is_closed
    assert_only(before, drops(srv.assoc), bad_mac=1)
    before = drops(srv.assoc)
    out = srv.send(c.record(APP, bytes(40), 2, plaintext=True))
    assert out == [] and srv.assoc.is_established
    assert_only(before, drops(srv.assoc), unknown_epoch=1)
    assert srv.send(c.app_record(b"still alive")) == [] and srv.app == [b"still alive"]
    assert not [e for e in srv.events if isinstance(e, AssociationClosed)]


# --- S10: a second, different Finished ----------------------------------------------------


@pytest.mark.parametrize("variant", ["new-message-seq", "same-seq-other-verify-data"])
def test_s10_different_finished_after_completion_not_a_retransmission(
    pki: Pki, variant: str
) -> None:
    c, srv, _ = complete(pki)
    fin_seq = c.next_msg_seq - 1
    if variant == "new-message-seq":
        fin2 = c.finished()
    else:
        fin2 = c.finished(tamper=True, seq=fin_seq)
    before = drops(srv.assoc)
    out = srv.send(c.hs(fin2, epoch=1))
    types = record_types(out)
    assert CCS not in types and HS not in types, "server resent its flight for a new Finished"
    c.absorb(out)
    # Ignoring it keeps the association; aborting sends a fatal alert. Nothing else.
    if srv.assoc.is_closed:
        assert c.alerts and c.alerts[-1][1] == AlertLevel.fatal
    else:
        assert srv.assoc.is_established and out == []
        # Counted as a message not legal after completion, or as a stale message_seq.
        reason = "unexpected" if variant == "new-message-seq" else "stale_handshake"
        assert_only(before, drops(srv.assoc), **{reason: 1})
        assert srv.send(c.app_record(b"after")) == [] and srv.app[-1] == b"after"


def test_s10_exact_retransmission_makes_server_resend_its_last_flight(pki: Pki) -> None:
    """Control for S10: the peer's last flight repeated (RFC 6347 §4.2.4)."""
    c, srv, sent = complete(pki)
    *msgs, fin = sent
    out = srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1))
    types = record_types(out)
    assert CCS in types, "server did not resend CCS+Finished for an exact retransmission"
    assert srv.assoc.is_established and srv.assoc.stats.retransmissions >= 1


# --- a stalled handshake must not keep server state forever ----------------------------


@pytest.mark.parametrize("sent", ["nothing", "key-exchange-only", "bad-finished"])
def test_b3_3_stalled_handshake_server_state_expires(pki: Pki, sent: str) -> None:
    """security.md B3.3 (bounded state) and RFC 6347 §4.2.4 (the server stays in
    WAITING, timer running, until the client's whole flight has arrived): a client that
    stops after part of its flight, or whose Finished never verifies, must not pin an
    association in ``endpoint.associations`` forever."""
    c, srv = to_flight4(pki)
    if sent != "nothing":
        msgs, fin = flight5(c)
        datagram = c.hs(*msgs)
        if sent == "bad-finished":
            c.write = RecordProtection(c.info, bytes(c.info.key_len), bytes(c.info.fixed_iv_len))
            datagram += c.ccs() + c.hs(fin, epoch=1)
        srv.send(datagram)
    assert not srv.assoc.is_established
    srv.advance(2000.0)  # far past the give-up horizon (10 retransmissions, 60 s cap)
    assert srv.assoc.is_closed, (
        f"after {sent}: association still open after 2000 s, timer={srv.assoc.get_timer()}")
    (closed,) = [e for e in srv.events if isinstance(e, AssociationClosed)]
    assert closed.local


# --- S12 / S13: the cookie exchange --------------------------------------------------------


@pytest.mark.parametrize("change", ["cipher-list", "random", "client-port", "none"])
def test_s12_cookie_binds_hello_parameters(pki: Pki, change: str) -> None:
    psk_aes = int(MODES["psk-aes128"].suite)
    ecdhe_psk = int(MODES["ecdhe-psk-chacha"].suite)
    srv = ServerUnderTest(configs_for("psk-aes128", pki,
                                      cipher_suites=(psk_aes, ecdhe_psk))[1])
    c = make_client(pki, "psk-aes128")
    c.absorb(srv.send(c.hs(c.client_hello())))
    assert c.cookie
    addr = CLIENT_ADDR
    kw: dict[str, Any] = {}
    if change == "cipher-list":
        kw["suites"] = (psk_aes, ecdhe_psk)  # both acceptable, but not what the cookie saw
    elif change == "random":
        kw["random_"] = bytes(32)
    elif change == "client-port":
        addr = (CLIENT_ADDR[0], CLIENT_ADDR[1] + 1)
    out = srv.send(c.hs(c.client_hello(**kw)), addr=addr)
    records = [r for d in out for r in parse_datagram(d)[0]]
    hs_types = [r.fragment[0] for r in records if r.content_type == HS]
    if change == "none":
        assert HandshakeType.server_hello in hs_types and len(srv.endpoint.associations) == 1
    else:
        assert hs_types == [HandshakeType.hello_verify_request], hs_types
        assert len(records) == 1 and not srv.endpoint.associations
        assert srv.endpoint.stats.hello_verify_sent == 2
        assert srv.endpoint.stats.cookie_accepted == 0


def test_s13_hvr_small_stateless_and_never_retransmitted(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("ecdhe-ecdsa-aes128", pki)[1])
    c = make_client(pki, "ecdhe-ecdsa-aes128")
    ch = c.record(HS, c.client_hello(), 0, seq=5)
    out = srv.send(ch)
    assert len(out) == 1 and len(out[0]) <= len(ch)
    (rec,), garbage = parse_datagram(out[0])
    assert not garbage and rec.content_type == HS and rec.epoch == 0
    assert rec.fragment[0] == HandshakeType.hello_verify_request
    # RFC 6347 §4.2.4 / protocol.md: the HVR reuses the ClientHello's record sequence number.
    assert rec.seq == 5
    assert len(srv.endpoint.associations) == 0
    assert srv.endpoint.get_timer() is None
    assert srv.advance(120.0) == []
    # One HVR per ClientHello, each as small; a wrong cookie is answered the same way.
    for cookie in (b"", bytes(32), b"\xff" * 255):
        ch = c.hs(encode_handshake(HandshakeType.client_hello, 0, c.hello_body(cookie=cookie)))
        out = srv.send(ch)
        assert len(out) == 1 and len(out[0]) <= len(ch)
        assert len(srv.endpoint.associations) == 0


def test_a_datagram_of_thousands_of_records_costs_a_bounded_number(pki: Pki) -> None:
    """The stateless gate reads only the first record of a datagram from a new source,
    and an association at most MAX_RECORDS_PER_DATAGRAM: 5 000 empty records cost one
    record's parse (the gate) or 32 (an association), the rest is counted garbage."""
    srv = ServerUnderTest(configs_for("ecdhe-ecdsa-aes128", pki)[1])
    c = make_client(pki, "ecdhe-ecdsa-aes128")
    ch = c.record(HS, c.client_hello(), 0, seq=5)
    out = srv.send(ch + encode_record(HS, 0, 6, b"") * 5000)  # a ClientHello first: answered
    assert len(out) == 1 and parse_datagram(out[0])[0][0].fragment[0] == (
        HandshakeType.hello_verify_request)
    c, srv, _ = complete(pki)
    before = drops(srv.assoc)
    flood = b"".join(c.app_record(b"p%d" % i, seq=10 + i) for i in range(40))
    assert srv.send(flood) == []
    assert srv.app[-MAX_RECORDS_PER_DATAGRAM:] == [b"p%d" % i
                                                   for i in range(MAX_RECORDS_PER_DATAGRAM)]
    assert b"p32" not in srv.app
    assert_only(before, drops(srv.assoc), malformed=1)


# --- S14: nothing after close_notify ---------------------------------------------------------


def test_s14_nothing_processed_after_close_notify_received(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    assoc = srv.assoc
    srv.send(c.alert_record(AlertLevel.warning, AlertDescription.close_notify))
    assert assoc.is_closed and not assoc.is_established
    closed = [e for e in srv.events if isinstance(e, AssociationClosed)]
    assert len(closed) == 1 and not closed[0].local
    assert any(isinstance(e, AlertReceived) and e.description == 0 for e in srv.events)
    n_events = len(srv.events)
    out = srv.send(c.app_record(b"late"), c.hs(c.finished(), epoch=1))
    assert out == [] and srv.app == [] and len(srv.events) == n_events
    assert assoc.is_closed


def test_close_notify_answered_with_close_notify(pki: Pki) -> None:
    """RFC 5246 §7.2.1: the other party MUST respond with a close_notify of its own
    (unless it already sent a fatal alert) and close down immediately."""
    c, srv, _ = complete(pki)
    out = srv.send(c.alert_record(AlertLevel.warning, AlertDescription.close_notify))
    c.absorb(out)
    assert srv.assoc.is_closed
    assert (1, AlertLevel.warning, AlertDescription.close_notify) in c.alerts, out


def test_s14_nothing_processed_after_local_close(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    assoc = srv.assoc
    assoc.close(srv.clock.now)
    out = assoc.datagrams_to_send(srv.clock.now)
    c.absorb(out)
    assert c.alerts == [(1, AlertLevel.warning, AlertDescription.close_notify)]
    assert assoc.is_closed
    out = srv.send(c.app_record(b"late"))
    assert out == [] and srv.app == []


# --- S15: CCS before ServerHello ----------------------------------------------------------


def test_s15_ccs_before_hello_dropped_without_state(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("ecdhe-ecdsa-aes128", pki)[1])
    assert srv.send(encode_record(CCS, 0, 0, b"\x01")) == []
    assert srv.send(encode_record(CCS, 1, 0, b"\x01")) == []
    assert not srv.endpoint.associations


def test_s15_b3_9_ccs_before_key_exchange_does_not_switch_keys(pki: Pki) -> None:
    """CVE-2014-0224 shape: CCS right after the server's flight, before the CKE."""
    c, srv = to_flight4(pki, "ecdhe-ecdsa-aes128")
    before = drops(srv.assoc)
    out = srv.send(c.ccs())
    assert not srv.assoc.is_established
    if srv.assoc.is_closed:  # an abort with unexpected_message is allowed
        c.absorb(out)
        assert c.alerts and c.alerts[-1][2] == AlertDescription.unexpected_message
        return
    assert out == []
    assert_only(before, drops(srv.assoc), unexpected=1)
    msgs, fin = flight5(c)
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok


def test_s15_client_drops_ccs_before_server_hello(pki: Pki) -> None:
    cfg, _s = configs_for("ecdhe-ecdsa-aes128", pki)
    client = Association(cfg)
    clock = FakeClock()
    client.connect(clock.now, clock.wall)
    ch = client.datagrams_to_send(clock.now)
    assert ch
    before = drops(client)
    for rec in (encode_record(CCS, 0, 0, b"\x01"), encode_record(CCS, 1, 0, b"\x01"),
                encode_record(APP, 0, 1, b"hi"), encode_record(HS, 1, 0, bytes(30))):
        assert client.receive_datagram(rec, clock.now, clock.wall) == []
    assert not client.is_closed and not client.is_established
    assert client.datagrams_to_send(clock.now) == []
    after = drops(client)
    # The plaintext CCS and the epoch-0 application data are dropped and counted.  The
    # two epoch-1 records may be kept (bounded) in case they are a resumed server's
    # CCS-protected Finished that overtook its ServerHello; they are counted only
    # when they fail to authenticate later.
    assert after["unexpected"] - before["unexpected"] == 1
    assert after["early_data"] - before["early_data"] == 1
    # Still waiting: its timer retransmits the ClientHello.
    timer = client.get_timer()
    assert timer is not None
    client.handle_timer(timer)
    assert client.datagrams_to_send(timer)


# --- replay window (RFC 6347 §4.1.2.6, CVE-2016-2181) -------------------------------------


def test_b3_5_b5_replayed_record_dropped_and_forged_huge_seq_does_not_move_window(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    recs = [c.app_record(b"p%d" % i, seq=i) for i in range(1, 6)]
    assert srv.send(*recs) == [] and srv.app == [b"p1", b"p2", b"p3", b"p4", b"p5"]
    before = drops(srv.assoc)
    assert srv.send(recs[2]) == [] and srv.app[-1] == b"p5" and len(srv.app) == 5
    assert_only(before, drops(srv.assoc), replay=1)
    # CVE-2016-2181: an unauthenticated record with seq 2^48-1 must not move the window.
    forged = encode_record(APP, 1, MAX_SEQ, bytes(8) + b"\x00" * 40)
    before = drops(srv.assoc)
    assert srv.send(forged) == []
    assert_only(before, drops(srv.assoc), bad_mac=1)
    assert srv.send(c.app_record(b"p6", seq=6)) == [] and srv.app[-1] == b"p6"
    # Far ahead moves the window; then a record left of it is a replay drop.
    assert srv.send(c.app_record(b"p200", seq=200)) == [] and srv.app[-1] == b"p200"
    before = drops(srv.assoc)
    srv.send(c.app_record(b"p7", seq=7))
    assert srv.app[-1] == b"p200"
    assert_only(before, drops(srv.assoc), replay=1)


def test_b3_5_authenticated_record_at_the_last_sequence_number_is_cheap(pki: Pki) -> None:
    # The peer picks the 48-bit sequence number: a genuine record at 2^48 - 1 once made
    # the window shift by the jump (a 2^48-bit int: MemoryError, the daemon down for
    # every peer).  Both paths: one record (the fast path), two in one datagram (slow).
    c, srv, _ = complete(pki)
    assert srv.send(c.app_record(b"p1", seq=1)) == []
    assert srv.send(c.app_record(b"far", seq=MAX_SEQ)) == []
    assert srv.app == [b"p1", b"far"] and srv.assoc.is_established
    c, srv, _ = complete(pki)
    assert srv.send(c.app_record(b"p1", seq=1)) == []
    assert srv.send(c.app_record(b"p2", seq=MAX_SEQ - 1)
                    + c.app_record(b"p3", seq=MAX_SEQ)) == []
    assert srv.app == [b"p1", b"p2", b"p3"]
    before = drops(srv.assoc)
    srv.send(c.app_record(b"p1", seq=1))
    assert_only(before, drops(srv.assoc), replay=1)


def test_b5_bad_aead_tag_silent_drop_connection_survives(pki: Pki) -> None:
    c, srv, _ = complete(pki, "ecdhe-psk-chacha")
    good = c.app_record(b"genuine")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    before = drops(srv.assoc)
    assert srv.send(bad) == [] and srv.app == []
    assert_only(before, drops(srv.assoc), bad_mac=1)
    assert srv.assoc.is_established and not srv.assoc.is_closed
    # The genuine record with the same sequence number still gets through.
    assert srv.send(good) == [] and srv.app == [b"genuine"]


def test_b5_record_longer_than_max_ciphertext_dropped(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    huge_len = MAX_CIPHERTEXT + 1
    oversized = struct.pack("!BHQH", APP, DTLS_1_2, 1 << 48 | 50, huge_len) + bytes(huge_len)
    before = drops(srv.assoc)
    assert srv.send(c.app_record(b"first", seq=40) + oversized) == []
    assert srv.app == [b"first"]
    assert_only(before, drops(srv.assoc), malformed=1)
    before = drops(srv.assoc)
    assert srv.send(oversized) == []
    assert_only(before, drops(srv.assoc), malformed=1)
    assert srv.assoc.is_established


# --- CVE-2014-0195: fragment overrun --------------------------------------------------------


def _raw_fragment(msg_type: int, length: int, seq: int, offset: int, body: bytes) -> bytes:
    return (struct.pack("!B", msg_type) + length.to_bytes(3, "big") + struct.pack("!H", seq)
            + offset.to_bytes(3, "big") + len(body).to_bytes(3, "big") + body)


def test_b3_1_b3_2_fragment_overrun_and_mismatched_length_dropped(pki: Pki) -> None:
    # Before any association: a ClientHello fragment overrunning its message gets no HVR.
    srv0 = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    assert srv0.send(encode_record(HS, 0, 0, _raw_fragment(1, 20, 0, 10, bytes(50)))) == []
    assert not srv0.endpoint.associations

    c, srv = to_flight4(pki)
    cke_seq = c.next_msg_seq
    before = drops(srv.assoc)
    out = srv.send(c.record(HS, _raw_fragment(16, 20, cke_seq, 10, bytes(50)), 0))
    assert out == [] and not srv.assoc.is_closed
    assert_only(before, drops(srv.assoc), malformed=1)
    # Fragments of one future message_seq that disagree on the message length
    # (GnuTLS #1839 / CVE-2014-0195 lesson): the second is not merged.
    out = srv.send(c.record(HS, _raw_fragment(16, 100, cke_seq + 4, 0, bytes(10)), 0))
    assert out == [] and not srv.assoc.is_closed  # a future message: buffered (bounded)
    before = drops(srv.assoc)
    out = srv.send(c.record(HS, _raw_fragment(16, 5000, cke_seq + 4, 10, bytes(10)), 0))
    assert out == [] and not srv.assoc.is_closed
    assert_only(before, drops(srv.assoc), malformed=1)
    msgs, fin = flight5(c)
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok


def test_b3_3_disjoint_fragment_flood_capped_handshake_completes(pki: Pki) -> None:
    # The audit's flood after the cookie: 1-byte fragments at every other offset of one
    # 64 KiB message (it froze the event loop: each rebuilt the whole interval list).
    # MAX_FRAGMENT_GAPS of them are kept, the rest dropped as buffer_full, and the real
    # flight still completes the handshake (the junk message_seq is cleared at the CCS).
    c, srv = to_flight4(pki)
    seq = c.next_msg_seq + 1
    n = 3000
    frags = [_raw_fragment(16, MAX_HANDSHAKE_MESSAGE, seq, 1 + 2 * i, b"x") for i in range(n)]
    before = drops(srv.assoc)
    for k in range(0, n, 100):
        assert srv.send(c.record(HS, b"".join(frags[k:k + 100]), 0)) == []
    assert not srv.assoc.is_closed
    assert_only(before, drops(srv.assoc), buffer_full=n - MAX_FRAGMENT_GAPS)
    msgs, fin = flight5(c)
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok


# --- S2 / S3: client authentication required ----------------------------------------------


@pytest.mark.parametrize("variant", [
    "no-certificate", "empty-certificate", "certificate-without-verify", "bad-verify",
])
def test_s2_s3_b3_7_client_auth_required(pki: Pki, variant: str) -> None:
    c, srv = to_flight4(pki, "mutual-ecdsa")
    assert c.certificate_requested
    cert = {"no-certificate": None, "empty-certificate": "empty"}.get(variant, "valid")
    verify = {"certificate-without-verify": "none", "bad-verify": "bad"}.get(variant, "good")
    msgs, fin = flight5(c, certificate=cert, verify=verify)
    out = srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1))
    c.absorb(out)
    assert not srv.completed() and not srv.assoc.is_established
    assert srv.assoc.is_closed, "handshake not aborted"
    closed = [e for e in srv.events if isinstance(e, AssociationClosed)]
    assert len(closed) == 1 and closed[0].local
    assert c.alerts, "no alert sent"
    _epoch, level, desc = c.alerts[-1]
    assert level == AlertLevel.fatal
    allowed = {
        "no-certificate": {40, 116, 10},
        "empty-certificate": {40, 116},
        "certificate-without-verify": {10, 40},
        "bad-verify": {51},
    }[variant]
    assert desc in allowed, f"alert {desc}"
    assert closed[0].alert == desc
    assert srv.send(c.app_record(b"x")) == [] and srv.app == []
