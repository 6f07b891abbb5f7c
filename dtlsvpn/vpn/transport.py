"""TransportPolicy: which carrier a client's tunnel uses, DTLS/UDP or TLS/TCP, and when to move.

Sans-I/O: the shell reports what happened to each carrier, samples the UDP
association's counters, and gives the time; the policy answers with :class:`Action`
values (dial, probe, close, carry) and a deadline.  DTLS over UDP is the fast path;
TLS over TCP (``dtls/stream.py`` + ``vpn/sp.py``) is the last resort for networks
that block UDP, since TCP inside TCP suffers when the outer connection loses packets.

Modes (``Transport =`` in the configuration): ``udp`` and ``tcp`` use one carrier
only and never move; ``auto`` (the default) works like this::

    start            -> DIAL_UDP; the UDP attempt has ``udp_timeout`` seconds
    UDP up           -> CARRY_UDP (and CLOSE_TCP when a TCP link exists)
    UDP attempt lost -> DIAL_TCP (no answer within udp_timeout, or the association closed)
    UDP suspect      -> PROBE_UDP + DIAL_TCP: the established association received nothing
                        for ``suspect_after`` seconds while we were sending; a heartbeat
                        goes out at once and TCP + TLS is dialled beside it (a standby)
    probe answered   -> nothing moves (anything authenticated counts: the peer simply
                        had nothing to send); the standby lingers ``standby_linger``
                        seconds, then CLOSE_TCP
    probe unanswered -> CLOSE_UDP and, once the standby is up, CARRY_TCP
    (after probe_timeout)
    TCP up           -> CARRY_TCP when nothing carries; a standby while UDP carries
    while on TCP     -> REDIAL_UDP every ``probe_interval`` seconds (a fresh DTLS dial,
                        resuming by ticket; not the dialler's back-off)
    UDP probe up     -> CARRY_UDP, CLOSE_TCP: back on the fast path
    TCP lost         -> DIAL_UDP again (which falls back to TCP again if need be)

Without heartbeats (the peer did not allow them: ``can_probe`` false) the suspect
association gets ``udp_silence`` seconds in all before the move.  The time line of the
defaults against the inner TCP's retransmissions after a loss (≈0.2, 0.6, 1.4, 3.0 s):
suspect at 1 s, moved at ≈1.6 s on a TCP link dialled at 1 s, so the 3.0 s
retransmission (at the latest) travels over TCP.  OpenConnect waits 25 s.

At most one UDP attempt and one TCP link exist at a time.  ``carrier`` and ``since``
are what ``status`` shows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dtlsvpn.errors import UsageError

MODES = ("auto", "udp", "tcp")


class Carrier(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


class Action(enum.Enum):
    DIAL_UDP = "dial_udp"  # the role's own dial (and its back-off)
    REDIAL_UDP = "redial_udp"  # a fresh DTLS dial now: the UDP probe while TCP carries
    PROBE_UDP = "probe_udp"  # a heartbeat on the established association at once
    DIAL_TCP = "dial_tcp"
    CLOSE_UDP = "close_udp"
    CLOSE_TCP = "close_tcp"
    CARRY_UDP = "carry_udp"
    CARRY_TCP = "carry_tcp"


@dataclass(frozen=True, slots=True)
class TransportSettings:
    mode: str = "auto"
    udp_timeout: float = 3.0  # seconds a DTLS handshake may go unanswered before TCP
    suspect_after: float = 1.0  # seconds of unanswered sending before the heartbeat probe
    probe_timeout: float = 0.6  # seconds that heartbeat may go unanswered before the move
    udp_silence: float = 3.0  # the same in all, when no heartbeat can be sent
    probe_interval: float = 3.0  # seconds between UDP redials while TCP carries
    standby_linger: float = 30.0  # seconds a standby TCP link outlives a false alarm
    sample_every: float = 0.25  # the shell's sampling period: a first unanswered send is
    # dated back to the previous sample (at most this long ago), when it may have gone out

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"transport mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name in ("udp_timeout", "suspect_after", "probe_timeout", "udp_silence",
                     "probe_interval", "standby_linger", "sample_every"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive")


class TransportPolicy:
    """One client's carrier choice (see the module docstring for the rules)."""

    __slots__ = ("_probe_at", "_rx", "_sampled_at", "_standby_until", "_suspect_until", "_tx",
                 "_udp_deadline", "_unanswered", "carrier", "settings", "since", "switches",
                 "tcp_active", "tcp_up", "udp_active")

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self.carrier: Carrier | None = None  # what carries the tunnel now
        self.since: float | None = None
        self.udp_active = False  # a UDP attempt or association exists
        self.tcp_active = False  # a TCP dial or link exists
        self.tcp_up = False  # ... and its TLS handshake completed
        self._udp_deadline: float | None = None  # the UDP attempt must be up by then
        self._probe_at: float | None = None  # next REDIAL_UDP while TCP carries
        self._suspect_until: float | None = None  # the heartbeat probe must be answered
        self._standby_until: float | None = None  # a standby TCP link is closed then
        self._rx: object = None  # the UDP association's receive counter, last sample
        self._tx = 0
        self._unanswered: float | None = None  # our first send since anything came in
        self._sampled_at: float | None = None  # the previous udp_sample
        self.switches = 0  # carrier changes, for the status

    @property
    def suspect(self) -> bool:
        """UDP went quiet while we sent: the heartbeat probe (or the silence) runs."""
        return self._suspect_until is not None

    # --- inputs -------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self.settings.mode == "tcp":
            return self._dial_tcp()
        return self._dial_udp(now)

    def udp_established(self, now: float) -> list[Action]:
        self._udp_deadline = None
        self._probe_at = None
        self._forget_silence()
        self._standby_until = None
        out = self._carry(Carrier.UDP, now)
        if self.tcp_active:
            self.tcp_active = self.tcp_up = False
            out.append(Action.CLOSE_TCP)
        return out

    def udp_lost(self, now: float) -> list[Action]:
        """The UDP attempt or association ended (timed out, closed, unresponsive)."""
        was_carrying = self.carrier is Carrier.UDP
        self.udp_active = False
        self._udp_deadline = None
        self._forget_silence()
        if was_carrying:
            self.carrier = None
        if self.settings.mode == "udp":
            return []  # the dialler's back-off redials UDP
        if not self.tcp_active:
            return self._dial_tcp()
        if self.tcp_up and self.carrier is None:
            return self._carry_tcp(now)  # the standby link is ready: move at once
        return []  # a TCP dial is under way, or TCP carries and a UDP probe failed

    def udp_sample(self, now: float, rx: object, tx: int, *,
                   can_probe: bool = True) -> list[Action]:
        """The established UDP association's receive counter (anything that compares:
        a change means an authenticated record came in) and our send counter."""
        s = self.settings
        if self.carrier is not Carrier.UDP or s.mode != "auto":
            return []
        prev, self._sampled_at = self._sampled_at, now
        if rx != self._rx:
            self._rx, self._tx, self._unanswered = rx, tx, None
            if self._suspect_until is not None:  # answered: UDP is fine after all
                self._suspect_until = None
                if self.tcp_active:
                    self._standby_until = now + s.standby_linger
            return []
        if tx != self._tx:
            self._tx = tx
            if self._unanswered is None:
                self._unanswered = now if prev is None else max(prev, now - s.sample_every)
        since = self._unanswered
        if since is None or self._suspect_until is not None or now - since < s.suspect_after:
            return []
        out = []
        if can_probe:
            self._suspect_until = now + s.probe_timeout
            out.append(Action.PROBE_UDP)
        else:
            self._suspect_until = since + max(s.udp_silence, s.suspect_after + s.probe_timeout)
        self._standby_until = None
        if not self.tcp_active:
            out += self._dial_tcp()
        return out

    def tcp_established(self, now: float) -> list[Action]:
        self.tcp_up = True
        if self.carrier is Carrier.UDP:
            if self._suspect_until is not None or self._standby_until is not None:
                return []  # a standby beside a suspect UDP association
            self.tcp_active = self.tcp_up = False
            return [Action.CLOSE_TCP]  # UDP came back first
        return self._carry_tcp(now)

    def tcp_lost(self, now: float) -> list[Action]:
        self.tcp_active = self.tcp_up = False
        self._standby_until = None
        if self.carrier is Carrier.TCP:
            self.carrier = None
        self._probe_at = None
        if self.settings.mode == "tcp":
            return []  # the dialler's back-off redials TCP
        if self.udp_active:
            return []
        return self._dial_udp(now)

    # --- time ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        times = [t for t in (self._udp_deadline, self._probe_at, self._suspect_until,
                             self._standby_until) if t is not None]
        if self._unanswered is not None and self._suspect_until is None:
            times.append(self._unanswered + self.settings.suspect_after)  # sample then
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._udp_deadline is not None and now >= self._udp_deadline:
            # The DTLS handshake got no answer in time: give it up for TCP.
            out += [Action.CLOSE_UDP, *self.udp_lost(now)]
        if self._suspect_until is not None and now >= self._suspect_until:
            # Sending into silence, and the heartbeat went unanswered: UDP is blocked.
            self._suspect_until = None
            out += [Action.CLOSE_UDP, *self.udp_lost(now)]
        if self._standby_until is not None and now >= self._standby_until:
            self._standby_until = None
            if self.carrier is Carrier.UDP and self.tcp_active:
                self.tcp_active = self.tcp_up = False
                out.append(Action.CLOSE_TCP)  # the false alarm is long over
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_at = None
            if self.carrier is Carrier.TCP:
                self._probe_at = now + self.settings.probe_interval
                self.udp_active = True
                out.append(Action.REDIAL_UDP)
        return out

    # --- helpers ------------------------------------------------------------------------

    def _forget_silence(self) -> None:
        self._sampled_at = None
        self._suspect_until = None
        self._unanswered = None
        self._rx = None

    def _dial_udp(self, now: float) -> list[Action]:
        self.udp_active = True
        if self.settings.mode == "auto":
            self._udp_deadline = now + self.settings.udp_timeout
        return [Action.DIAL_UDP]

    def _dial_tcp(self) -> list[Action]:
        self.tcp_active = True
        return [Action.DIAL_TCP]

    def _carry_tcp(self, now: float) -> list[Action]:
        self._standby_until = None
        if self.settings.mode == "auto":
            self._probe_at = now + self.settings.probe_interval
        return self._carry(Carrier.TCP, now)

    def _carry(self, carrier: Carrier, now: float) -> list[Action]:
        if self.carrier is not carrier:
            if self.carrier is not None or self.since is not None:
                self.switches += 1
            self.carrier = carrier
            self.since = now
        return [Action.CARRY_UDP if carrier is Carrier.UDP else Action.CARRY_TCP]
