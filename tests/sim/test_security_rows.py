"""The remaining rows of security.md B1: S4, S5, S11, S16 and S17, in both roles.

Server role: :class:`ScriptedClient` builds each client message with our own
``wire`` codecs and the test chooses its order, message_seq and epoch.  Client
role: a real ``ServerEndpoint`` answers a real client ``Association`` up to its
flight 4; the test takes that flight apart into messages and re-scripts it
(reordered, repeated, re-numbered, altered) before the client sees it.

Each case asserts what was answered (which alert, or silence), which drop
counter moved, whether the association's keys and state stayed as they were,
and that no application data reached the tunnel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted
from dtlsvpn.dtls.handshake_input import RENEGOTIATION_ALERT_INTERVAL
from dtlsvpn.wire.alert import decode_alert
from dtlsvpn.wire.constants import AlertDescription, AlertLevel, HandshakeType, SignatureScheme
from dtlsvpn.wire.handshake import (
    CertificateRequest,
    decode_certificate,
    decode_certificate_request,
    encode_certificate_request,
    encode_handshake,
    parse_handshake_fragments,
)
from dtlsvpn.wire.record import Record, encode_record, parse_datagram
from tests.pki import Pki
from tests.sim.clock import FakeClock
from tests.sim.configs import configs_for
from tests.sim.harness import CLIENT_ADDR
from tests.sim.scripted import (
    ALERT,
    APP,
    CCS,
    HS,
    ScriptedClient,
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

UNEXPECTED = int(AlertDescription.unexpected_message)
INTERNAL = int(AlertDescription.internal_error)
FATAL = int(AlertLevel.fatal)
T = HandshakeType


def renumber(messages: list[bytes], first_seq: int) -> list[bytes]:
    """The same handshake messages with message_seq first_seq, first_seq+1, …"""
    out = []
    for i, m in enumerate(messages):
        (frag,) = parse_handshake_fragments(m)
        out.append(encode_handshake(frag.msg_type, first_seq + i, frag.body))
    return out


def assert_aborted(c: ScriptedClient, srv: ServerUnderTest, out: list[bytes],
                   desc: int = UNEXPECTED) -> None:
    """The server sent exactly one fatal alert ``desc`` and closed; nothing completed."""
    c.absorb(out)
    assert srv.assoc.is_closed and not srv.completed() and not srv.assoc.is_established
    assert c.alerts == [(0, FATAL, desc)], c.alerts
    assert CCS not in record_types(out)
    (closed,) = [e for e in srv.events if isinstance(e, AssociationClosed)]
    assert closed.local and closed.alert == desc
    # Anything later is counted: by the closed association or, once the endpoint
    # no longer routes to it, as an unknown sender's non-ClientHello.
    before = srv.assoc.stats.after_close + srv.endpoint.stats.not_client_hello
    assert srv.send(c.app_record(b"sneak")) == [] and srv.app == []
    assert srv.assoc.stats.after_close + srv.endpoint.stats.not_client_hello == before + 1


# --- S4: ClientKeyExchange before Certificate (server role) -----------------------------


@pytest.mark.parametrize("order", ["cke-cert-cv", "cke-cv-cert", "cv-cert-cke"])
def test_s4_client_key_exchange_before_certificate_is_unexpected_message(
    pki: Pki, order: str
) -> None:
    c, srv = to_flight4(pki, "mutual-ecdsa")
    first = c.next_msg_seq
    cert, cke, cv = c.key_exchange(certificate="valid")
    fin = c.finished()
    by_name = {"cert": cert, "cke": cke, "cv": cv}
    msgs = renumber([by_name[n] for n in order.split("-")], first)
    out = srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1))
    assert_aborted(c, srv, out)


def test_s4_client_key_exchange_alone_when_certificate_required(pki: Pki) -> None:
    """The client skips its Certificate (message_seq stays dense): CKE where a
    Certificate is due is out of order, never a completion."""
    c, srv = to_flight4(pki, "mutual-ecdsa")
    msgs, fin = flight5(c, certificate=None)
    out = srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1))
    c.absorb(out)
    assert srv.assoc.is_closed and not srv.completed()
    assert c.alerts and c.alerts[-1][1] == FATAL
    assert c.alerts[-1][2] in (UNEXPECTED, 40, 116), c.alerts  # never internal_error
    assert srv.app == []


# --- S5: ChangeCipherSpec before CertificateVerify (server role) --------------------------


def test_s5_ccs_before_certificate_verify_aborts(pki: Pki) -> None:
    c, srv = to_flight4(pki, "mutual-ecdsa")
    cert, cke, cv = c.key_exchange(certificate="valid")
    fin = c.finished()
    out = srv.send(c.hs(cert, cke) + c.ccs() + c.hs(cv) + c.hs(fin, epoch=1))
    assert_aborted(c, srv, out)


def test_s5_ccs_between_certificate_and_key_exchange_aborts_or_is_dropped(pki: Pki) -> None:
    """The keys are not even negotiated yet: a counted drop (S15 shape) or an abort;
    then the CertificateVerify-less flight that follows never completes."""
    c, srv = to_flight4(pki, "mutual-ecdsa")
    cert, cke, _cv = c.key_exchange(certificate="valid")
    before = drops(srv.assoc)
    out = srv.send(c.hs(cert) + c.ccs())
    if not srv.assoc.is_closed:
        assert out == []
        assert_only(before, drops(srv.assoc), unexpected=1)
        out = srv.send(c.hs(cke) + c.ccs() + c.hs(c.finished(), epoch=1))
    c.absorb(out)
    assert srv.assoc.is_closed and not srv.completed() and srv.app == []
    assert c.alerts and c.alerts[-1][1] == FATAL and c.alerts[-1][2] != INTERNAL


# --- S11: out-of-order Finished -> unexpected_message or silence, never internal_error -------


@pytest.mark.parametrize("where", [
    "instead-of-key-exchange",      # Finished with the CKE's message_seq, epoch 0
    "before-key-exchange-same-record",
    "future-seq-epoch0",            # a Finished from the future: buffered, bounded
    "epoch0-after-ccs",
    "twice-before-ccs",
    "instead-of-certificate",       # mutual: Finished where the Certificate is due
])
def test_s11_out_of_order_finished_never_internal_error(pki: Pki, where: str) -> None:
    mode = "mutual-ecdsa" if where == "instead-of-certificate" else "psk-aes128"
    c, srv = to_flight4(pki, mode)
    first = c.next_msg_seq
    msgs = c.key_exchange(certificate="valid" if mode == "mutual-ecdsa" else None)
    fin = c.finished()
    (fin_frag,) = parse_handshake_fragments(fin)
    early = encode_handshake(T.finished, first, fin_frag.body)
    before = drops(srv.assoc)
    if where in ("instead-of-key-exchange", "instead-of-certificate"):
        out = srv.send(c.hs(early))
    elif where == "before-key-exchange-same-record":
        out = srv.send(c.hs(early, *renumber(msgs, first + 1)))
    elif where == "future-seq-epoch0":
        out = srv.send(c.hs(encode_handshake(T.finished, first + 7, fin_frag.body)))
    elif where == "epoch0-after-ccs":
        out = srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=0))
    else:
        out = srv.send(c.hs(*msgs) + c.hs(fin, epoch=1) + c.hs(fin, epoch=1))
    c.absorb(out)
    assert not srv.completed() and srv.app == []
    assert all(desc != INTERNAL for _e, _l, desc in c.alerts), c.alerts
    if srv.assoc.is_closed:
        assert c.alerts == [(0, FATAL, UNEXPECTED)], c.alerts
    else:
        assert out == [] and c.alerts == []
        moved = {k: v - before[k] for k, v in drops(srv.assoc).items() if v != before[k]}
        assert set(moved) <= {"unexpected", "unknown_epoch", "buffer_full"}, moved
        if where in ("twice-before-ccs", "future-seq-epoch0"):
            # Held (bounded) for a CCS that may still come (S9), or as a future
            # message_seq: the genuine flight must still complete.
            c.write_seq[1] = 0
            c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
            assert srv.assoc.is_established or srv.assoc.is_closed
            assert all(desc != INTERNAL for _e, _l, desc in c.alerts), c.alerts
        else:
            assert moved, "dropped without a count"


def test_s11_client_role_out_of_order_finished_never_internal_error(pki: Pki) -> None:
    """A server Finished in place of its Certificate, and one after ServerHelloDone in
    epoch 0: the client answers unexpected_message (or drops), never internal_error."""
    for shape in ("instead-of-certificate", "epoch0-after-done"):
        peer = ClientUnderTest.start(pki, "ecdhe-ecdsa-aes128")
        sh, cert, ske, done = peer.flight4
        fin = (T.finished, bytes(12))
        msgs = [sh, fin] if shape == "instead-of-certificate" else [sh, cert, ske, done, fin]
        peer.feed(msgs)
        assert not peer.completed() and INTERNAL not in [d for _l, d in peer.alerts]
        if peer.client.is_closed:
            assert peer.alerts == [(FATAL, UNEXPECTED)], peer.alerts


# --- the client under test (S16, S17 client role) ------------------------------------------


@dataclass
class ClientUnderTest:
    """A real client Association whose flight 4 came from a real ServerEndpoint and
    is handed to the test as (msg_type, body) pairs, to re-script."""

    client: Association
    clock: FakeClock
    flight4: list[tuple[int, bytes]]
    first_seq: int
    server: Association
    endpoint: ServerEndpoint
    sent: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    record_seq: int = 100

    @classmethod
    def start(cls, pki: Pki, mode: str) -> ClientUnderTest:
        c_cfg, s_cfg = configs_for(mode, pki)
        clock = FakeClock()
        client = Association(c_cfg)
        ep = ServerEndpoint(s_cfg)
        client.connect(clock.now, clock.wall)
        (ch,) = client.datagrams_to_send(clock.now)
        _none, (hvr,) = ep.receive(ch, CLIENT_ADDR, clock.now, clock.wall)
        client.receive_datagram(hvr, clock.now, clock.wall)
        (ch2,) = client.datagrams_to_send(clock.now)
        server, _ = ep.receive(ch2, CLIENT_ADDR, clock.now, clock.wall)
        assert server is not None
        parts: dict[int, tuple[int, bytearray]] = {}
        for d in server.datagrams_to_send(clock.now):
            for rec in parse_datagram(d)[0]:
                assert rec.content_type == HS and rec.epoch == 0
                for f in parse_handshake_fragments(rec.fragment):
                    _t, body = parts.setdefault(f.message_seq, (f.msg_type, bytearray(f.length)))
                    body[f.fragment_offset:f.fragment_offset + len(f.body)] = f.body
        seqs = sorted(parts)
        flight = [(parts[s][0], bytes(parts[s][1])) for s in seqs]
        return cls(client, clock, flight, seqs[0], server, ep)

    def feed(self, messages: list[tuple[int, bytes]], *, first_seq: int | None = None,
             epoch: int = 0) -> None:
        """Each message in its own epoch-0 record, message_seq counting from first_seq."""
        seq = self.first_seq if first_seq is None else first_seq
        datagram = b""
        for i, (msg_type, body) in enumerate(messages):
            datagram += encode_record(HS, epoch, self.record_seq,
                                      encode_handshake(msg_type, seq + i, body))
            self.record_seq += 1
        self.deliver(datagram)

    def deliver(self, datagram: bytes) -> list[bytes]:
        app = self.client.receive_datagram(datagram, self.clock.now, self.clock.wall)
        self.sent += self.client.datagrams_to_send(self.clock.now)
        self.events += self.client.pop_events()
        return app

    def completed(self) -> bool:
        return any(isinstance(e, HandshakeCompleted) for e in self.events)

    def records(self) -> list[list[Record]]:
        """The records of each datagram the client sent (its CID records too)."""
        ids = self.client.connection_ids
        n = len(ids[1]) if ids is not None else 0
        return [parse_datagram(d, n)[0] for d in self.sent]

    @property
    def alerts(self) -> list[tuple[int, int]]:
        """(level, description) of every alert the client sent.  Once it sent its flight
        5 its alerts are sealed: then the last datagram must be one epoch-1 record and
        the description is read from the close event."""
        sent = self.records()
        plain = [decode_alert(r.fragment) for rs in sent for r in rs
                 if r.content_type == ALERT and r.epoch == 0]
        closed = [e for e in self.events if isinstance(e, AssociationClosed) and e.local]
        if closed and closed[0].alert is not None and not plain:
            (last,) = sent[-1]
            assert last.epoch == 1, last
            return [(FATAL, closed[0].alert)]
        return plain

    def handshake_sent(self) -> list[tuple[int, bytes]]:
        """(msg_type, body) of the epoch-0 handshake messages the client sent."""
        return [(f.msg_type, f.body) for rs in self.records() for r in rs
                if r.content_type == HS and r.epoch == 0
                for f in parse_handshake_fragments(r.fragment)]

    def assert_aborted(self) -> None:
        assert self.client.is_closed and not self.completed()
        assert self.alerts == [(FATAL, UNEXPECTED)], self.alerts
        (closed,) = [e for e in self.events if isinstance(e, AssociationClosed)]
        assert closed.local and closed.alert == UNEXPECTED
        kinds = [t for t, _b in self.handshake_sent()]
        assert T.client_key_exchange not in kinds, "flight 5 sent on an out-of-order flight"
        assert self.deliver(encode_record(APP, 1, 7, bytes(40))) == []


# --- S16: the client rejects out-of-order and repeated server messages --------------------


def test_s16_control_the_genuine_flight_completes_the_client(pki: Pki) -> None:
    peer = ClientUnderTest.start(pki, "mutual-ecdsa")
    assert [t for t, _b in peer.flight4] == [T.server_hello, T.certificate,
                                            T.server_key_exchange, T.certificate_request,
                                            T.server_hello_done]
    peer.feed(peer.flight4)
    sent = [t for t, _b in peer.handshake_sent()]
    assert sent[-3:] == [T.certificate, T.client_key_exchange, T.certificate_verify]
    assert not peer.client.is_closed and peer.alerts == []


def test_s16_premature_hello_request_never_restarts_the_handshake(pki: Pki) -> None:
    peer = ClientUnderTest.start(pki, "mutual-ecdsa")
    before = drops(peer.client)
    hellos = [t for t, _b in peer.handshake_sent()].count(T.client_hello)
    peer.feed([(T.hello_request, b"")])
    assert [t for t, _b in peer.handshake_sent()].count(T.client_hello) == hellos
    assert not peer.completed()
    if peer.client.is_closed:
        assert peer.alerts == [(FATAL, UNEXPECTED)]
        return
    assert peer.alerts == []
    assert sum(drops(peer.client).values()) > sum(before.values())
    # Ignored, not taken for the ServerHello: the genuine flight still completes.
    peer.feed(peer.flight4, first_seq=peer.first_seq + 1)
    assert not peer.client.is_closed


@pytest.mark.parametrize("order", [
    "sh-cr-cert-ske-shd",   # CertificateRequest before Certificate
    "sh-cert-cr-ske-shd",   # CertificateRequest before ServerKeyExchange
    "sh-ske-cert-cr-shd",   # ServerKeyExchange before Certificate
    "sh-cert-ske-cr-cr-shd",  # a repeated CertificateRequest with a new message_seq
    "sh-cert-sh-cert-ske-cr-shd",  # the ServerHello flight restarted part-way
    "sh-cert-ske-cr-shd-sh-cert-ske-cr-shd",  # ... and after it was complete
    "sh-cert-ske-shd-cr",   # ServerHelloDone before CertificateRequest
])
def test_s16_client_rejects_out_of_order_server_flight(pki: Pki, order: str) -> None:
    peer = ClientUnderTest.start(pki, "mutual-ecdsa")
    by_name = dict(zip(["sh", "cert", "ske", "cr", "shd"], peer.flight4, strict=True))
    peer.feed([by_name[n] for n in order.split("-")])
    if order.endswith("shd-cr") or order.endswith("shd-sh-cert-ske-cr-shd"):
        # The ServerHelloDone ended the server's flight: the client answered it (with
        # whatever it had been asked for), then the message after it is out of order.
        assert peer.client.is_closed and not peer.completed()
        assert peer.alerts == [(FATAL, UNEXPECTED)], peer.alerts
        kinds = [t for t, _b in peer.handshake_sent()]
        if order.endswith("shd-cr"):
            assert T.certificate not in kinds and T.certificate_verify not in kinds
        return
    peer.assert_aborted()


def test_s16_exact_retransmission_of_the_server_flight_is_not_a_restart(pki: Pki) -> None:
    """Control: the same flight with the same message_seqs is a repeat, not an abort."""
    peer = ClientUnderTest.start(pki, "mutual-ecdsa")
    peer.feed(peer.flight4)
    n_sent = len(peer.sent)
    before = drops(peer.client)
    peer.feed(peer.flight4)
    assert not peer.client.is_closed and peer.alerts == []
    assert len(peer.sent) > n_sent, "flight 5 not re-sent for a repeated flight 4"
    after = drops(peer.client)
    assert {k for k in after if after[k] != before[k]} <= {"stale_handshake"}


@pytest.mark.parametrize("change", ["rsa-type-only", "rsa-schemes-only"])
def test_s16_unsupported_certificate_type_gets_an_empty_certificate(
    pki: Pki, change: str
) -> None:
    peer = ClientUnderTest.start(pki, "mutual-ecdsa")
    sh, cert, ske, (cr_type, cr_body), shd = peer.flight4
    req = decode_certificate_request(cr_body)
    if change == "rsa-type-only":
        req = CertificateRequest(b"\x01", req.signature_schemes, req.authorities)
    else:
        req = CertificateRequest(req.certificate_types, (SignatureScheme.rsa_pkcs1_sha256,),
                                 req.authorities)
    peer.feed([sh, cert, ske, (cr_type, encode_certificate_request(req)), shd])
    assert not peer.client.is_closed and peer.alerts == []
    sent = peer.handshake_sent()
    kinds = [t for t, _b in sent]
    assert T.certificate in kinds and T.client_key_exchange in kinds
    (body,) = [b for t, b in sent if t == T.certificate]
    assert decode_certificate(body).chain == (), "a certificate of a type not asked for"
    assert T.certificate_verify not in kinds


# --- S17: a new ClientHello on an established association ----------------------------------


def _old_keys_work(c: ScriptedClient, srv: ServerUnderTest, assoc: Association,
                   payload: bytes) -> None:
    n = len(srv.app)
    srv.send(c.app_record(payload))
    assert srv.app[n:] == [payload], "the established keys stopped working"
    assert assoc.is_established and not assoc.is_closed


def test_s17_epoch0_client_hello_without_cookie_answers_hvr_and_changes_nothing(
    pki: Pki,
) -> None:
    c, srv, _ = complete(pki)
    assoc = srv.assoc
    before = drops(assoc)
    ep_before = srv.endpoint.stats.hello_verify_sent
    intruder = make_client(pki, "psk-aes128", seed=9)
    for cookie in (b"", bytes(32), c.cookie):  # none, forged, and the old client's cookie
        out = srv.send(intruder.hs(intruder.client_hello(cookie=cookie)))
        assert len(out) == 1 and record_types(out) == [HS]  # a HelloVerifyRequest only
    assert srv.endpoint.stats.hello_verify_sent == ep_before + 3
    assert srv.endpoint.stats.replaced == 0 and srv.endpoint.stats.cookie_accepted == 1
    assert srv.endpoint.associations[CLIENT_ADDR] is assoc
    assert drops(assoc) == before
    _old_keys_work(c, srv, assoc, b"still the old keys")


def test_s17_replayed_first_client_hello_is_dropped_by_the_live_association(pki: Pki) -> None:
    """The old client's own ClientHello again (same random, cookie valid): it goes to
    the live association, which reads epoch 1 now: counted, no alert, no reset."""
    c, srv, _ = complete(pki)
    assoc = srv.assoc
    ch = c.hs(encode_handshake(T.client_hello, 1, c.hello_body()))
    before = drops(assoc)
    out = srv.send(ch)
    # Silence, or (taken for a repeat of the client's flights) the server's last
    # flight again: its CCS and epoch-1 Finished; never a HelloVerifyRequest or a
    # new ServerHello, and nothing counted as a fault of the live association.
    assert all(r.content_type == CCS or (r.content_type == HS and r.epoch == 1)
               for d in out for r in parse_datagram(d)[0]), out
    moved = {k: v - before[k] for k, v in drops(assoc).items() if v != before[k]}
    assert set(moved) <= {"unknown_epoch"}, moved
    assert srv.endpoint.stats.replaced == 0 and srv.endpoint.stats.hello_verify_sent == 1
    _old_keys_work(c, srv, assoc, b"after the replay")


def test_s17_protected_client_hello_refused_with_no_renegotiation(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    assoc = srv.assoc
    before = drops(assoc)
    out = srv.send(c.hs(c.client_hello(), epoch=1))
    c.absorb(out)
    assert c.alerts == [(1, AlertLevel.warning, AlertDescription.no_renegotiation)]
    assert drops(assoc) == before and assoc.is_established
    _old_keys_work(c, srv, assoc, b"no renegotiation")


def test_s17_no_renegotiation_is_said_once_per_record_and_per_second(pki: Pki) -> None:
    """Records full of empty ClientHellos (the audit: one 65 KB datagram of 4 records,
    5 440 fragments, got 5 440 alert datagrams, 212 160 bytes, reflected wherever a CID
    move pointed the association): one warning, the rest counted."""
    c, srv, _ = complete(pki)
    assoc = srv.assoc
    hellos = b"".join(encode_handshake(T.client_hello, 1000 + i, b"") for i in range(200))
    out = srv.send(c.hs(hellos, epoch=1) + c.hs(hellos, epoch=1) + c.hs(hellos, epoch=1))
    assert len(out) == 1
    c.absorb(out)
    warning = (1, AlertLevel.warning, AlertDescription.no_renegotiation)
    assert c.alerts == [warning]
    before = drops(assoc)
    assert before["renegotiation_ignored"] == 3 * 200 - 1
    assert srv.send(c.hs(c.client_hello(), epoch=1)) == []  # the same second: counted only
    assert_only(before, drops(assoc), renegotiation_ignored=1)
    srv.clock.advance(RENEGOTIATION_ALERT_INTERVAL)
    c.absorb(srv.send(c.hs(c.client_hello(), epoch=1)))
    assert c.alerts == [warning, warning]
    assert assoc.is_established
    _old_keys_work(c, srv, assoc, b"no renegotiation, twice")


def test_s17_b3_12_new_association_only_after_cookie_old_keys_until_it_completes(pki: Pki) -> None:
    c, srv, _ = complete(pki)
    old = srv.assoc
    c2 = make_client(pki, "psk-aes128", seed=2)
    c2.absorb(srv.send(c2.hs(c2.client_hello())))
    assert srv.endpoint.associations[CLIENT_ADDR] is old, "state before a valid cookie"
    out = srv.send(c2.hs(c2.client_hello()))
    new = srv.endpoint.associations[CLIENT_ADDR]
    assert new is not old and srv.endpoint.stats.replaced == 1
    c2.absorb(out)
    # The new handshake is under way: the old keys are still in force.
    _old_keys_work(c, srv, old, b"old keys during the new handshake")
    msgs, fin = flight5(c2)
    c2.absorb(srv.send(c2.hs(*msgs) + c2.ccs() + c2.hs(fin, epoch=1)))
    assert new.is_established and c2.server_finished_ok
    n = len(srv.app)
    srv.send(c2.app_record(b"new keys"))
    assert srv.app[n:] == [b"new keys"]


def test_s17_abandoned_new_handshake_leaves_the_old_association_reachable(pki: Pki) -> None:
    """A cookie-verified ClientHello that never completes must not cost the live
    association its address: once the half-open one gives up, the old keys still work."""
    c, srv, _ = complete(pki)
    old = srv.assoc
    c2 = make_client(pki, "psk-aes128", seed=3)
    c2.absorb(srv.send(c2.hs(c2.client_hello())))
    srv.send(c2.hs(c2.client_hello()))
    new = srv.endpoint.associations[CLIENT_ADDR]
    assert new is not old
    srv.advance(2000.0)
    assert new.is_closed
    srv.endpoint.remove_closed()
    _old_keys_work(c, srv, old, b"old keys after the abandoned handshake")


def test_s17_client_role_server_hello_or_hello_request_changes_nothing(pki: Pki) -> None:
    peer = ClientUnderTest.start(pki, "ecdhe-ecdsa-aes128")
    peer.feed(peer.flight4)
    for d in peer.sent:
        peer.endpoint.receive(d, CLIENT_ADDR, peer.clock.now, peer.clock.wall)
    peer.sent.clear()
    for d in peer.server.datagrams_to_send(peer.clock.now):
        peer.deliver(d)
    assert peer.completed() and peer.client.is_established
    sh = peer.flight4[0]
    before = drops(peer.client)
    # An unauthenticated epoch-0 ServerHello (a new flight) and HelloRequest.
    peer.feed([sh, (T.hello_request, b"")], first_seq=40)
    assert peer.sent == [] and peer.client.is_established
    assert_only(before, drops(peer.client), unknown_epoch=2)
    # The established keys still carry data both ways.
    (data,) = peer.server.protect([b"ping"])
    assert peer.deliver(data) == [b"ping"]
    (back,) = peer.client.protect([b"pong"])
    _assoc, got = peer.endpoint.receive(back, CLIENT_ADDR, peer.clock.now, peer.clock.wall)
    assert got == [b"pong"]


# --- B3.10: AEAD only, no CBC ----------------------------------------------------------------


def test_b3_10_no_cbc_suite_is_known_offered_or_accepted(pki: Pki) -> None:
    assert all(info.name.endswith(("GCM_SHA256", "GCM_SHA384", "POLY1305_SHA256"))
               for info in SUITES.values()), [i.name for i in SUITES.values()]
    cbc = (0x002F, 0x0035, 0xC009, 0xC013, 0x008C, 0xC0A4)  # *_CBC_* suites
    srv = ServerUnderTest(configs_for("ecdhe-ecdsa-aes128", pki)[1])
    c = make_client(pki, "ecdhe-ecdsa-aes128")
    c.absorb(srv.send(c.hs(c.client_hello(suites=cbc))))
    assert c.cookie
    out = srv.send(c.hs(c.client_hello(suites=cbc)))
    c.absorb(out)
    assert c.server_suite is None and not srv.completed()
    assert c.alerts == [(0, FATAL, AlertDescription.handshake_failure)], c.alerts
