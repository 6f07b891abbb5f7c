"""Flights: what one side sends in one go, fragmented to the path MTU.

RFC 6347 §4.2.4 groups handshake messages into flights and retransmits a
whole flight on a timer.  A retransmission re-encodes every record with fresh
record sequence numbers (§4.1: sequence numbers never repeat) but keeps the
handshake message_seq values.  The timer follows §4.2.4.1: 1 s initially,
doubled on every expiry up to 60 s, and kept at its backed-off value until a
flight gets through without loss.

Fragmentation (§4.2.3): each handshake message is cut into fragments that fit
the datagram budget; several records share a datagram when they fit; a record
never spans datagrams.  After ``SHRINK_AFTER`` silent retransmissions the
budget shrinks to ``SMALL_MTU`` in case the path MTU is smaller than assumed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dtlsvpn.wire.constants import HANDSHAKE_HEADER_LEN, RECORD_HEADER_LEN, ContentType
from dtlsvpn.wire.handshake import HandshakeFragment, encode_handshake_fragment

CCS = -1  # pseudo msg_type of a ChangeCipherSpec inside a flight
SHRINK_AFTER = 2  # silent retransmissions before fragments get smaller
SMALL_MTU = 548  # 576-byte IPv4 minimum reassembly size minus IP and UDP headers
MIN_FRAGMENT = 64  # start a new datagram rather than send a fragment smaller than this


class FlightState(enum.Enum):
    """RFC 6347 §4.2.4 Figure 3 states."""

    PREPARING = "PREPARING"
    SENDING = "SENDING"
    WAITING = "WAITING"
    FINISHED = "FINISHED"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message of a flight: a handshake message or a CCS, in a given epoch."""

    epoch: int
    msg_type: int
    message_seq: int
    body: bytes


SealRecord = Callable[[int, int, bytes], bytes]  # (content_type, epoch, payload) -> record


def pack_flight(
    messages: Sequence[OutMessage],
    mtu: int,
    record_overhead: Callable[[int], int],
    seal_record: SealRecord,
) -> list[bytes]:
    """Encode a flight as datagrams of at most ``mtu`` bytes each."""
    datagrams: list[bytes] = []
    cur = bytearray()
    for m in messages:
        per_record = RECORD_HEADER_LEN + record_overhead(m.epoch)
        if m.msg_type == CCS:
            if cur and len(cur) + per_record + 1 > mtu:
                datagrams.append(bytes(cur))
                cur = bytearray()
            cur += seal_record(ContentType.change_cipher_spec, m.epoch, b"\x01")
            continue
        body = m.body
        total = len(body)
        offset = 0
        while True:
            space = mtu - len(cur) - per_record - HANDSHAKE_HEADER_LEN
            left = total - offset
            if cur and space < min(left, MIN_FRAGMENT):
                datagrams.append(bytes(cur))
                cur = bytearray()
                continue
            chunk = body[offset:offset + max(space, 1)]
            frag = HandshakeFragment(m.msg_type, total, m.message_seq, offset, chunk)
            cur += seal_record(ContentType.handshake, m.epoch, encode_handshake_fragment(frag))
            offset += len(chunk)
            if offset >= total:
                break
            datagrams.append(bytes(cur))
            cur = bytearray()
    if cur:
        datagrams.append(bytes(cur))
    return datagrams


class FlightTimer:
    """The retransmission timer of RFC 6347 §4.2.4.1."""

    __slots__ = ("deadline", "initial", "maximum", "timeout", "tries")

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.timeout = initial
        self.deadline: float | None = None
        self.tries = 0  # retransmissions of the current flight

    def start(self, now: float) -> None:
        """A new flight went out and expects an answer."""
        if self.tries == 0:
            self.timeout = self.initial  # the last flight got through without loss
        self.tries = 0
        self.deadline = now + self.timeout

    def stop(self) -> None:
        self.deadline = None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def backoff(self, now: float) -> None:
        """The timer fired and the flight is being re-sent: double the timeout."""
        self.tries += 1
        self.timeout = min(self.timeout * 2, self.maximum)
        self.deadline = now + self.timeout
