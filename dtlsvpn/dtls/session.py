"""ClientSession: what a client keeps to resume with a ticket (RFC 5077 §3.1).

The ticket itself is opaque to the client; next to it the client keeps the
suite and master secret of the session it stands for, whether that session
used the extended master secret (RFC 7627 §5.3: resumption is refused
otherwise), and when it expires.  ``encode``/``decode`` give a small
versioned text form for the daemon's ticket store and the debug tools'
``--sess-out``/``--sess-in``; the file holds a master secret, so callers
write it with mode 0600.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from dtlsvpn.errors import DecodeError

_MAGIC = "dtlsvpn-session-v1"


@dataclass(frozen=True, slots=True)
class ClientSession:
    ticket: bytes
    suite: int
    master_secret: bytes = field(repr=False)  # never in a repr, a log or a status line
    ems: bool
    received_at: int  # wall-clock seconds
    lifetime_hint: int  # seconds; 0 = unspecified (RFC 5077 §3.3)

    def usable(self, wall: float, default_lifetime: int = 7 * 86400) -> bool:
        """Worth offering: EMS session, non-empty ticket, not past its hint."""
        life = self.lifetime_hint or default_lifetime
        return self.ems and bool(self.ticket) and wall < self.received_at + life

    def encode(self) -> str:
        return (
            f"{_MAGIC}\nsuite {self.suite:04x}\nems {int(self.ems)}\n"
            f"received_at {self.received_at}\nlifetime_hint {self.lifetime_hint}\n"
            f"master_secret {self.master_secret.hex()}\nticket {self.ticket.hex()}\n"
        )

    @classmethod
    def decode(cls, text: str) -> ClientSession:
        lines = text.strip().splitlines()
        if not lines or lines[0].strip() != _MAGIC:
            raise DecodeError("not a dtlsvpn session file")
        fields: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
        try:
            master = bytes.fromhex(fields["master_secret"])
            if len(master) != 48:
                raise DecodeError("master_secret must be 48 bytes")
            return cls(
                ticket=bytes.fromhex(fields["ticket"]),
                suite=int(fields["suite"], 16),
                master_secret=master,
                ems=fields["ems"] == "1",
                received_at=int(fields["received_at"]),
                lifetime_hint=int(fields["lifetime_hint"]),
            )
        except (KeyError, ValueError, binascii.Error) as exc:
            raise DecodeError(f"bad session file: {exc}") from exc
