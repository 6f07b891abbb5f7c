"""A stream of numbered inner packets both ways, and what became of each one.

Each inner packet is ``PACKET_SIZE`` bytes and carries its direction, its sequence
number and the generation of the association that sealed it (0 = the first
handshake, n = after n rekeys).  The simulator seals and sends one packet each way
every ``period`` while the stream runs (``PacketStream.take_tick``), records the
link's fate of the datagram that carried it, and reports every inner packet any
``receive_datagram`` returned (``note_received``).  "Lost" means sent and never
returned, so losses can be told from the link's drops.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PERIOD = 0.05  # one inner packet each way per period
PACKET_SIZE = 120
DIRECTIONS = ("c2s", "s2c")

_PKT = struct.Struct("!cIQ")  # direction tag, sender's generation, sequence number


@dataclass(slots=True)
class Packet:
    """One numbered inner packet and what the link did to the datagram carrying it."""

    direction: str  # "c2s" | "s2c"
    seq: int
    generation: int  # which association (0 = the first, n = after n rekeys) sealed it
    sent_at: float
    fate: str  # the link's fate of its datagram: delivered, dropped, ...


def payload(direction: str, generation: int, seq: int) -> bytes:
    head = _PKT.pack(b"C" if direction == "c2s" else b"S", generation, seq)
    return head + bytes(PACKET_SIZE - len(head))


def parse_payload(data: bytes) -> tuple[str, int, int] | None:
    if len(data) != PACKET_SIZE:
        return None
    tag, generation, seq = _PKT.unpack_from(data)
    return ("c2s" if tag == b"C" else "s2c"), generation, seq


class PacketStream:
    """The numbered packets of both directions: the schedule, what was sent, what arrived."""

    def __init__(self) -> None:
        self.packets: dict[tuple[str, int], Packet] = {}
        self._next_seq = dict.fromkeys(DIRECTIONS, 0)
        self._received: dict[str, Counter[int]] = {d: Counter() for d in DIRECTIONS}
        self._tick: float | None = None
        self._until = 0.0
        self._period = PERIOD

    # --- the schedule ------------------------------------------------------------------

    def start(self, now: float, seconds: float, period: float = PERIOD) -> None:
        """One packet each way every ``period`` for ``seconds``, from ``now``."""
        self._period = period
        self._tick = now
        self._until = now + seconds

    def next_time(self) -> float | None:
        return self._tick

    def take_tick(self, now: float) -> bool:
        """True (and the schedule moves on) if a packet each way is due at ``now``."""
        if self._tick is None or self._tick > now:
            return False
        self._tick += self._period
        if self._tick > self._until:
            self._tick = None
        return True

    # --- bookkeeping ---------------------------------------------------------------------

    def next_payload(self, direction: str, generation: int) -> bytes:
        return payload(direction, generation, self._next_seq[direction])

    def record(self, direction: str, generation: int, sent_at: float, fate: str) -> Packet:
        """The packet ``next_payload`` built was sent; its datagram's fate was ``fate``."""
        seq = self._next_seq[direction]
        self._next_seq[direction] = seq + 1
        pkt = Packet(direction, seq, generation, sent_at, fate)
        self.packets[direction, seq] = pkt
        return pkt

    def note_received(self, direction: str, inner: Iterable[bytes]) -> None:
        """Inner packets the receiver of ``direction`` got from one datagram."""
        for data in inner:
            parsed = parse_payload(data)
            if parsed is not None and parsed[0] == direction:
                self._received[direction][parsed[2]] += 1

    # --- views ---------------------------------------------------------------------------

    def sent(self, direction: str) -> list[Packet]:
        return [p for (d, _), p in sorted(self.packets.items()) if d == direction]

    def received(self, direction: str) -> Counter[int]:
        """Sequence numbers of one direction's packets as delivered, with multiplicity."""
        return Counter(self._received[direction])

    def lost(self, direction: str, packets: Iterable[Packet] | None = None) -> list[Packet]:
        got = self._received[direction]
        pkts = self.sent(direction) if packets is None else packets
        return [p for p in pkts if got[p.seq] == 0]

    def per_generation(self) -> list[str]:
        """Packets sent/delivered per sending generation, both directions."""
        lines = []
        for g in sorted({p.generation for p in self.packets.values()}):
            parts = []
            for d in DIRECTIONS:
                got = self._received[d]
                pk = [p for p in self.sent(d) if p.generation == g]
                linked = [p for p in pk if p.fate == "delivered"]
                parts.append(f"{d} sent {len(pk):4d} link-delivered {len(linked):4d} "
                             f"decrypted {sum(1 for p in pk if got[p.seq]):4d}")
            lines.append(f"gen {g}: " + " | ".join(parts))
        return lines
