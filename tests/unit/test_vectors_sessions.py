"""Known answers from outside the project: whole DTLS 1.2 sessions between real peers.

``tests/vectors/session_*.json`` are captures of OpenSSL↔OpenSSL and
GnuTLS↔GnuTLS sessions with the client's NSS key log (made by
``tests/vectors/capture_sessions.py``).  Each session is replayed through
dtlsvpn's own record, handshake, extension and alert codecs, the handshake
reassembler, the PRF and the record protection:

* every datagram parses with no garbage; every epoch-1 record authenticates;
* the handshake messages are reassembled per direction (RFC 6347 §4.2.3), decoded,
  and re-encode to the exact bytes the peer sent;
* the transcript is rebuilt as if unfragmented, without the HelloVerifyRequest
  and the first ClientHello (RFC 6347 §4.2.6), and both Finished messages'
  verify_data equal ``prf.verify_data`` over its hash (RFC 5246 §7.4.9): this
  pins transcript, PRF, key block, AEAD and nonce construction to real peers;
* the application data are the known lines, the alerts are close_notify;
* the ServerKeyExchange signature verifies over client_random + server_random +
  params (RFC 8422 §5.4), the peers' ECDH points pass our point checks, and for
  plain PSK (whose premaster is known, RFC 4279 §2) the extended master secret
  (RFC 7627 §4) equals the key log's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from dtlsvpn.crypto import prf
from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.certs import verify_signature
from dtlsvpn.crypto.keyexchange import generate_key_share, psk_premaster
from dtlsvpn.crypto.suites import SUITES, KeyExchangeKind, SuiteInfo, suite_by_name
from dtlsvpn.dtls.reassembly import Reassembler
from dtlsvpn.wire import extensions as wext
from dtlsvpn.wire import handshake as hs
from dtlsvpn.wire import key_exchange as kxw
from dtlsvpn.wire.alert import decode_alert
from dtlsvpn.wire.constants import (
    DTLS_1_2,
    AlertDescription,
    AlertLevel,
    ContentType,
    ExtensionType,
    HandshakeType,
    NamedGroup,
)
from dtlsvpn.wire.record import parse_datagram

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
EXPECTED = (
    "gnutls_ecdhe_ecdsa_aes128gcm",
    "openssl_ecdhe_ecdsa_aes128gcm_mtu300",
    "openssl_ecdhe_ecdsa_aes256gcm",
    "openssl_ecdhe_psk_chacha20",
    "openssl_psk_aes128gcm",
)
DTLS_1_0 = 0xFEFF  # RFC 6347 §4.1: allowed as the record version of a first ClientHello

# Decoders and encoders by message type; the key-exchange ones take the suite's kx.
_CODECS: dict[int, tuple[Callable[..., Any], Callable[..., bytes], bool]] = {
    HandshakeType.client_hello: (hs.decode_client_hello, hs.encode_client_hello, False),
    HandshakeType.server_hello: (hs.decode_server_hello, hs.encode_server_hello, False),
    HandshakeType.hello_verify_request: (hs.decode_hello_verify_request,
                                         hs.encode_hello_verify_request, False),
    HandshakeType.certificate: (hs.decode_certificate, hs.encode_certificate, False),
    HandshakeType.server_key_exchange: (kxw.decode_server_key_exchange,
                                        kxw.encode_server_key_exchange, True),
    HandshakeType.certificate_request: (hs.decode_certificate_request,
                                        hs.encode_certificate_request, False),
    HandshakeType.server_hello_done: (hs.decode_server_hello_done,
                                      hs.encode_server_hello_done, False),
    HandshakeType.certificate_verify: (hs.decode_certificate_verify,
                                       hs.encode_certificate_verify, False),
    HandshakeType.client_key_exchange: (kxw.decode_client_key_exchange,
                                        kxw.encode_client_key_exchange, True),
    HandshakeType.finished: (hs.decode_finished, hs.encode_finished, False),
    HandshakeType.new_session_ticket: (hs.decode_new_session_ticket,
                                       hs.encode_new_session_ticket, False),
}

# Typed extension-data decoders: each must accept what the real peers sent.
_EXT_DECODERS: dict[int, Callable[[bytes], object]] = {
    ExtensionType.supported_groups: wext.decode_supported_groups,
    ExtensionType.ec_point_formats: wext.decode_ec_point_formats,
    ExtensionType.signature_algorithms: wext.decode_signature_algorithms,
    ExtensionType.heartbeat: wext.decode_heartbeat,
    ExtensionType.extended_master_secret: wext.decode_extended_master_secret,
    ExtensionType.session_ticket: wext.decode_session_ticket,
    ExtensionType.renegotiation_info: wext.decode_renegotiation_info,
    ExtensionType.connection_id: wext.decode_connection_id,
}


@dataclass
class Replay:
    """What replaying one captured session through our code produced."""

    vector: dict[str, Any]
    suite: SuiteInfo
    master: bytes
    keylog_random: bytes
    transcript: bytearray = field(default_factory=bytearray)
    # (direction, msg_type, decoded message) in completion order, transcript messages only
    messages: list[tuple[str, int, Any]] = field(default_factory=list)
    hello_verify: hs.HelloVerifyRequest | None = None
    first_client_hello: hs.ClientHello | None = None
    # (direction, verify_data received, verify_data computed)
    finished: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    session_hash: bytes | None = None  # hash of the transcript through ClientKeyExchange
    app: dict[str, bytes] = field(default_factory=lambda: {"c2s": b"", "s2c": b""})
    alerts: list[tuple[str, int, int]] = field(default_factory=list)
    fragmented_messages: set[tuple[str, int]] = field(default_factory=set)  # (dir, message_seq)
    types: dict[tuple[str, int], int] = field(default_factory=dict)  # (dir, message_seq) → type
    records: dict[tuple[str, int], int] = field(default_factory=dict)  # (dir, epoch) → count
    protection: dict[str, RecordProtection] = field(default_factory=dict)

    def first(self, direction: str, msg_type: int) -> Any:
        for d, t, msg in self.messages:
            if d == direction and t == msg_type:
                return msg
        raise AssertionError(f"no {HandshakeType(msg_type).name} {direction}")

    @property
    def client_hello(self) -> hs.ClientHello:
        msg: hs.ClientHello = self.first("c2s", HandshakeType.client_hello)
        return msg

    @property
    def server_hello(self) -> hs.ServerHello:
        msg: hs.ServerHello = self.first("s2c", HandshakeType.server_hello)
        return msg


def _handle_message(rp: Replay, direction: str, msg_type: int, seq: int, body: bytes) -> None:
    rp.types[(direction, seq)] = msg_type
    decode, encode, with_kx = _CODECS[msg_type]
    args = (rp.suite.kx,) if with_kx else ()
    msg = decode(body, *args)
    # Our encoder gives back exactly the peer's bytes.
    assert encode(msg, *args) == body, HandshakeType(msg_type).name

    if msg_type == HandshakeType.hello_verify_request:
        # RFC 6347 §4.2.6: neither the HelloVerifyRequest nor the ClientHello it answers
        # is part of the transcript.
        assert direction == "s2c" and rp.hello_verify is None and msg.cookie
        rp.hello_verify = msg
        return
    if msg_type == HandshakeType.client_hello and not msg.cookie:
        assert rp.first_client_hello is None and seq == 0
        rp.first_client_hello = msg
        return
    if msg_type == HandshakeType.client_hello:
        assert rp.hello_verify is not None and msg.cookie == rp.hello_verify.cookie
        assert msg.random == rp.keylog_random, "key log is for another ClientHello"
    if msg_type == HandshakeType.server_hello:
        assert msg.cipher_suite == rp.suite.code
        keys = prf.key_block(rp.suite, rp.master, rp.client_hello.random, msg.random)
        rp.protection["c2s"] = RecordProtection(rp.suite, keys.client_write_key,
                                                keys.client_write_iv)
        rp.protection["s2c"] = RecordProtection(rp.suite, keys.server_write_key,
                                                keys.server_write_iv)
    if msg_type == HandshakeType.finished:
        label = b"client finished" if direction == "c2s" else b"server finished"
        digest = prf.transcript_hash(rp.suite.prf_hash, bytes(rp.transcript))
        expected = prf.verify_data(rp.suite.prf_hash, rp.master, label, digest)
        rp.finished.append((direction, msg.verify_data, expected))
    rp.transcript += hs.transcript_bytes(msg_type, seq, body)
    rp.messages.append((direction, msg_type, msg))
    if msg_type == HandshakeType.client_key_exchange:
        # RFC 7627 §3: session_hash covers the handshake through ClientKeyExchange.
        rp.session_hash = prf.transcript_hash(rp.suite.prf_hash, bytes(rp.transcript))


def _replay(vector: dict[str, Any]) -> Replay:
    fields = vector["keylog"].split()
    assert fields[0] == "CLIENT_RANDOM" and len(fields) == 3
    rp = Replay(vector, suite_by_name(vector["suite"]), bytes.fromhex(fields[2]),
                bytes.fromhex(fields[1]))
    assert len(rp.master) == 48 and rp.suite.code in SUITES
    reassemblers = {"c2s": Reassembler(), "s2c": Reassembler()}
    seen: set[tuple[str, int, int]] = set()
    for n, dgram in enumerate(vector["datagrams"]):
        direction = dgram["dir"]
        records, garbage = parse_datagram(bytes.fromhex(dgram["hex"]))
        assert records and not garbage, f"datagram {n}"
        for rec in records:
            where = f"datagram {n} {direction} epoch {rec.epoch} seq {rec.seq}"
            # RFC 6347 §4.1: a sequence number is never reused within an epoch.
            assert (direction, rec.epoch, rec.seq) not in seen, where
            seen.add((direction, rec.epoch, rec.seq))
            key = (direction, rec.epoch)
            rp.records[key] = rp.records.get(key, 0) + 1
            if rec.epoch == 0:
                assert rec.version in (DTLS_1_2, DTLS_1_0), where
                plaintext = rec.fragment
            else:
                assert rec.epoch == 1 and rec.version == DTLS_1_2, where
                opened = rp.protection[direction].open(rec.epoch << 48 | rec.seq,
                                                       rec.content_type, rec.fragment)
                assert opened is not None, f"{where}: does not authenticate"
                assert len(opened) == len(rec.fragment) - rp.protection[direction].overhead
                plaintext = opened
            if rec.content_type == ContentType.handshake:
                reasm = reassemblers[direction]
                for frag in hs.parse_handshake_fragments(plaintext):
                    if not frag.is_whole:
                        rp.fragmented_messages.add((direction, frag.message_seq))
                    if frag.message_seq < reasm.next_receive_seq:
                        continue  # a retransmission of a message we already have
                    assert reasm.add(frag) is None, where
                    while (ready := reasm.pop_ready()) is not None:
                        _handle_message(rp, direction, *ready)
            elif rec.content_type == ContentType.change_cipher_spec:
                assert rec.epoch == 0 and plaintext == b"\x01", where  # RFC 5246 §7.1
            elif rec.content_type == ContentType.application_data:
                assert rec.epoch == 1, where
                rp.app[direction] += plaintext
            elif rec.content_type == ContentType.alert:
                level, description = decode_alert(plaintext)
                rp.alerts.append((direction, level, description))
            else:
                raise AssertionError(f"{where}: content type {rec.content_type}")
    return rp


@functools.cache
def replay(name: str) -> Replay:
    vector = json.loads((VECTORS / f"session_{name}.json").read_text())
    return _replay(vector)


def _names(pred: Callable[[SuiteInfo], bool] = lambda s: True) -> list[str]:
    out = []
    for name in EXPECTED:
        vector = json.loads((VECTORS / f"session_{name}.json").read_text())
        if pred(suite_by_name(vector["suite"])):
            out.append(name)
    return out


ALL = _names()
CERT = _names(lambda s: s.uses_certificate)
PLAIN_PSK = _names(lambda s: s.kx is KeyExchangeKind.PSK)
PSK = _names(lambda s: s.uses_psk)
ECDHE = _names(lambda s: s.uses_ecdhe)


def test_all_captures_present() -> None:
    found = sorted(p.name for p in VECTORS.glob("session_*.json"))
    assert found == sorted(f"session_{n}.json" for n in EXPECTED)
    assert {replay(n).suite.aead.name for n in ALL} == {"AES_GCM", "CHACHA20_POLY1305"}
    assert {replay(n).suite.prf_hash for n in ALL} == {"sha256", "sha384"}


@pytest.mark.parametrize("name", ALL)
def test_capture_is_documented(name: str) -> None:
    v = replay(name).vector
    assert v["how"]["tool_versions"] and v["how"]["server"] and v["how"]["client"]
    assert {d["dir"] for d in v["datagrams"]} == {"c2s", "s2c"}


@pytest.mark.parametrize("name", ALL)
def test_both_finished_match_our_prf_over_our_transcript(name: str) -> None:
    rp = replay(name)
    assert [d for d, _, _ in rp.finished] == ["c2s", "s2c"]
    for direction, received, expected in rp.finished:
        assert received == expected, f"{direction} Finished: {received.hex()} != {expected.hex()}"
    # The server's Finished is the last message of the handshake.
    assert rp.messages[-1][:2] == ("s2c", HandshakeType.finished)


@pytest.mark.parametrize("name", ALL)
def test_every_protected_record_opens_and_carries_the_known_lines(name: str) -> None:
    rp = replay(name)
    assert rp.records[("c2s", 1)] >= 2 and rp.records[("s2c", 1)] >= 2
    assert rp.app["c2s"] == rp.vector["client_line"].encode()
    assert rp.app["s2c"] == rp.vector["server_line"].encode()


@pytest.mark.parametrize("name", ALL)
def test_a_tampered_record_does_not_open(name: str) -> None:
    rp = replay(name)
    for dgram in rp.vector["datagrams"]:
        records, _ = parse_datagram(bytes.fromhex(dgram["hex"]))
        for rec in records:
            if rec.content_type == ContentType.application_data:
                prot = rp.protection[dgram["dir"]]
                es = rec.epoch << 48 | rec.seq
                bad = rec.fragment[:-1] + bytes([rec.fragment[-1] ^ 1])
                assert prot.open(es, rec.content_type, bad) is None
                assert prot.open(es + 1, rec.content_type, rec.fragment) is None
                assert prot.open(es, ContentType.alert, rec.fragment) is None


@pytest.mark.parametrize("name", ALL)
def test_hello_verify_request_and_cookie(name: str) -> None:
    rp = replay(name)
    assert rp.hello_verify is not None and rp.first_client_hello is not None
    ch1, ch2 = rp.first_client_hello, rp.client_hello
    assert ch2.cookie == rp.hello_verify.cookie
    # RFC 6347 §4.2.1: the second ClientHello repeats the first one's parameters.
    assert (ch1.random, ch1.cipher_suites, ch1.extensions) == (
        ch2.random, ch2.cipher_suites, ch2.extensions)


@pytest.mark.parametrize("name", ALL)
def test_hellos_and_extensions_decode(name: str) -> None:
    rp = replay(name)
    ch, sh = rp.client_hello, rp.server_hello
    assert ch.version == DTLS_1_2 and sh.version == DTLS_1_2
    assert rp.suite.code in ch.cipher_suites and 0 in ch.compression_methods
    assert sh.compression_method == 0
    for hello in (ch, sh):
        assert hello.extensions
        for ext in hello.extensions:
            if ext.type in _EXT_DECODERS:
                _EXT_DECODERS[ext.type](ext.data)
        assert wext.encode_extensions(hello.extensions)  # re-encodes without complaint
    if rp.suite.uses_ecdhe:  # a PSK-only offer (OpenSSL) carries no supported_groups
        assert wext.decode_supported_groups(ch.ext(ExtensionType.supported_groups) or b"")
    if rp.suite.uses_certificate:
        schemes = wext.decode_signature_algorithms(
            ch.ext(ExtensionType.signature_algorithms) or b"")
        assert schemes


@pytest.mark.parametrize("name", ALL)
def test_extended_master_secret_negotiated(name: str) -> None:
    rp = replay(name)
    for hello in (rp.client_hello, rp.server_hello):
        data = hello.ext(ExtensionType.extended_master_secret)
        assert data is not None
        wext.decode_extended_master_secret(data)
    assert rp.session_hash is not None


@pytest.mark.parametrize("name", ALL)
def test_alerts_are_close_notify(name: str) -> None:
    rp = replay(name)
    assert rp.alerts
    assert all((lvl, desc) == (AlertLevel.warning, AlertDescription.close_notify)
               for _, lvl, desc in rp.alerts)
    # The client closes first (its stdin reached EOF).
    assert rp.alerts[0][0] == "c2s"


@pytest.mark.parametrize("name", PLAIN_PSK)
def test_plain_psk_master_secret_from_the_known_psk(name: str) -> None:
    rp = replay(name)
    v = rp.vector
    ske = rp.first("s2c", HandshakeType.server_key_exchange)
    cke = rp.first("c2s", HandshakeType.client_key_exchange)
    assert ske.psk_identity_hint == v["psk_identity_hint"].encode()
    assert cke.psk_identity == v["psk_identity"].encode() and cke.public is None
    assert rp.session_hash is not None
    premaster = psk_premaster(bytes.fromhex(v["psk"]))
    # RFC 7627 §4 with the session hash of our transcript; the classic derivation
    # must not be what the peers used.
    ems = prf.extended_master_secret(rp.suite.prf_hash, premaster, rp.session_hash)
    assert ems == rp.master
    classic = prf.master_secret(rp.suite.prf_hash, premaster, rp.client_hello.random,
                                rp.server_hello.random)
    assert classic != rp.master


@pytest.mark.parametrize("name", PSK)
def test_psk_identity_and_hint(name: str) -> None:
    rp = replay(name)
    ske = rp.first("s2c", HandshakeType.server_key_exchange)
    cke = rp.first("c2s", HandshakeType.client_key_exchange)
    assert ske.psk_identity_hint == rp.vector["psk_identity_hint"].encode()
    assert cke.psk_identity == rp.vector["psk_identity"].encode()
    assert ske.signature is None and ske.scheme is None


@pytest.mark.parametrize("name", ECDHE)
def test_peers_ecdh_points_pass_our_checks(name: str) -> None:
    rp = replay(name)
    ske = rp.first("s2c", HandshakeType.server_key_exchange)
    cke = rp.first("c2s", HandshakeType.client_key_exchange)
    group = NamedGroup(ske.group)
    assert group in wext.decode_supported_groups(
        rp.client_hello.ext(ExtensionType.supported_groups) or b"")
    for public in (ske.public, cke.public):
        assert public is not None
        assert generate_key_share(group).exchange(public)


@pytest.mark.parametrize("name", CERT)
def test_server_key_exchange_signature_verifies(name: str) -> None:
    rp = replay(name)
    cert_msg = rp.first("s2c", HandshakeType.certificate)
    chain = [x509.load_der_x509_certificate(der) for der in cert_msg.chain]
    assert chain
    ske = rp.first("s2c", HandshakeType.server_key_exchange)
    signed = rp.client_hello.random + rp.server_hello.random + ske.params_bytes()
    verify_signature(chain[0].public_key(), ske.scheme, ske.signature, signed)
    # The same bytes with one flipped bit must not verify.
    with pytest.raises(Exception, match="does not verify"):
        verify_signature(chain[0].public_key(), ske.scheme, ske.signature,
                         signed[:-1] + bytes([signed[-1] ^ 1]))


def test_openssl_mtu_300_handshake_was_fragmented_and_reassembled() -> None:
    rp = replay("openssl_ecdhe_ecdsa_aes128gcm_mtu300")
    fragmented = {rp.types[key] for key in rp.fragmented_messages}
    assert HandshakeType.certificate in fragmented
    sizes = [len(d["hex"]) // 2 for d in rp.vector["datagrams"] if d["dir"] == "s2c"]
    # -mtu 300 is the IP MTU: 272 bytes of UDP payload for the fragmented flight.  (OpenSSL
    # does not hold its last flight to it: NewSessionTicket + CCS + Finished went as 282.)
    assert max(sizes[:4]) == 300 - 28


def test_gnutls_certificate_request_and_empty_client_certificate() -> None:
    rp = replay("gnutls_ecdhe_ecdsa_aes128gcm")
    cr = rp.first("s2c", HandshakeType.certificate_request)
    assert cr.certificate_types and cr.signature_schemes
    assert rp.first("c2s", HandshakeType.certificate).chain == ()
