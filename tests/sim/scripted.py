"""A scripted DTLS 1.2 client and a server under test, for the attack conversations.

:class:`ScriptedClient` is a deliberately minimal DTLS 1.2 client written from
``dtlsvpn.wire`` codecs and ``dtlsvpn.crypto`` primitives (X25519 only, EMS
always, no retransmission logic of its own): the test decides which message goes
in which record, in which epoch, and in which order.  :class:`ServerUnderTest`
feeds its datagrams to a real ``ServerEndpoint`` on a fake clock from one client
address and collects what the server answers.  ``drops``/``assert_only`` check
that exactly the named drop counters moved.

Used by ``test_security_handshake.py`` and ``test_heartbleed.py``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.prf import extended_master_secret, key_block, transcript_hash, verify_data
from dtlsvpn.crypto.suites import SUITES
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import Event, HandshakeCompleted
from dtlsvpn.wire.alert import decode_alert, encode_alert
from dtlsvpn.wire.constants import (
    DTLS_1_2,
    ContentType,
    ExtensionType,
    HandshakeType,
    KeyExchangeKind,
    NamedGroup,
    SignatureScheme,
)
from dtlsvpn.wire.extensions import (
    Extension,
    encode_ec_point_formats,
    encode_extended_master_secret,
    encode_renegotiation_info,
    encode_signature_algorithms,
    encode_supported_groups,
)
from dtlsvpn.wire.handshake import (
    Certificate,
    CertificateVerify,
    ClientHello,
    Finished,
    decode_hello_verify_request,
    decode_server_hello,
    encode_certificate,
    encode_certificate_verify,
    encode_client_hello,
    encode_finished,
    encode_handshake,
    parse_handshake_fragments,
    transcript_bytes,
)
from dtlsvpn.wire.key_exchange import (
    ClientKeyExchange,
    ServerKeyExchange,
    decode_server_key_exchange,
    encode_client_key_exchange,
)
from dtlsvpn.wire.record import Record, encode_record, parse_datagram
from tests.pki import Credential, Pki
from tests.sim.clock import FakeClock
from tests.sim.configs import MODES, PSK, PSK_IDENTITY, configs_for
from tests.sim.harness import CLIENT_ADDR

CCS = int(ContentType.change_cipher_spec)
ALERT = int(ContentType.alert)
HS = int(ContentType.handshake)
APP = int(ContentType.application_data)

TRAFFIC = {"rx_records", "rx_bytes", "tx_records", "tx_bytes", "retransmissions"}


# --- the scripted peer ----------------------------------------------------------------------


def _psk_premaster(psk: bytes, other_secret: bytes) -> bytes:
    # RFC 4279 §2 / RFC 5489 §2: other_secret<0..2^16-1> || psk<0..2^16-1>
    return (struct.pack("!H", len(other_secret)) + other_secret
            + struct.pack("!H", len(psk)) + psk)


@dataclass
class _Partial:
    msg_type: int
    length: int
    body: bytearray
    have: list[bool]


class ScriptedClient:
    """A minimal DTLS 1.2 client whose every message and record is chosen by the test.

    Message methods (``client_hello``, ``key_exchange``, ``finished``) return
    handshake messages with their 12-byte header and append them to the
    transcript; ``record``/``datagram`` wrap them without touching it, so a
    test can resend, reorder, omit or mislabel messages freely.
    """

    def __init__(
        self,
        suite: int,
        *,
        seed: int = 0,
        psk: bytes | None = None,
        psk_identity: bytes | None = None,
        credentials: Credential | None = None,
    ) -> None:
        self.info = SUITES[int(suite)]
        self.rng = random.Random(f"scripted/{seed}")
        self.random = self.rng.randbytes(32)
        self.psk = psk
        self.psk_identity = psk_identity
        self.credentials = credentials
        self.key_share = X25519PrivateKey.generate()
        self.cookie = b""
        self.next_msg_seq = 0
        self.write_seq = {0: 0, 1: 0, 2: 0}
        self.transcript = bytearray()
        self.server_random = b""
        self.server_suite: int | None = None
        self.ske: ServerKeyExchange | None = None
        self.certificate_requested = False
        self.server_hello_done = False
        self.server_ccs = False
        self.server_finished_ok: bool | None = None
        self.master = b""
        self.write: RecordProtection | None = None
        self.read: RecordProtection | None = None
        self.alerts: list[tuple[int, int, int]] = []  # (epoch, level, description)
        self.app: list[bytes] = []
        self.received: list[tuple[int, int, int]] = []  # (type, epoch, seq) of every record
        self._partial: dict[int, _Partial] = {}
        self._done: set[int] = set()

    # -- messages (update the transcript) --

    def _message(self, msg_type: int, body: bytes, *, seq: int | None = None) -> bytes:
        if seq is None:
            seq = self.next_msg_seq
            self.next_msg_seq += 1
        self.transcript += transcript_bytes(msg_type, seq, body)
        return encode_handshake(msg_type, seq, body)

    def hello_body(
        self,
        cookie: bytes | None = None,
        suites: tuple[int, ...] | None = None,
        random_: bytes | None = None,
    ) -> bytes:
        exts = (
            Extension(ExtensionType.supported_groups, encode_supported_groups([NamedGroup.x25519])),
            Extension(ExtensionType.ec_point_formats, encode_ec_point_formats(b"\x00")),
            Extension(ExtensionType.signature_algorithms, encode_signature_algorithms([
                SignatureScheme.ecdsa_secp256r1_sha256, SignatureScheme.ecdsa_secp384r1_sha384,
                SignatureScheme.rsa_pss_rsae_sha256, SignatureScheme.rsa_pkcs1_sha256,
            ])),
            Extension(ExtensionType.extended_master_secret, encode_extended_master_secret()),
            Extension(ExtensionType.renegotiation_info, encode_renegotiation_info()),
        )
        return encode_client_hello(ClientHello(
            DTLS_1_2, random_ if random_ is not None else self.random, b"",
            self.cookie if cookie is None else cookie,
            suites if suites is not None else (int(self.info.code),), b"\x00", exts,
        ))

    def client_hello(self, **kw: Any) -> bytes:
        """A ClientHello message; the transcript restarts at it (RFC 6347 §4.2.6)."""
        body = self.hello_body(**kw)
        self.transcript.clear()
        self._partial.clear()
        self._done.clear()
        return self._message(HandshakeType.client_hello, body)

    def key_exchange(self, *, certificate: str | None = None, verify: str = "good") -> list[bytes]:
        """[Certificate] ClientKeyExchange [CertificateVerify]; derives the keys.

        ``certificate``: None (no message), "empty" or "valid";
        ``verify``: "good", "bad" (a signature over other bytes) or "none" (omitted).
        """
        out: list[bytes] = []
        if certificate is not None:
            chain: tuple[bytes, ...] = ()
            if certificate == "valid":
                assert self.credentials is not None
                chain = (self.credentials.cert_der,)
            out.append(self._message(HandshakeType.certificate,
                                     encode_certificate(Certificate(chain))))
        kx = self.info.kx
        shared = b""
        public: bytes | None = None
        if kx is not KeyExchangeKind.PSK:
            assert self.ske is not None and self.ske.public is not None, "no ServerKeyExchange"
            assert self.ske.group == NamedGroup.x25519
            shared = self.key_share.exchange(X25519PublicKey.from_public_bytes(self.ske.public))
            public = self.key_share.public_key().public_bytes_raw()
        identity = self.psk_identity if kx in (KeyExchangeKind.PSK,
                                               KeyExchangeKind.ECDHE_PSK) else None
        out.append(self._message(HandshakeType.client_key_exchange,
                                 encode_client_key_exchange(ClientKeyExchange(identity, public),
                                                            kx)))
        if kx is KeyExchangeKind.PSK:
            assert self.psk is not None
            pms = _psk_premaster(self.psk, bytes(len(self.psk)))
        elif kx is KeyExchangeKind.ECDHE_PSK:
            assert self.psk is not None
            pms = _psk_premaster(self.psk, shared)
        else:
            pms = shared
        h = self.info.prf_hash
        # RFC 7627 §3: session_hash covers everything up to and including the CKE.
        self.master = extended_master_secret(h, pms, transcript_hash(h, bytes(self.transcript)))
        kb = key_block(self.info, self.master, self.random, self.server_random)
        self.write = RecordProtection(self.info, kb.client_write_key, kb.client_write_iv)
        self.read = RecordProtection(self.info, kb.server_write_key, kb.server_write_iv)
        if certificate == "valid" and verify != "none":
            assert self.credentials is not None
            key = self.credentials.key
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            signed = bytes(self.transcript) if verify == "good" else b"not the transcript"
            sig = key.sign(signed, ec.ECDSA(hashes.SHA256()))
            out.append(self._message(
                HandshakeType.certificate_verify,
                encode_certificate_verify(CertificateVerify(SignatureScheme.ecdsa_secp256r1_sha256, sig)),
            ))
        return out

    def finished(self, *, tamper: bool = False, seq: int | None = None) -> bytes:
        h = self.info.prf_hash
        vd = verify_data(h, self.master, b"client finished",
                         transcript_hash(h, bytes(self.transcript)))
        if tamper:
            vd = bytes(b ^ 0x55 for b in vd)
        return self._message(HandshakeType.finished, encode_finished(Finished(vd)), seq=seq)

    # -- records (never touch the transcript) --

    def record(self, ctype: int, payload: bytes, epoch: int = 0, *, seq: int | None = None,
               plaintext: bool = False) -> bytes:
        """One record; epoch > 0 is sealed with the client write key unless ``plaintext``."""
        if seq is None:
            seq = self.write_seq[epoch]
            self.write_seq[epoch] += 1
        frag = payload
        if epoch > 0 and not plaintext:
            assert self.write is not None
            frag = self.write.seal(epoch << 48 | seq, ctype, payload)
        return encode_record(ctype, epoch, seq, frag)

    def hs(self, *messages: bytes, epoch: int = 0) -> bytes:
        return self.record(HS, b"".join(messages), epoch)

    def ccs(self) -> bytes:
        return self.record(CCS, b"\x01", 0)

    def app_record(self, data: bytes, *, epoch: int = 1, seq: int | None = None) -> bytes:
        return self.record(APP, data, epoch, seq=seq)

    def alert_record(self, level: int, desc: int, epoch: int = 1) -> bytes:
        return self.record(ALERT, encode_alert(level, desc), epoch)

    # -- receiving --

    def absorb(self, datagrams: Iterable[bytes]) -> None:
        for d in datagrams:
            records, _garbage = parse_datagram(d)
            for rec in records:
                self.received.append((rec.content_type, rec.epoch, rec.seq))
                data = self._open(rec)
                if data is not None:
                    self._take(rec.content_type, rec.epoch, data)
        for seq in sorted(self._partial):
            p = self._partial[seq]
            if seq in self._done or not all(p.have):
                continue
            self._done.add(seq)
            self._handle(p.msg_type, seq, bytes(p.body))

    def _open(self, rec: Record) -> bytes | None:
        """The record's plaintext: epoch 0 as is, epoch 1 if it opens, else None."""
        if rec.epoch == 0:
            return rec.fragment
        if rec.epoch == 1 and self.read is not None:
            return self.read.open(1 << 48 | rec.seq, rec.content_type, rec.fragment)
        return None

    def _take(self, content_type: int, epoch: int, data: bytes) -> None:
        if content_type == CCS:
            self.server_ccs = True
        elif content_type == ALERT:
            level, desc = decode_alert(data)
            self.alerts.append((epoch, level, desc))
        elif content_type == APP and epoch == 1:
            self.app.append(data)
        elif content_type == HS:
            for frag in parse_handshake_fragments(data):
                p = self._partial.setdefault(frag.message_seq, _Partial(
                    frag.msg_type, frag.length, bytearray(frag.length),
                    [False] * frag.length))
                end = frag.fragment_offset + len(frag.body)
                p.body[frag.fragment_offset:end] = frag.body
                p.have[frag.fragment_offset:end] = [True] * len(frag.body)

    def _handle(self, msg_type: int, seq: int, body: bytes) -> None:
        if msg_type == HandshakeType.hello_verify_request:
            self.cookie = decode_hello_verify_request(body).cookie
            self._partial.pop(seq)
            self._done.discard(seq)
            return
        if msg_type == HandshakeType.finished:
            h = self.info.prf_hash
            expected = verify_data(h, self.master, b"server finished",
                                   transcript_hash(h, bytes(self.transcript)))
            self.server_finished_ok = body == expected
        elif msg_type == HandshakeType.server_hello:
            sh = decode_server_hello(body)
            self.server_random = sh.random
            self.server_suite = sh.cipher_suite
        elif msg_type == HandshakeType.server_key_exchange:
            self.ske = decode_server_key_exchange(body, self.info.kx)
        elif msg_type == HandshakeType.certificate_request:
            self.certificate_requested = True
        elif msg_type == HandshakeType.server_hello_done:
            self.server_hello_done = True
        self.transcript += transcript_bytes(msg_type, seq, body)


