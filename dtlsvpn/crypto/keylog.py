"""NSS key log lines, so that Wireshark can decrypt a capture.

Purpose: one ``CLIENT_RANDOM <client_random> <master_secret>`` line per
handshake, in the format NSS defined and OpenSSL, GnuTLS and Wireshark read
(lower-case hex: 64 digits, a space, 96 digits). Opt-in debugging only
(security.md): whoever holds the file can read the tunnel.
"""

from __future__ import annotations

from dtlsvpn.errors import UsageError

_RANDOM_LEN = 32  # RFC 5246 §7.4.1.2
_MASTER_LEN = 48  # RFC 5246 §8.1


def keylog_line(client_random: bytes, master_secret: bytes) -> str:
    """``CLIENT_RANDOM <64 hex> <96 hex>``, without a trailing newline."""
    if len(client_random) != _RANDOM_LEN or len(master_secret) != _MASTER_LEN:
        raise UsageError("keylog needs a 32-byte client random and a 48-byte master secret")
    return f"CLIENT_RANDOM {client_random.hex()} {master_secret.hex()}"
