"""Protocol constants, named as in the RFCs.

"Spec" constants are numbers an RFC fixes; "implementation" constants are our
own limits and defaults and are kept in their own section below.
"""

from __future__ import annotations

import enum

from dtlsvpn.errors import AlertDescription as AlertDescription

# --- spec constants -------------------------------------------------------

DTLS_1_2 = 0xFEFD  # RFC 6347 §4.1: {254, 253}
DTLS_1_0 = 0xFEFF  # RFC 4347; HelloVerifyRequest carries it (RFC 6347 §4.2.1)

RECORD_HEADER_LEN = 13  # RFC 6347 §4.1
HANDSHAKE_HEADER_LEN = 12  # RFC 6347 §4.2.2
MAX_PLAINTEXT = 2**14  # RFC 5246 §6.2.1
MAX_CIPHERTEXT = 2**14 + 2048  # RFC 5246 §6.2.3
MAX_SEQ = 2**48 - 1  # RFC 6347 §4.1: 48-bit sequence numbers never wrap


class ContentType(enum.IntEnum):
    """RFC 5246 §6.2.1, RFC 6520 §2, RFC 9146 §4."""

    change_cipher_spec = 20
    alert = 21
    handshake = 22
    application_data = 23
    heartbeat = 24
    tls12_cid = 25


class HandshakeType(enum.IntEnum):
    """RFC 5246 §7.4, RFC 6347 §4.3.2, RFC 5077 §3.3."""

    hello_request = 0
    client_hello = 1
    server_hello = 2
    hello_verify_request = 3
    new_session_ticket = 4
    certificate = 11
    server_key_exchange = 12
    certificate_request = 13
    server_hello_done = 14
    certificate_verify = 15
    client_key_exchange = 16
    finished = 20


class AlertLevel(enum.IntEnum):
    """RFC 5246 §7.2."""

    warning = 1
    fatal = 2


class ExtensionType(enum.IntEnum):
    """IANA TLS ExtensionType values used by the profile (protocol.md)."""

    server_name = 0
    supported_groups = 10  # RFC 8422
    ec_point_formats = 11  # RFC 8422
    signature_algorithms = 13  # RFC 5246 §7.4.1.4.1
    heartbeat = 15  # RFC 6520
    encrypt_then_mac = 22  # RFC 7366 (never negotiated: AEAD only)
    extended_master_secret = 23  # RFC 7627
    session_ticket = 35  # RFC 5077
    connection_id = 54  # RFC 9146
    renegotiation_info = 0xFF01  # RFC 5746


class NamedGroup(enum.IntEnum):
    """RFC 8422 §5.1.1."""

    secp256r1 = 23
    secp384r1 = 24
    x25519 = 29


class SignatureScheme(enum.IntEnum):
    """RFC 8446 §4.2.3 codes, which TLS 1.2 reads as (hash, signature) pairs."""

    rsa_pkcs1_sha256 = 0x0401
    rsa_pkcs1_sha384 = 0x0501
    ecdsa_secp256r1_sha256 = 0x0403
    ecdsa_secp384r1_sha384 = 0x0503
    rsa_pss_rsae_sha256 = 0x0804
    rsa_pss_rsae_sha384 = 0x0805
    ed25519 = 0x0807


class CipherSuite(enum.IntEnum):
    """The AEAD suites of the profile (protocol.md), with IANA names."""

    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 = 0xC02B
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 = 0xC02C
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 = 0xC02F
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 = 0xC030
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCA8
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCA9
    TLS_PSK_WITH_CHACHA20_POLY1305_SHA256 = 0xCCAB
    TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256 = 0xCCAC
    TLS_PSK_WITH_AES_128_GCM_SHA256 = 0x00A8
    TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF  # RFC 5746 §3.3 signalling value


class HeartbeatMessageType(enum.IntEnum):
    """RFC 6520 §3."""

    heartbeat_request = 1
    heartbeat_response = 2


class HeartbeatMode(enum.IntEnum):
    """RFC 6520 §2."""

    peer_allowed_to_send = 1
    peer_not_allowed_to_send = 2


class ClientCertificateType(enum.IntEnum):
    """RFC 5246 §7.4.4, RFC 8422 §5.5."""

    rsa_sign = 1
    ecdsa_sign = 64


class ECCurveType(enum.IntEnum):
    """RFC 8422 §5.4."""

    named_curve = 3


class KeyExchangeKind(enum.Enum):
    """How the premaster secret is agreed and who authenticates."""

    ECDHE_ECDSA = "ECDHE_ECDSA"  # RFC 8422 §2.1
    ECDHE_RSA = "ECDHE_RSA"  # RFC 8422 §2.2
    PSK = "PSK"  # RFC 4279 §2
    ECDHE_PSK = "ECDHE_PSK"  # RFC 5489 §2


# --- implementation constants (our limits, not the RFCs') ---------------------

MAX_HANDSHAKE_MESSAGE = 64 * 1024  # larger handshake messages are refused (security.md B3.3)
MAX_BUFFERED_HANDSHAKE_BYTES = 256 * 1024  # per association, all reassembly buffers together
MAX_FUTURE_MESSAGES = 10  # message_seq window beyond next_receive_seq that is buffered
MAX_CERT_CHAIN = 10  # certificates accepted in a Certificate message