# --- the server under test ---------------------------------------------------------------


@dataclass
class ServerUnderTest:
    """A ServerEndpoint on a fake clock, fed datagrams from one client address."""

    config: DtlsConfig
    clock: FakeClock = field(default_factory=FakeClock)
    addr: tuple[str, int] = CLIENT_ADDR

    def __post_init__(self) -> None:
        self.endpoint = ServerEndpoint(self.config)
        self.app: list[bytes] = []
        self.events: list[Event] = []
        self.last: Association | None = None

    @property
    def assoc(self) -> Association:
        assert self.last is not None, "no association was ever created"
        return self.last

    def send(self, *datagrams: bytes, addr: tuple[str, int] | None = None) -> list[bytes]:
        """Deliver datagrams now; return everything the server sends in reply."""
        out: list[bytes] = []
        for d in datagrams:
            assoc, res = self.endpoint.receive(d, addr or self.addr, self.clock.now,
                                               self.clock.wall)
            if assoc is None:
                out += res
            else:
                self.last = assoc
                self.app += res
            out += self._drain()
        return out

    def _drain(self) -> list[bytes]:
        out: list[bytes] = []
        assocs = list(self.endpoint.associations.values())
        if self.last is not None and self.last not in assocs:
            assocs.append(self.last)
        for a in assocs:
            out += a.datagrams_to_send(self.clock.now)
            self.events += a.pop_events()
        return out

    def advance(self, seconds: float) -> list[bytes]:
        """Let ``seconds`` pass, firing every due timer; return what was sent."""
        target = self.clock.now + seconds
        out: list[bytes] = []
        for _ in range(1000):
            t = self.endpoint.get_timer()
            if t is None or t > target:
                break
            self.clock.advance_to(t)
            self.endpoint.handle_timer(self.clock.now)
            out += self._drain()
        self.clock.advance_to(target)
        return out

    def completed(self) -> bool:
        return any(isinstance(e, HandshakeCompleted) for e in self.events)


