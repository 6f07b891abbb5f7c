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

:class:`Retransmitter` holds our side of §4.2.4 Figure 3: the last flight,
its state and timer.  A flight that expects an answer is WAITING with the
timer running; the final flight of a handshake is FINISHED and untimed.
Either is re-sent when the peer repeats its own last flight (our flight was
lost), at most once per ``REPEAT_RESEND_GAP``.  After
``max_retransmissions`` silent expiries the handshake has timed out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dtlsvpn.dtls.stats import Stats
from dtlsvpn.wire.constants import HANDSHAKE_HEADER_LEN, RECORD_HEADER_LEN, ContentType
from dtlsvpn.wire.handshake import HandshakeFragment, encode_handshake_fragment

CCS = -1  # pseudo msg_type of a ChangeCipherSpec inside a flight
SHRINK_AFTER = 2  # silent retransmissions before fragments get smaller
SMALL_MTU = 548  # 576-byte IPv4 minimum reassembly size minus IP and UDP headers
MIN_FRAGMENT = 64  # start a new datagram rather than send a fragment smaller than this
REPEAT_RESEND_GAP = 0.125  # seconds between two re-sends triggered by the peer's repeats


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


class Retransmitter:
    """Our last flight, its RFC 6347 §4.2.4 state and its retransmission timer."""

    __slots__ = ("_flight", "_last_repeat_resend", "_max_tries", "_mtu", "_stats",
                 "_transmit", "state", "timer")

    def __init__(self, *, initial: float, maximum: float, max_retransmissions: int, mtu: int,
                 stats: Stats, transmit: Callable[[Sequence[OutMessage], int], None]) -> None:
        self.timer = FlightTimer(initial, maximum)
        self.state = FlightState.PREPARING
        self._flight: list[OutMessage] = []
        self._last_repeat_resend = float("-inf")
        self._max_tries = max_retransmissions
        self._mtu = mtu
        self._stats = stats
        self._transmit = transmit  # (messages, datagram budget): seal and queue them

    def send(self, messages: list[OutMessage], now: float, *, expect_reply: bool) -> None:
        """A new flight goes out: timed when it expects an answer, else final."""
        self._flight = messages
        self._transmit(messages, self._mtu)
        if expect_reply:
            self.state = FlightState.WAITING
            self.timer.start(now)
        else:
            self.state = FlightState.FINISHED
            self.timer.stop()

    def finish(self) -> None:
        """The handshake completed: nothing more is timed."""
        if self.state is FlightState.WAITING:
            self.state = FlightState.FINISHED
        self.timer.stop()

    def on_timer(self, now: float) -> bool:
        """The timer expired: re-send the flight; False when no retry is left."""
        timer = self.timer
        if timer.tries >= self._max_tries:
            return False
        timer.backoff(now)
        self._stats.retransmissions += 1
        mtu = self._mtu
        if timer.tries >= SHRINK_AFTER:
            mtu = min(mtu, SMALL_MTU)
        self._transmit(self._flight, mtu)
        return True

    def on_peer_repeat(self, now: float) -> None:
        """The peer re-sent its last flight, so ours was lost: re-send it (rate-limited)."""
        if not self._flight or now - self._last_repeat_resend < REPEAT_RESEND_GAP:
            return
        if self.state not in (FlightState.WAITING, FlightState.FINISHED):
            return
        self._last_repeat_resend = now
        self._stats.retransmissions += 1
        self._transmit(self._flight, self._mtu)
