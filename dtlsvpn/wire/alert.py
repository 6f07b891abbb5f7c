"""Alert codec (RFC 5246 §7.2).

::

    struct { AlertLevel level; AlertDescription description; } Alert;

An alert record carries exactly these two bytes.  The values are returned as
integers, unchecked: an unknown description is still an alert to act on (RFC
5246 §7.2 leaves unknown values to the receiver), and which alerts end the
association is the record layer's decision.  RFC 6347 §4.1.2.7: a malformed
alert record is dropped like any other invalid record, so the only error here is
:class:`DecodeError`.
"""

from __future__ import annotations

from dtlsvpn.errors import DecodeError

__all__ = ["ALERT_LEN", "decode_alert", "encode_alert"]

ALERT_LEN = 2


def encode_alert(level: int, description: int) -> bytes:
    """The two-byte alert body."""
    return bytes((level, description))


def decode_alert(data: bytes) -> tuple[int, int]:
    """``(level, description)`` from an alert record's plaintext of exactly two bytes."""
    if len(data) != ALERT_LEN:
        raise DecodeError(f"alert of {len(data)} bytes, expected {ALERT_LEN}")
    return data[0], data[1]