# --- conversations shared by the attack tests ---------------------------------------------


def make_client(pki: Pki, mode: str, seed: int = 0) -> ScriptedClient:
    m = MODES[mode]
    return ScriptedClient(
        m.suite, seed=seed,
        psk=PSK if m.psk else None, psk_identity=PSK_IDENTITY if m.psk else None,
        credentials=pki.client if m.mutual else None,
    )


def to_flight4(pki: Pki, mode: str = "psk-aes128", **server_overrides: Any,
               ) -> tuple[ScriptedClient, ServerUnderTest]:
    """CH -> HVR -> CH(cookie) -> ServerHello..ServerHelloDone, all absorbed."""
    _c, s_cfg = configs_for(mode, pki, **server_overrides)
    srv = ServerUnderTest(s_cfg)
    c = make_client(pki, mode)
    hvr = srv.send(c.hs(c.client_hello()))
    assert len(hvr) == 1 and not srv.endpoint.associations
    c.absorb(hvr)
    assert c.cookie
    flight4 = srv.send(c.hs(c.client_hello()))
    c.absorb(flight4)
    assert c.server_hello_done, "no complete server flight"
    assert c.server_suite == int(MODES[mode].suite)
    assert srv.last is not None and not srv.assoc.is_established
    return c, srv


def flight5(c: ScriptedClient, *, certificate: str | None = None, verify: str = "good",
            ) -> tuple[list[bytes], bytes]:
    """The client's key-exchange messages and its Finished, as handshake messages."""
    msgs = c.key_exchange(certificate=certificate, verify=verify)
    return msgs, c.finished()


def complete(pki: Pki, mode: str = "psk-aes128") -> tuple[ScriptedClient, ServerUnderTest,
                                                           list[bytes]]:
    c, srv = to_flight4(pki, mode)
    cert = "valid" if MODES[mode].mutual else None
    msgs, fin = flight5(c, certificate=cert)
    out = srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1))
    c.absorb(out)
    assert srv.assoc.is_established and srv.completed()
    assert c.server_ccs and c.server_finished_ok
    return c, srv, [*msgs, fin]


def drops(assoc: Association) -> dict[str, int]:
    return {k: v for k, v in assoc.stats.as_dict().items() if k not in TRAFFIC}


def assert_only(before: dict[str, int], after: dict[str, int], **moved: int) -> None:
    """Exactly the named drop counters moved, by exactly the given amounts."""
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert delta == moved, f"drop counters moved {delta}, expected {moved}"


def record_types(datagrams: Iterable[bytes]) -> list[int]:
    return [r.content_type for d in datagrams for r in parse_datagram(d)[0]]
