"""ServerKeyExchange and ClientKeyExchange codecs: their shape follows the key exchange.

Each message is a frozen dataclass with ``pull_<name>(r, kx)``, ``decode_<name>(body, kx)``
(whole body, no trailing bytes) and ``encode_<name>(msg, kx)``, where ``kx`` is the
negotiated suite's :class:`~dtlsvpn.wire.constants.KeyExchangeKind`:

* ECDHE_ECDSA / ECDHE_RSA: ServerKeyExchange carries ``ServerECDHParams`` (named curve
  only) and a signature with its scheme (RFC 8422 §5.4); ClientKeyExchange the client's
  ECDH point (RFC 8422 §5.7).
* PSK: ServerKeyExchange is the identity hint alone; ClientKeyExchange the PSK identity
  (RFC 4279 §2).
* ECDHE_PSK: the hint, then the ECDH parameters unsigned; the identity, then the point
  (RFC 5489 §2).

Invariants as in :mod:`dtlsvpn.wire.handshake`: decoders raise only DecodeError and check
every vector against its bounds; encoders raise UsageError on what the wire can't carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.buffer import Reader, Writer
from dtlsvpn.wire.constants import ECCurveType, KeyExchangeKind

__all__ = [
    "ClientKeyExchange",
    "ServerKeyExchange",
    "decode_client_key_exchange",
    "decode_server_key_exchange",
    "encode_client_key_exchange",
    "encode_server_key_exchange",
    "pull_client_key_exchange",
    "pull_server_key_exchange",
]


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise UsageError(what)


# --- ServerKeyExchange (RFC 5246 §7.4.3, RFC 8422 §5.4, RFC 4279 §2, RFC 5489 §2) --------


@dataclass(frozen=True, slots=True)
class ServerKeyExchange:
    """The fields present depend on the key exchange:

    * ECDHE_ECDSA / ECDHE_RSA: group, public, scheme, signature;
    * PSK: psk_identity_hint only;
    * ECDHE_PSK: psk_identity_hint, group, public (no signature, RFC 5489 §2).
    """

    psk_identity_hint: bytes | None
    group: int | None
    public: bytes | None
    scheme: int | None
    signature: bytes | None

    def params_bytes(self) -> bytes:
        """The ServerECDHParams as encoded on the wire: the bytes that are signed
        (after client_random + server_random, RFC 8422 §5.4)."""
        _require(self.group is not None and self.public is not None, "no ECDH parameters")
        assert self.group is not None and self.public is not None
        w = Writer()
        _push_ecdh_params(w, self.group, self.public)
        return w.data()


def _push_ecdh_params(w: Writer, group: int, public: bytes) -> None:
    _require(bool(public), "empty ECDH public value")
    w.push_uint8(ECCurveType.named_curve)
    w.push_uint16(group)
    w.push_opaque8(public)


def _pull_ecdh_params(r: Reader) -> tuple[int, bytes]:
    # RFC 8422 §5.4: ECParameters { ECCurveType curve_type; NamedCurve namedcurve; }
    curve_type = r.pull_uint8()
    if curve_type != ECCurveType.named_curve:
        raise DecodeError(f"curve_type {curve_type} is not named_curve")
    group = r.pull_uint16()
    public = r.pull_opaque8()  # ECPoint: opaque point <1..2^8-1>
    if not public:
        raise DecodeError("empty ECDH public value")
    return group, public


def pull_server_key_exchange(r: Reader, kx: KeyExchangeKind) -> ServerKeyExchange:
    hint: bytes | None = None
    group: int | None = None
    public: bytes | None = None
    scheme: int | None = None
    signature: bytes | None = None
    if kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK):
        hint = r.pull_opaque16()  # RFC 4279 §2: opaque psk_identity_hint<0..2^16-1>
    if kx is not KeyExchangeKind.PSK:
        group, public = _pull_ecdh_params(r)
    if kx in (KeyExchangeKind.ECDHE_ECDSA, KeyExchangeKind.ECDHE_RSA):
        # RFC 5246 §4.7 digitally-signed: SignatureAndHashAlgorithm, opaque<0..2^16-1>
        scheme = r.pull_uint16()
        signature = r.pull_opaque16()
    return ServerKeyExchange(hint, group, public, scheme, signature)


def decode_server_key_exchange(body: bytes, kx: KeyExchangeKind) -> ServerKeyExchange:
    r = Reader(body)
    msg = pull_server_key_exchange(r, kx)
    r.expect_end("ServerKeyExchange")
    return msg


def encode_server_key_exchange(msg: ServerKeyExchange, kx: KeyExchangeKind) -> bytes:
    w = Writer()
    if kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK):
        _require(msg.psk_identity_hint is not None, "PSK key exchange needs an identity hint")
        assert msg.psk_identity_hint is not None
        w.push_opaque16(msg.psk_identity_hint)
    if kx is not KeyExchangeKind.PSK:
        w.push_bytes(msg.params_bytes())
    if kx in (KeyExchangeKind.ECDHE_ECDSA, KeyExchangeKind.ECDHE_RSA):
        _require(msg.scheme is not None and msg.signature is not None, "no signature")
        assert msg.scheme is not None and msg.signature is not None
        w.push_uint16(msg.scheme)
        w.push_opaque16(msg.signature)
    return w.data()



# --- ClientKeyExchange (RFC 5246 §7.4.7, RFC 8422 §5.7, RFC 4279 §2, RFC 5489 §2) --------


@dataclass(frozen=True, slots=True)
class ClientKeyExchange:
    """ECDHE: public only; PSK: psk_identity only; ECDHE_PSK: both."""

    psk_identity: bytes | None
    public: bytes | None


def pull_client_key_exchange(r: Reader, kx: KeyExchangeKind) -> ClientKeyExchange:
    identity: bytes | None = None
    public: bytes | None = None
    if kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK):
        identity = r.pull_opaque16()  # RFC 4279 §2: opaque psk_identity<0..2^16-1>
    if kx is not KeyExchangeKind.PSK:
        public = r.pull_opaque8()  # RFC 8422 §5.7: opaque point <1..2^8-1>
        if not public:
            raise DecodeError("empty ECDH public value")
    return ClientKeyExchange(identity, public)


def decode_client_key_exchange(body: bytes, kx: KeyExchangeKind) -> ClientKeyExchange:
    r = Reader(body)
    msg = pull_client_key_exchange(r, kx)
    r.expect_end("ClientKeyExchange")
    return msg


def encode_client_key_exchange(msg: ClientKeyExchange, kx: KeyExchangeKind) -> bytes:
    w = Writer()
    if kx in (KeyExchangeKind.PSK, KeyExchangeKind.ECDHE_PSK):
        _require(msg.psk_identity is not None, "PSK key exchange needs an identity")
        assert msg.psk_identity is not None
        w.push_opaque16(msg.psk_identity)
    if kx is not KeyExchangeKind.PSK:
        _require(bool(msg.public), "ECDHE key exchange needs a public value")
        assert msg.public is not None
        w.push_opaque8(msg.public)
    return w.data()
