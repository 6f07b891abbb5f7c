"""Session tickets: the sealed session state and the server's ticket key ring.

Purpose: stateless resumption (RFC 5077). The server puts what it needs to
resume a session into a :class:`TicketState`, seals it with a
:class:`TicketKeyRing` and hands the result to the client as an opaque ticket;
when the client offers it back, :meth:`TicketKeyRing.open` gives the state back
or None, and None means a full handshake (protocol.md "Session tickets and
resumption").

Invariants:
- Ticket layout, after RFC 5077 §4's recommended construction (key_name,
  IV, encrypted_state, MAC) with one AEAD in place of AES-CBC + HMAC::

      key_name (16) || nonce (12) || AES-256-GCM(k, nonce, state, aad=key_name)

  where the ciphertext carries GCM's 16-byte tag. ``key_name`` picks the key,
  as in RFC 5077 §4; as the AAD it is authenticated too. The whole ticket fits
  the ``ticket<0..2^16-1>`` of RFC 5077 §3.3 for every valid state.
- The AEAD key is derived per ticket key: k = HKDF-Expand-SHA256(secret,
  "dtlsvpn ticket key v1" || key_name, 32) (RFC 5869 §2.3, one block; the
  extract step is skipped because the secret is already 32 uniformly random
  bytes, RFC 5869 §3.3). Nonces are random: a ring that rotates seals at most
  ``rotate_every`` seconds' worth of tickets under one key, far below the 2^32
  invocations NIST SP 800-38D §8.3 allows for random 96-bit IVs.
- :meth:`TicketKeyRing.open` never raises on remote input: short or garbage
  bytes, an unknown key name (foreign, or rotated out), a bad tag, an
  undecodable state, an expired ticket and one issued in the future all give
  None, and the caller falls back to a full handshake (RFC 5077 §3.4).
- Rotation is lazy: :meth:`~TicketKeyRing.seal` (or :meth:`~TicketKeyRing.maintain`)
  makes a new current key once the newest one is older than ``rotate_every``
  seconds. A key therefore seals only during its first ``rotate_every`` seconds,
  and a ticket lives at most ``ticket_lifetime`` seconds, so a key is retired
  once older than ``rotate_every + ticket_lifetime``: every ticket it sealed has
  expired by then. ``rotate_every=0`` disables rotation and retirement alike
  (a fixed deployment key, or a ring that only reads the file another server
  writes).
- Times are wall-clock seconds (tickets outlive processes and cross machines),
  passed in by the caller; nothing here reads a clock.
- Key file text (:meth:`~TicketKeyRing.dumps`, :func:`parse_keys`): one key per
  line, oldest first, the last line being the current key::

      # comment
      <key_name: 32 hex digits> <created: decimal wall seconds> <secret: 64 hex digits>

  Blank lines and lines starting with ``#`` are ignored.  This module only turns keys
  into that text and back; reading and writing the file (mode 0600, atomic replace,
  reload on change) is the shell's, :mod:`dtlsvpn.daemon.ticketkeys`.  Nothing here
  does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.buffer import Reader, Writer

KEY_NAME_LEN = 16  # RFC 5077 §4: opaque key_name[16]
KEY_SECRET_LEN = 32
NONCE_LEN = 12  # GCM's 96-bit IV (NIST SP 800-38D §5.2.1.1)
TAG_LEN = 16
TICKET_OVERHEAD = KEY_NAME_LEN + NONCE_LEN + TAG_LEN
MAX_TICKET_LEN = 0xFFFF  # RFC 5077 §3.3: opaque ticket<0..2^16-1>
MASTER_SECRET_LEN = 48  # RFC 5246 §8.1

STATE_FORMAT = 2
"""First byte of an encoded :class:`TicketState`; a new layout gets a new number (1 had
no ``binding``: such a ticket no longer decodes, and its client gets a full handshake)."""

MAX_BINDING_LEN = 32
# format(1) version(2) suite(2) flags(1) issued_at(8) lifetime(4) master_secret(48) id_len(2)
# binding_len(1): the shortest state; the longest adds the identity and a 32-byte binding
_FIXED_STATE_LEN = 1 + 2 + 2 + 1 + 8 + 4 + MASTER_SECRET_LEN + 2 + 1
MAX_PEER_IDENTITY_LEN = MAX_TICKET_LEN - TICKET_OVERHEAD - _FIXED_STATE_LEN - MAX_BINDING_LEN
"""The longest peer identity whose ticket still fits RFC 5077's 16-bit length."""

