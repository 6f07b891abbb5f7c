"""Per-association counters.

One int per drop reason plus traffic totals.  The names are the drop-reason
strings used in logs, ``dtlsvpn status`` and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Stats:
    rx_records: int = 0
    rx_bytes: int = 0
    tx_records: int = 0
    tx_bytes: int = 0
    retransmissions: int = 0
    # drop reasons (RFC 6347 §4.1.2.7: invalid records are discarded silently)
    malformed: int = 0  # record or handshake bytes that do not parse
    bad_mac: int = 0  # AEAD authentication failed
    bad_cid: int = 0  # RFC 9146: a record whose CID is not the one we asked for
    replay: int = 0  # duplicate or left of the window (RFC 6347 §4.1.2.6)
    unknown_epoch: int = 0  # no keys for that epoch (yet, or any more)
    early_data: int = 0  # application data before the handshake completed
    unexpected: int = 0  # a record type or message not legal in this state
    buffer_full: int = 0  # a reassembly (bytes, window, 64 pieces) or next-epoch cap reached
    stale_handshake: int = 0  # a handshake message already processed, not an exact repeat
    renegotiation_ignored: int = 0  # a renegotiation attempt not answered (one alert per record)
    after_close: int = 0  # anything that arrived after the association closed
    heartbeat_dropped: int = 0  # not negotiated, during the handshake, or an unknown type
    heartbeat_malformed: int = 0  # RFC 6520 §4 length check failed (Heartbleed-shaped)
    heartbeat_unexpected: int = 0  # a response that answers nothing outstanding
    heartbeat_answered: int = 0  # requests from the peer we responded to
    heartbeats_sent: int = 0  # our keepalive requests (retransmissions included)
    probes_sent: int = 0  # our DPLPMTUD probes
    path_challenges: int = 0  # return-routability checks of an RFC 9146 move (keepalive.py)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
