"""TransportPolicy: which carrier a client's tunnel uses, DTLS/UDP or TLS/TCP, and when to move.

Sans-I/O: the shell reports what happened to each carrier and the time; the policy
answers with :class:`Action` values (dial, close, carry) and a deadline.  DTLS over
UDP is the fast path; TLS over TCP (``dtls/stream.py`` + ``vpn/sp.py``) is the
last resort for networks that block UDP, since TCP inside TCP suffers when the
outer connection loses packets.

Modes (``Transport =`` in the configuration): ``udp`` and ``tcp`` use one carrier
only and never move; ``auto`` (the default) works like this::

    start            -> DIAL_UDP; the UDP attempt has ``udp_timeout`` seconds
    UDP up           -> CARRY_UDP (and CLOSE_TCP when TCP was carrying)
    UDP attempt lost -> DIAL_TCP (no answer within udp_timeout, or the association
    or UDP silent       closed, or the established UDP path received nothing for
                        ``udp_silence`` seconds while we were sending)
    TCP up           -> CARRY_TCP; a UDP probe (DIAL_UDP) every ``probe_interval``
    UDP probe up     -> CARRY_UDP, CLOSE_TCP: back on the fast path
    UDP probe lost   -> nothing moves; the next probe is scheduled
    TCP lost         -> DIAL_UDP again (which falls back to TCP again if need be)

Only one UDP attempt and one TCP attempt exist at a time.  ``carrier`` and
``since`` are what ``status`` shows.  Goal of the defaults: traffic flowing
again within 5 s of UDP being blocked (3 s of silence, then one TCP + TLS
handshake), against OpenConnect's 25 s of DTLS silence.
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
    DIAL_UDP = "dial_udp"
    DIAL_TCP = "dial_tcp"
    CLOSE_UDP = "close_udp"
    CLOSE_TCP = "close_tcp"
    CARRY_UDP = "carry_udp"
    CARRY_TCP = "carry_tcp"


@dataclass(frozen=True, slots=True)
class TransportSettings:
    mode: str = "auto"
    udp_timeout: float = 3.0  # seconds a DTLS handshake may go unanswered before TCP
    udp_silence: float = 3.0  # seconds without an authenticated UDP record while sending
    probe_interval: float = 10.0  # seconds between UDP probes while TCP carries

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"transport mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name in ("udp_timeout", "udp_silence", "probe_interval"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive")


class TransportPolicy:
    """One client's carrier choice (see the module docstring for the rules)."""

    __slots__ = ("_probe_at", "_udp_deadline", "carrier", "settings", "since", "switches",
                 "tcp_active", "udp_active")

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self.carrier: Carrier | None = None  # what carries the tunnel now
        self.since: float | None = None
        self.udp_active = False  # a UDP attempt or association exists
        self.tcp_active = False
        self._udp_deadline: float | None = None  # the UDP attempt must be up by then
        self._probe_at: float | None = None
        self.switches = 0  # carrier changes, for the status

    # --- inputs -------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self.settings.mode == "tcp":
            return self._dial_tcp()
        return self._dial_udp(now)

    def udp_established(self, now: float) -> list[Action]:
        self._udp_deadline = None
        self._probe_at = None
        out = self._carry(Carrier.UDP, now)
        if self.tcp_active:
            self.tcp_active = False
            out.append(Action.CLOSE_TCP)
        return out

    def udp_lost(self, now: float) -> list[Action]:
        """The UDP attempt or association ended (timed out, closed, unresponsive)."""
        was_carrying = self.carrier is Carrier.UDP
        self.udp_active = False
        self._udp_deadline = None
        if was_carrying:
            self.carrier = None
        if self.settings.mode == "udp":
            return []  # the dialler's back-off redials UDP
        if self.tcp_active:
            if self.carrier is Carrier.TCP:
                self._probe_at = now + self.settings.probe_interval  # a probe failed
            return []
        return self._dial_tcp()

    def udp_silent(self, now: float, last_rx: float, last_tx: float) -> list[Action]:
        """Called with the UDP association's last authenticated rx and last tx times:
        sending into silence for ``udp_silence`` seconds means UDP is blocked."""
        s = self.settings
        if (self.carrier is not Carrier.UDP or s.mode != "auto"
                or last_tx <= last_rx or now - last_rx < s.udp_silence):
            return []
        return [Action.CLOSE_UDP, *self.udp_lost(now)]

    def tcp_established(self, now: float) -> list[Action]:
        if self.carrier is Carrier.UDP:
            self.tcp_active = False
            return [Action.CLOSE_TCP]  # UDP came back first
        out = self._carry(Carrier.TCP, now)
        if self.settings.mode == "auto" and not self.udp_active:
            self._probe_at = now + self.settings.probe_interval
        return out

    def tcp_lost(self, now: float) -> list[Action]:
        self.tcp_active = False
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
        times = [t for t in (self._udp_deadline, self._probe_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._udp_deadline is not None and now >= self._udp_deadline:
            # The DTLS handshake got no answer in time: give it up for TCP.
            out += [Action.CLOSE_UDP, *self.udp_lost(now)]
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_at = None
            if self.carrier is Carrier.TCP and not self.udp_active:
                out += self._dial_udp(now)
        return out

    # --- helpers ------------------------------------------------------------------------

    def _dial_udp(self, now: float) -> list[Action]:
        self.udp_active = True
        if self.settings.mode == "auto":
            self._udp_deadline = now + self.settings.udp_timeout
        return [Action.DIAL_UDP]

    def _dial_tcp(self) -> list[Action]:
        self.tcp_active = True
        return [Action.DIAL_TCP]

    def _carry(self, carrier: Carrier, now: float) -> list[Action]:
        if self.carrier is not carrier:
            if self.carrier is not None or self.since is not None:
                self.switches += 1
            self.carrier = carrier
            self.since = now
        return [Action.CARRY_UDP if carrier is Carrier.UDP else Action.CARRY_TCP]