_FLAG_EMS = 0x01

FUTURE_SKEW = 60
"""Seconds a ticket's issue time may lie ahead of our clock (skew between servers)."""

DEFAULT_ROTATE_EVERY = 3600
DEFAULT_TICKET_LIFETIME = 86400 // 2
"""12 hours: half the 24-hour upper limit that RFC 5246 §F.1.4 suggests for
session IDs, since whoever steals a master secret can resume until its ticket
expires; RFC 5077 §5.6 leaves the choice to the server."""

_KDF_LABEL = b"dtlsvpn ticket key v1"
_MAX_U32 = 0xFFFFFFFF
_MAX_U64 = (1 << 64) - 1
_KEY_LINE = re.compile(r"([0-9a-fA-F]{32})\s+([0-9]{1,20})\s+([0-9a-fA-F]{64})")


@dataclass(frozen=True, slots=True)
class TicketState:
    """What a ticket binds: enough to resume, and to check the resumption is allowed.

    ``peer_identity`` is what the server authenticated in the full handshake:
    SHA-256 of the client's leaf certificate DER, ``b"psk:" + identity`` for a
    PSK client, or ``b""`` for an anonymous client. ``issued_at`` is the wall
    clock (seconds) when the ticket was made; ``lifetime`` is in seconds.
    ``binding`` is a digest of what the server authenticated that identity by (the
    PSK, the CA set): a ticket resumes only while it is unchanged.
    """

    version: int
    suite: int
    master_secret: bytes = field(repr=False)
    ems: bool
    peer_identity: bytes
    issued_at: int
    lifetime: int
    binding: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFFFF or not 0 <= self.suite <= 0xFFFF:
            raise UsageError("ticket state: version and suite are 16-bit values")
        if len(self.master_secret) != MASTER_SECRET_LEN:
            raise UsageError(f"ticket state: master secret must be {MASTER_SECRET_LEN} bytes")
        if not isinstance(self.ems, bool):
            raise UsageError("ticket state: ems must be a bool")
        if len(self.peer_identity) > MAX_PEER_IDENTITY_LEN:
            raise UsageError(f"ticket state: peer identity over {MAX_PEER_IDENTITY_LEN} bytes")
        if not 0 <= self.issued_at <= _MAX_U64:
            raise UsageError("ticket state: issued_at out of range")
        if not 0 <= self.lifetime <= _MAX_U32:
            raise UsageError("ticket state: lifetime out of range")
        if len(self.binding) > MAX_BINDING_LEN:
            raise UsageError(f"ticket state: binding over {MAX_BINDING_LEN} bytes")

    def encode(self) -> bytes:
        """format(1) version(2) suite(2) flags(1) issued_at(8) lifetime(4)
        master_secret(48) peer_identity<0..2^16-1> binding<0..32>; big-endian, no
        padding."""
        w = Writer()
        w.push_uint8(STATE_FORMAT)
        w.push_uint16(self.version)
        w.push_uint16(self.suite)
        w.push_uint8(_FLAG_EMS if self.ems else 0)
        w.push_uint64(self.issued_at)
        w.push_uint32(self.lifetime)
        w.push_bytes(self.master_secret)
        w.push_opaque16(self.peer_identity)
        w.push_opaque8(self.binding)
        return w.data()

    @classmethod
    def decode(cls, data: bytes) -> TicketState:
        """The inverse of :meth:`encode`; raises only :class:`DecodeError`."""
        r = Reader(data)
        fmt = r.pull_uint8()
        if fmt != STATE_FORMAT:
            raise DecodeError(f"unknown ticket state format {fmt}")
        version = r.pull_uint16()
        suite = r.pull_uint16()
        flags = r.pull_uint8()
        if flags & ~_FLAG_EMS:
            raise DecodeError(f"reserved ticket state flags set: {flags:#04x}")
        issued_at = r.pull_uint64()
        lifetime = r.pull_uint32()
        master = r.pull_bytes(MASTER_SECRET_LEN)
        identity = r.pull_opaque16()
        binding = r.pull_opaque8()
        r.expect_end("ticket state")
        if len(identity) > MAX_PEER_IDENTITY_LEN:
            raise DecodeError("ticket state: peer identity too long")
        if len(binding) > MAX_BINDING_LEN:
            raise DecodeError("ticket state: binding too long")
        return cls(version, suite, master, bool(flags & _FLAG_EMS), identity, issued_at,
                   lifetime, binding)


