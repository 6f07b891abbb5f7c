"""The Heartbleed battery and the RFC 6520 receiver rules (security.md B2).

The target is a real server ``Association`` behind a ``ServerEndpoint``.  The
peer is ``HeartbeatClient``: the scripted client of test_security_handshake.py
(every message and record chosen by the test, sealed with the keys it derived
itself) plus the heartbeat extension in its ClientHello, with a mode of the
test's choosing.  Heartbeat messages are built byte by byte (the codec under
test is not used to build the attacks) and sealed as epoch-1 records, so each
case reaches ``_handle_heartbeat`` exactly as a malicious peer's record would.

Every case asserts what was answered (nothing, or one epoch-1 HeartbeatResponse
whose plaintext is checked byte for byte: type 2, the request's payload_length
and payload, exactly 16 bytes of padding), which drop counter moved (and that no
other one did), and that the association is still established and answers a
valid request afterwards.  The cases follow tlsfuzzer's test-heartbeat.py,
adapted to DTLS:

* valid request → exact payload + 16-byte padding; empty payload answered;
* payload_length fuzzed to 0xFFFF, 0x00FF, 29–32, 64, 0x0100, 0x3FFC–0x3FFE,
  0x4000 (16 real payload bytes, 16 of padding), and the original Heartbleed
  shapes ``01 40 00`` / ``01 40 00 41`` / ``01 FF FF`` + padding → dropped,
  ``heartbeat_malformed``;
* padding of 0–15 bytes → dropped (``heartbeat_malformed``); 17 … 2^14−19
  (the largest that fits 2^14) → answered with 16 bytes of padding; a message
  over 2^14 → dropped;
* types 0, 3, 255 → ``heartbeat_dropped``; an unsolicited response →
  ``heartbeat_unexpected``;
* a heartbeat in epoch 0 (after the handshake → ``unknown_epoch``; during it →
  ``heartbeat_dropped``) or in epoch 1 between the CCS and Finished →
  dropped, and the handshake still completes;
* an unknown heartbeat mode (0, 3, 255) in the extension → fatal
  illegal_parameter at the handshake, both ways (the client's side with a
  ServerHello rewritten on the path);
* a client that said peer_not_allowed_to_send is never sent a request (and
  its own requests are answered); a server with heartbeats off answers nothing.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from dtlsvpn.dtls.events import AlertReceived, AssociationClosed, HandshakeCompleted
from dtlsvpn.wire.constants import AlertDescription, AlertLevel, ExtensionType, HandshakeType
from dtlsvpn.wire.extensions import Extension
from dtlsvpn.wire.handshake import (
    decode_client_hello,
    decode_server_hello,
    encode_client_hello,
    encode_server_hello,
)
from dtlsvpn.wire.record import parse_datagram
from tests.pki import Pki
from tests.sim.configs import MODES, PSK, PSK_IDENTITY, configs_for
from tests.sim.harness import Simulator
from tests.sim.link import SimLink
from tests.sim.records import rewrite_handshake
from tests.sim.scripted import (
    ScriptedClient,
    ServerUnderTest,
    assert_only,
    drops,
)

pytestmark = pytest.mark.sim

HB = 24
REQUEST, RESPONSE = 1, 2
ALLOWED, NOT_ALLOWED = 1, 2
ILLEGAL_PARAMETER = int(AlertDescription.illegal_parameter)
MAX_HB = 2**14


# --- the peer ----------------------------------------------------------------------------


class HeartbeatClient(ScriptedClient):
    """The scripted client, offering the heartbeat extension with ``hb_mode`` (None: not at all)."""

    def __init__(self, *args: Any, hb_mode: int | None = ALLOWED, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hb_mode = hb_mode

    def hello_body(
        self,
        cookie: bytes | None = None,
        suites: tuple[int, ...] | None = None,
        random_: bytes | None = None,
    ) -> bytes:
        body = super().hello_body(cookie=cookie, suites=suites, random_=random_)
        if self.hb_mode is None:
            return body
        ch = decode_client_hello(body)
        exts = (*ch.extensions, Extension(ExtensionType.heartbeat, bytes([self.hb_mode])))
        return encode_client_hello(dataclasses.replace(ch, extensions=exts))

    def heartbeat(self, body: bytes, epoch: int = 1) -> bytes:
        """One heartbeat record (sealed in epoch 1) carrying ``body`` as is."""
        return self.record(HB, body, epoch)

    def heartbeats_in(self, datagrams: Iterable[bytes]) -> list[bytes]:
        """Plaintexts of the heartbeat records in ``datagrams`` (all must be epoch 1, authentic)."""
        out = []
        for d in datagrams:
            for rec in parse_datagram(d)[0]:
                if rec.content_type != HB:
                    continue
                assert rec.epoch == 1, "heartbeat outside epoch 1"
                assert self.read is not None
                plain = self.read.open(1 << 48 | rec.seq, HB, rec.fragment)
                assert plain is not None, "heartbeat record does not authenticate"
                out.append(plain)
        return out


def hb_body(payload: bytes, padding: int = 16, *, msg_type: int = REQUEST,
            payload_length: int | None = None) -> bytes:
    """type | payload_length | payload | padding, built by hand (RFC 6520 §4)."""
    pl = len(payload) if payload_length is None else payload_length
    return bytes([msg_type]) + pl.to_bytes(2, "big") + payload + random.Random(pl).randbytes(padding)


def start(pki: Pki, mode: str = "psk-aes128", *, hb_mode: int | None = ALLOWED,
          **server_overrides: Any) -> tuple[HeartbeatClient, ServerUnderTest]:
    """CH -> HVR -> CH(cookie) -> the server's flight 4, absorbed."""
    _c, s_cfg = configs_for(mode, pki, **server_overrides)
    srv = ServerUnderTest(s_cfg)
    m = MODES[mode]
    c = HeartbeatClient(m.suite, psk=PSK if m.psk else None,
                        psk_identity=PSK_IDENTITY if m.psk else None, hb_mode=hb_mode)
    c.absorb(srv.send(c.hs(c.client_hello())))
    assert c.cookie
    return c, srv


