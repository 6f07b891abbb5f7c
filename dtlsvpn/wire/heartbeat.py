"""Heartbeat message codec (RFC 6520 §4).

::

    struct {
        HeartbeatMessageType type;      /* request(1), response(2) */
        uint16 payload_length;
        opaque payload[payload_length];
        opaque padding[padding_length]; /* the rest of the record, >= 16 bytes */
    } HeartbeatMessage;

The whole record plaintext is one message: padding_length is not on the wire
but is what is left, ``len(plaintext) - payload_length - 3``.

Invariants (the Heartbleed lesson, security.md B2, CVE-2014-0160):

- ``decode_heartbeat`` never trusts ``payload_length``: a message whose
  payload plus the 16-byte minimum padding does not fit in the bytes actually
  received raises :class:`DecodeError`, which the caller turns into a silent
  drop (RFC 6520 §4).  The returned payload is a copy of bytes that were
  present, never more.
- The message type is returned raw; the caller discards unknown types silently
  (RFC 6520 §3 lists only request and response).
- The codec raises only :class:`DecodeError` on input; ``encode_heartbeat``
  raises :class:`UsageError` for a message we must not send.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtlsvpn.errors import DecodeError, UsageError

__all__ = [
    "HEADER_LEN",
    "MAX_HEARTBEAT_LEN",
    "MIN_PADDING",
    "HeartbeatMessage",
    "decode_heartbeat",
    "encode_heartbeat",
    "heartbeat_length",
]

HEADER_LEN = 3  # type (1) + payload_length (2)
MIN_PADDING = 16  # RFC 6520 §4: padding_length MUST be at least 16
MAX_HEARTBEAT_LEN = 2**14  # RFC 6520 §4: total length MUST NOT exceed 2^14


@dataclass(frozen=True, slots=True)
class HeartbeatMessage:
    """A decoded heartbeat: the raw type byte and the payload (padding dropped)."""

    type: int
    payload: bytes


def heartbeat_length(payload_len: int, padding_len: int) -> int:
    """Plaintext length of a message with that payload and padding."""
    return HEADER_LEN + payload_len + padding_len


def decode_heartbeat(plaintext: bytes, max_length: int = MAX_HEARTBEAT_LEN) -> HeartbeatMessage:
    """Parse one heartbeat record plaintext.

    Raises :class:`DecodeError` when the record is longer than ``max_length``
    (2^14, or a negotiated max_fragment_length), shorter than a header plus the
    minimum padding, or when ``payload_length`` leaves fewer than 16 bytes of
    padding.  The padding itself is ignored (RFC 6520 §4: it MUST be ignored).
    """
    n = len(plaintext)
    if n > max_length:
        # RFC 6520 §4: the total length MUST NOT exceed 2^14 (or max_fragment_length).
        raise DecodeError(f"heartbeat of {n} bytes exceeds {max_length}")
    if n < HEADER_LEN + MIN_PADDING:
        raise DecodeError(f"heartbeat of {n} bytes is shorter than header + minimum padding")
    payload_length = (plaintext[1] << 8) | plaintext[2]
    if HEADER_LEN + payload_length + MIN_PADDING > n:
        # RFC 6520 §4: a payload_length that is too large MUST be discarded silently;
        # padding_length = length - payload_length - 3 MUST be >= 16.
        raise DecodeError(f"payload_length {payload_length} does not fit in {n} bytes")
    return HeartbeatMessage(plaintext[0], bytes(plaintext[HEADER_LEN:HEADER_LEN + payload_length]))


def encode_heartbeat(
    type: int, payload: bytes, padding: bytes, max_length: int = MAX_HEARTBEAT_LEN
) -> bytes:
    """Build a heartbeat record plaintext.

    ``padding`` must be fresh random bytes from the caller (RFC 6520 §4: the
    sender MUST use random padding of at least 16 bytes).  A response carries
    the request's payload exactly and new padding of its own, whatever the
    request's padding was.
    """
    if not 0 <= type <= 0xFF:
        raise UsageError(f"heartbeat type {type} out of range")
    if len(payload) > 0xFFFF:
        raise UsageError(f"heartbeat payload of {len(payload)} bytes does not fit uint16")
    if len(padding) < MIN_PADDING:
        raise UsageError(f"heartbeat padding of {len(padding)} bytes, need >= {MIN_PADDING}")
    total = heartbeat_length(len(payload), len(padding))
    if total > max_length:
        raise UsageError(f"heartbeat of {total} bytes exceeds {max_length}")
    return bytes((type, len(payload) >> 8, len(payload) & 0xFF)) + payload + padding