@dataclass(frozen=True, slots=True)
class TicketKey:
    """One ticket protection key: a public name, a secret, and its creation time."""

    key_name: bytes
    secret: bytes = field(repr=False)
    created: int

    def __post_init__(self) -> None:
        if len(self.key_name) != KEY_NAME_LEN:
            raise UsageError(f"ticket key name must be {KEY_NAME_LEN} bytes")
        if len(self.secret) != KEY_SECRET_LEN:
            raise UsageError(f"ticket key secret must be {KEY_SECRET_LEN} bytes")
        if not 0 <= self.created <= _MAX_U64:
            raise UsageError("ticket key creation time out of range")

    def aead_key(self) -> bytes:
        """HKDF-Expand-SHA256(secret, label || key_name, 32): one HMAC block."""
        return hmac.digest(self.secret, _KDF_LABEL + self.key_name + b"\x01", hashlib.sha256)


class TicketKeyRing:
    """The server's ticket keys: the newest seals, every live one opens.

    ``random_bytes(n)`` supplies key material and nonces (``os.urandom`` in
    production, a seeded generator in tests). ``rotate_every`` (seconds, 0 =
    never) is how long a key stays current; ``ticket_lifetime`` (seconds,
    default :data:`DEFAULT_TICKET_LIFETIME`) bounds every ticket and is the
    NewSessionTicket lifetime hint. ``keys`` (oldest first) seeds the ring;
    without keys, the first :meth:`seal` makes one.
    """

    __slots__ = ("_aeads", "_keys", "_random_bytes", "_rotate_every", "_ticket_lifetime")

    def __init__(
        self,
        random_bytes: Callable[[int], bytes],
        *,
        rotate_every: int = DEFAULT_ROTATE_EVERY,
        ticket_lifetime: int = DEFAULT_TICKET_LIFETIME,
        keys: Sequence[TicketKey] | None = None,
    ) -> None:
        if rotate_every < 0:
            raise UsageError("rotate_every must be 0 (never) or positive")
        if not 0 < ticket_lifetime <= _MAX_U32:
            raise UsageError("ticket_lifetime must be 1..2^32-1 seconds (RFC 5077 §3.3)")
        self._random_bytes = random_bytes
        self._rotate_every = int(rotate_every)
        self._ticket_lifetime = int(ticket_lifetime)
        self._keys: list[TicketKey] = []
        self._aeads: dict[bytes, AESGCM] = {}
        self.replace_keys(keys or ())

    # --- key set -----------------------------------------------------------

    def replace_keys(self, keys: Sequence[TicketKey]) -> None:
        """Make ``keys`` (oldest first, the last current) the whole key set.

        For a ring that follows a key file another server writes; :class:`UsageError`
        on a repeated key name, and then the keys stay as they were.
        """
        names = [k.key_name for k in keys]
        if len(set(names)) != len(names):
            raise UsageError("duplicate ticket key name")
        self._keys = list(keys)
        self._aeads = {k.key_name: AESGCM(k.aead_key()) for k in self._keys}

    def _random(self, n: int) -> bytes:
        out = self._random_bytes(n)
        if len(out) != n:
            raise UsageError("random_bytes returned the wrong length")
        return out

    def _retire(self, wall: float) -> bool:
        if self._rotate_every == 0:
            return False
        horizon = self._rotate_every + self._ticket_lifetime
        live = [k for k in self._keys if wall - k.created <= horizon]
        if len(live) == len(self._keys):
            return False
        for k in self._keys:
            if k not in live:
                del self._aeads[k.key_name]
        self._keys = live
        return True

    def _rotate(self, wall: float) -> bool:
        if self._keys and (
            self._rotate_every == 0 or wall - self._keys[-1].created <= self._rotate_every
        ):
            return False
        key = TicketKey(self._random(KEY_NAME_LEN), self._random(KEY_SECRET_LEN),
                        max(0, int(wall)))
        if key.key_name in self._aeads:  # only a broken random source repeats 128 bits
            raise UsageError("random_bytes repeated a ticket key name")
        self._keys.append(key)
        self._aeads[key.key_name] = AESGCM(key.aead_key())
        return True

    def maintain(self, wall: float) -> bool:
        """Retire expired keys and rotate if due; True when the key set changed.

        :meth:`seal` does this itself. A server that writes the shared key file
        calls it on a timer and saves when it returns True, so that the readers
        learn a new key about when it starts sealing.
        """
        retired = self._retire(wall)
        return self._rotate(wall) or retired

    @property
    def keys(self) -> tuple[TicketKey, ...]:
        """The live keys, oldest first; the last one is current."""
        return tuple(self._keys)

    @property
    def rotate_every(self) -> int:
        return self._rotate_every

    @property
    def ticket_lifetime(self) -> int:
        return self._ticket_lifetime

    @property
    def lifetime_hint(self) -> int:
        """ticket_lifetime_hint for NewSessionTicket: seconds (RFC 5077 §3.3)."""
        return self._ticket_lifetime

    # --- tickets -----------------------------------------------------------

    def seal(self, state: TicketState, wall: float) -> bytes:
        """The ticket for ``state``, under the current key (rotating first if due).

        ``state.issued_at`` should be ``int(wall)`` and ``state.lifetime`` at most
        :attr:`ticket_lifetime` (else :class:`UsageError`): key retirement relies on it.
        """
        if state.lifetime > self._ticket_lifetime:
            raise UsageError("ticket state lifetime exceeds the ring's ticket_lifetime")
        self.maintain(wall)
        key_name = self._keys[-1].key_name
        nonce = self._random(NONCE_LEN)
        return key_name + nonce + self._aeads[key_name].encrypt(nonce, state.encode(), key_name)

    def open(self, ticket: bytes, wall: float) -> TicketState | None:
        """The state sealed in ``ticket``, or None if it is unusable for any reason.

        A ticket is expired when ``wall > issued_at + lifetime`` (the lifetime
        capped at this ring's :attr:`ticket_lifetime`, so shortening it takes
        effect at once) and refused when issued more than :data:`FUTURE_SKEW`
        seconds ahead of ``wall``.
        """
        self._retire(wall)
        if not TICKET_OVERHEAD + _FIXED_STATE_LEN <= len(ticket) <= MAX_TICKET_LEN:
            return None
        key_name = bytes(ticket[:KEY_NAME_LEN])
        aead = self._aeads.get(key_name)
        if aead is None:
            return None
        nonce = bytes(ticket[KEY_NAME_LEN:KEY_NAME_LEN + NONCE_LEN])
        try:
            plain = aead.decrypt(nonce, bytes(ticket[KEY_NAME_LEN + NONCE_LEN:]), key_name)
            state = TicketState.decode(plain)
        except (InvalidTag, DecodeError):
            return None
        if state.issued_at > wall + FUTURE_SKEW:
            return None
        if wall > state.issued_at + min(state.lifetime, self._ticket_lifetime):
            return None
        return state

    # --- key file text ------------------------------------------------------

    def dumps(self) -> str:
        """The key file text (see the module docstring)."""
        lines = [
            "# dtlsvpn ticket keys: key_name_hex created secret_hex; oldest first, last current",
        ]
        lines += [f"{k.key_name.hex()} {k.created} {k.secret.hex()}" for k in self._keys]
        return "\n".join(lines) + "\n"


class KeyFileError(DecodeError):
    """Key file text that does not parse; ``line`` is 1-based, None for the whole text."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def parse_keys(data: bytes) -> tuple[TicketKey, ...]:
    """The keys of key file text (oldest first); :class:`KeyFileError` if it is unusable.

    The inverse of :meth:`TicketKeyRing.dumps`: at least one key, no name twice.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise KeyFileError(None, "ticket key file is not ASCII text") from e
    keys: list[TicketKey] = []
    seen: set[bytes] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _KEY_LINE.fullmatch(line)
        if m is None:
            raise KeyFileError(lineno, "expected '<32 hex key name> <created> <64 hex secret>'")
        created = int(m.group(2))
        if created > _MAX_U64:
            raise KeyFileError(lineno, "creation time out of range")
        key = TicketKey(bytes.fromhex(m.group(1)), bytes.fromhex(m.group(3)), created)
        if key.key_name in seen:
            raise KeyFileError(lineno, "duplicate key name")
        seen.add(key.key_name)
        keys.append(key)
    if not keys:
        raise KeyFileError(None, "ticket key file holds no keys")
    return tuple(keys)
