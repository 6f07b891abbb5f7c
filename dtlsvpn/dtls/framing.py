"""Framing: the few things the handshake machines do differently for DTLS and TLS.

The client and server machines are the same for both transports; a
:class:`Framing` strategy object carries what differs (RFC 6347 §4.2 vs
RFC 5246 §7.4):

=====================  ===============================  ===========================
                       DTLS (``DTLS_FRAMING``)          TLS (``TLS_FRAMING``)
=====================  ===============================  ===========================
version                0xFEFD                           0x0303
transcript header      12 bytes (message_seq, fragment  4 bytes (type, length)
                       offset/length as if whole)
ClientHello            with cookie                      no cookie
HelloVerifyRequest     legal in WAIT_SERVER_HELLO       not a TLS message
record protection      AAD with epoch||seq, 0xFEFD      AAD with implicit seq, 0x0303
=====================  ===============================  ===========================

The record layer itself (datagrams vs a byte stream) is the association's:
``association.py`` for DTLS, ``stream.py`` for TLS.  Session tickets carry
the version of the transport that issued them; both versions resume on both
transports (same suites, same master secret: RFC 5077 binds the session, not
the record layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.crypto.tls_aead import TlsRecordProtection
from dtlsvpn.wire import handshake as hs
from dtlsvpn.wire import tls
from dtlsvpn.wire.constants import DTLS_1_2


def _dtls_transcript(msg_type: int, message_seq: int, body: bytes) -> bytes:
    return hs.transcript_bytes(msg_type, message_seq, body)


def _tls_transcript(msg_type: int, message_seq: int, body: bytes) -> bytes:
    return tls.encode_tls_handshake(msg_type, body)


@dataclass(frozen=True, slots=True)
class Framing:
    """What the machines ask of the transport's flavour of TLS 1.2."""

    name: str
    version: int
    datagram: bool
    transcript_bytes: Callable[[int, int, bytes], bytes]
    encode_client_hello: Callable[[hs.ClientHello], bytes]
    decode_client_hello: Callable[[bytes], hs.ClientHello]
    protection: Callable[[SuiteInfo, bytes, bytes], RecordProtection]

    def refuses_client_version(self, version: int) -> bool:
        """A ClientHello version we do not negotiate down from."""
        if self.datagram:
            return version < DTLS_1_2  # the DTLS check as it always was
        return version < tls.TLS_1_2  # TLS 1.0/1.1 only (RFC 5246 §E.1)


RESUMABLE_VERSIONS = (DTLS_1_2, tls.TLS_1_2)

DTLS_FRAMING = Framing(
    name="dtls", version=DTLS_1_2, datagram=True, transcript_bytes=_dtls_transcript,
    encode_client_hello=hs.encode_client_hello, decode_client_hello=hs.decode_client_hello,
    protection=RecordProtection)

TLS_FRAMING = Framing(
    name="tls", version=tls.TLS_1_2, datagram=False, transcript_bytes=_tls_transcript,
    encode_client_hello=tls.encode_tls_client_hello,
    decode_client_hello=tls.decode_tls_client_hello, protection=TlsRecordProtection)