def established(pki: Pki, mode: str = "psk-aes128", *, hb_mode: int | None = ALLOWED,
                **server_overrides: Any) -> tuple[HeartbeatClient, ServerUnderTest]:
    c, srv = start(pki, mode, hb_mode=hb_mode, **server_overrides)
    c.absorb(srv.send(c.hs(c.client_hello())))
    assert c.server_hello_done
    msgs = c.key_exchange()
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(c.finished(), epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok
    return c, srv


def check_response(plain: bytes, payload: bytes) -> None:
    """RFC 6520 §4: type 2, the same payload_length and payload, exactly 16 bytes padding."""
    assert plain[0] == RESPONSE
    assert int.from_bytes(plain[1:3], "big") == len(payload)
    assert plain[3:3 + len(payload)] == payload
    assert len(plain) == 3 + len(payload) + 16, f"padding {len(plain) - 3 - len(payload)}"


def assert_still_alive(c: HeartbeatClient, srv: ServerUnderTest) -> None:
    """The association survived: a valid request is answered and data flows."""
    assert srv.assoc.is_established and not srv.assoc.is_closed
    payload = b"still alive?"
    (plain,) = c.heartbeats_in(srv.send(c.heartbeat(hb_body(payload))))
    check_response(plain, payload)
    assert srv.send(c.app_record(b"data")) == [] and srv.app[-1] == b"data"


def send_dropped(c: HeartbeatClient, srv: ServerUnderTest, body: bytes, **moved: int) -> None:
    """``body`` in one epoch-1 heartbeat record: no reply, exactly ``moved`` counters moved."""
    before = drops(srv.assoc)
    answered = srv.assoc.stats.heartbeat_answered
    assert srv.send(c.heartbeat(body)) == []
    assert_only(before, drops(srv.assoc), **moved)
    assert srv.assoc.stats.heartbeat_answered == answered
    assert_still_alive(c, srv)


# --- well-formed requests -----------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 1, 100, 1000, MAX_HB - 3 - 16])
@pytest.mark.parametrize("mode", ["psk-aes128", "ecdhe-ecdsa-chacha"])
def test_b2_valid_request_answered_with_exact_payload_and_16_bytes_padding(
    pki: Pki, mode: str, size: int
) -> None:
    c, srv = established(pki, mode)
    payload = random.Random(size).randbytes(size)
    before = drops(srv.assoc)
    out = srv.send(c.heartbeat(hb_body(payload)))
    (plain,) = c.heartbeats_in(out)
    check_response(plain, payload)
    assert_only(before, drops(srv.assoc), heartbeat_answered=1)


def test_b2_empty_payload_answered(pki: Pki) -> None:
    c, srv = established(pki)
    (plain,) = c.heartbeats_in(srv.send(c.heartbeat(hb_body(b""))))
    check_response(plain, b"")
    assert plain == b"\x02\x00\x00" + plain[3:] and len(plain) == 19


def test_b2_response_padding_is_fresh(pki: Pki) -> None:
    """RFC 6520 §4: the padding is the sender's own random bytes, never an echo."""
    c, srv = established(pki)
    paddings = set()
    for _ in range(3):
        request = hb_body(b"p" * 16, 16)
        (plain,) = c.heartbeats_in(srv.send(c.heartbeat(request)))
        assert plain[19:] != request[19:]
        paddings.add(plain[19:])
    assert len(paddings) == 3


@pytest.mark.parametrize("padding", [17, 255, 1000, MAX_HB - 3 - 16])
def test_b2_large_padding_answered_with_16_bytes_padding(pki: Pki, padding: int) -> None:
    c, srv = established(pki)
    payload = b"large padding" + bytes(3)
    (plain,) = c.heartbeats_in(srv.send(c.heartbeat(hb_body(payload, padding))))
    check_response(plain, payload)


# --- Heartbleed: payload_length larger than what is there ----------------------------------

FUZZED_LENGTHS = [0xFFFF, 0x00FF, 29, 30, 31, 32, 64, 0x0100, 0x3FFC, 0x3FFD, 0x3FFE, 0x4000]


@pytest.mark.parametrize("payload_length", FUZZED_LENGTHS, ids=lambda v: f"{v:#06x}")
def test_b2_fuzzed_payload_length_dropped_silently(pki: Pki, payload_length: int) -> None:
    c, srv = established(pki)
    body = hb_body(b"A" * 16, 16, payload_length=payload_length)
    assert len(body) == 35
    send_dropped(c, srv, body, heartbeat_malformed=1)


@pytest.mark.parametrize("body", [
    b"\x01\x40\x00",  # security.md B2: type=request, payload_length=16384, nothing after
    b"\x01\x40\x00\x41",
    b"\x01\xff\xff" + bytes(16),
    b"\x01\x00\x11" + bytes(32),  # one byte too long for 16 of padding
    b"\x01",
    b"",
], ids=["4000-empty", "4000-one-byte", "ffff-padding-only", "17-in-35", "type-only", "empty"])
def test_b2_heartbleed_shapes_dropped_silently(pki: Pki, body: bytes) -> None:
    c, srv = established(pki)
    send_dropped(c, srv, body, heartbeat_malformed=1)


@pytest.mark.parametrize("padding", range(16))
def test_b2_padding_below_16_dropped(pki: Pki, padding: int) -> None:
    c, srv = established(pki)
    send_dropped(c, srv, hb_body(b"B" * 16, padding), heartbeat_malformed=1)


def test_b2_message_over_2_to_the_14_dropped(pki: Pki) -> None:
    """RFC 6520 §4: the total length MUST NOT exceed 2^14 (DTLS: drop, no alert)."""
    c, srv = established(pki)
    body = hb_body(b"C" * 16, MAX_HB - 3 - 16 + 1)
    assert len(body) == MAX_HB + 1
    send_dropped(c, srv, body, heartbeat_malformed=1)


# --- types, responses, epochs -----------------------------------------------------------------


@pytest.mark.parametrize("msg_type", [0, 3, 4, 127, 255])
def test_b2_unknown_type_dropped(pki: Pki, msg_type: int) -> None:
    c, srv = established(pki)
    send_dropped(c, srv, hb_body(b"D" * 16, msg_type=msg_type), heartbeat_dropped=1)


@pytest.mark.parametrize("payload", [b"", b"E" * 16, b"E" * 1000])
def test_b2_unsolicited_response_dropped(pki: Pki, payload: bytes) -> None:
    c, srv = established(pki)
    send_dropped(c, srv, hb_body(payload, msg_type=RESPONSE), heartbeat_unexpected=1)


def test_b2_heartbeat_in_epoch_0_after_handshake_dropped(pki: Pki) -> None:
    """Unprotected: security.md S8, silently discarded as an epoch without keys."""
    c, srv = established(pki)
    before = drops(srv.assoc)
    assert srv.send(c.heartbeat(hb_body(b"F" * 16), epoch=0)) == []
    assert_only(before, drops(srv.assoc), unknown_epoch=1)
    assert srv.assoc.stats.heartbeat_answered == 0
    assert_still_alive(c, srv)


def test_b2_heartbeats_during_the_handshake_dropped(pki: Pki) -> None:
    """RFC 6520 §3: nothing during a handshake: an epoch-0 request while the server
    waits for the key exchange, an epoch-1 request between CCS and Finished."""
    c, srv = start(pki)
    c.absorb(srv.send(c.hs(c.client_hello())))
    assert c.server_hello_done and not srv.assoc.is_established
    assert srv.send(c.heartbeat(hb_body(b"G" * 16), epoch=0)) == []
    assert srv.assoc.stats.heartbeat_dropped == 1
    msgs = c.key_exchange()
    assert srv.send(c.hs(*msgs) + c.ccs()) == []
    assert srv.send(c.heartbeat(hb_body(b"H" * 16))) == []  # epoch 1, before Finished
    assert srv.assoc.stats.heartbeat_dropped == 2 and srv.assoc.stats.heartbeat_answered == 0
    assert not srv.assoc.is_established
    c.absorb(srv.send(c.hs(c.finished(), epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok
    assert_still_alive(c, srv)


# --- the extension ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0, 3, 255])
def test_b2_unknown_mode_from_client_is_illegal_parameter(pki: Pki, mode: int) -> None:
    c, srv = start(pki, hb_mode=mode)
    c.absorb(srv.send(c.hs(c.client_hello())))
    assert c.alerts == [(0, AlertLevel.fatal, ILLEGAL_PARAMETER)]
    assert srv.assoc.is_closed and not srv.completed()
    closed = [e for e in srv.events if isinstance(e, AssociationClosed)]
    assert len(closed) == 1 and closed[0].local and closed[0].alert == ILLEGAL_PARAMETER


def _server_hello_heartbeat_mode(mode: int) -> Callable[[bytes], bytes]:
    def edit(body: bytes) -> bytes:
        sh = decode_server_hello(body)
        assert sh.ext(ExtensionType.heartbeat) is not None, "no heartbeat extension to rewrite"
        exts = tuple(Extension(e.type, bytes([mode])) if e.type == ExtensionType.heartbeat
                     else e for e in sh.extensions)
        return encode_server_hello(dataclasses.replace(sh, extensions=exts))

    return lambda data: rewrite_handshake(data, HandshakeType.server_hello, edit)


@pytest.mark.parametrize("mode", [0, 3, 255])
def test_b2_unknown_mode_from_server_is_illegal_parameter(pki: Pki, mode: int) -> None:
    """Our client, with the server's heartbeat mode rewritten on the path."""
    c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    sim = Simulator(c, s, s2c=SimLink(random.Random(1), tamper=_server_hello_heartbeat_mode(mode)))
    sim.connect()
    trace = sim.run_until(lambda: sim.client.is_closed, 5.0)
    assert trace.satisfied, trace.format()
    closed = [e for _, e in trace.client_events if isinstance(e, AssociationClosed)]
    assert len(closed) == 1 and closed[0].local and closed[0].alert == ILLEGAL_PARAMETER
    assert sim.completed("client") is None
    sim.run_for(1.0)
    alerts = [e for _, e in sim.server_events if isinstance(e, AlertReceived)]
    assert [(a.level, a.description) for a in alerts] == [(AlertLevel.fatal, ILLEGAL_PARAMETER)]
    assert sim.completed("server") is None


def test_b2_control_untampered_server_hello_completes(pki: Pki) -> None:
    """The rewrite with the mode we already send (1) changes no byte: the handshake completes."""
    c, s = configs_for("ecdhe-ecdsa-aes128", pki)
    sim = Simulator(c, s, s2c=SimLink(random.Random(1), tamper=_server_hello_heartbeat_mode(1)))
    assert sim.handshake(5.0).satisfied


def test_b2_peer_not_allowed_to_send_is_never_sent_a_request(pki: Pki) -> None:
    """RFC 6520 §2: the client said peer_not_allowed_to_send; the server, idle for a
    minute, sends it no request and no probe, and still answers the client's own."""
    c, srv = established(pki, hb_mode=NOT_ALLOWED)
    (done,) = [e for e in srv.events if isinstance(e, HandshakeCompleted)]
    assert done.heartbeat is False
    out = srv.advance(60.0)
    assert [r for d in out for r in parse_datagram(d)[0] if r.content_type == HB] == []
    assert srv.assoc.stats.heartbeats_sent == 0 and srv.assoc.stats.probes_sent == 0
    payload = b"may I?"
    (plain,) = c.heartbeats_in(srv.send(c.heartbeat(hb_body(payload))))
    check_response(plain, payload)


def test_b2_server_with_heartbeats_off_answers_nothing(pki: Pki) -> None:
    """The client offers the extension, the server (heartbeat=False) does not accept it:
    a request is dropped (RFC 6520 §2 SHOULD), never answered."""
    c, srv = established(pki, heartbeat=False)
    (done,) = [e for e in srv.events if isinstance(e, HandshakeCompleted)]
    assert done.heartbeat is False
    before = drops(srv.assoc)
    assert srv.send(c.heartbeat(hb_body(b"I" * 16))) == []
    assert_only(before, drops(srv.assoc), heartbeat_dropped=1)
    out = srv.advance(60.0)
    assert [r for d in out for r in parse_datagram(d)[0] if r.content_type == HB] == []
    assert srv.assoc.stats.heartbeats_sent == 0 and srv.assoc.stats.probes_sent == 0


def test_b2_requests_beyond_the_reply_rate_are_dropped(pki: Pki) -> None:
    """A peer may probe, not flood: 64 answers a second, the rest dropped and counted."""
    c, srv = established(pki)
    answered = srv.assoc.stats.heartbeat_answered
    replies = srv.send(*(c.heartbeat(hb_body(b"flood-%d" % i)) for i in range(100)))
    assert len(c.heartbeats_in(replies)) == 64
    assert srv.assoc.stats.heartbeat_answered - answered == 64
    assert srv.assoc.stats.heartbeat_dropped == 36
    srv.clock.advance(1.0)
    assert_still_alive(c, srv)
