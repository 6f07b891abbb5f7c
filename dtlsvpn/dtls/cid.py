"""Connection IDs that name their server: the fleet CID layout (RFC 9146 + QUIC-LB's idea).

Purpose: when several servers share one public address, a balancer in front must send
each ``tls12_cid`` record to the server that holds its association, without keeping
per-client state and whatever the client's current address is.  QUIC-LB (draft
"Generating Routable QUIC Connection IDs") does this by writing a server id into the
connection ID; this module does the same for the 8-byte CIDs that a dtlsvpn server asks
its clients to send (RFC 9146 §3: the CID is chosen by its receiver, the server, and is
opaque to the client).

Layout (8 bytes; the CID starts at UDP payload byte 11 of a ``tls12_cid`` record, after
type(1) version(2) epoch(2) sequence(6))::

    byte  0      1      2      3      4      5      6      7
        +------+------+------+------+------+------+------+------+
        |  routing     |  nonce (24 random bits) |  tag (24 bits)     |
        |  prefix P    |                         |                    |
        +------+------+------+------+------+------+------+------+

- ``plain`` mode: P = server_id (byte 0) || 8 random bits (byte 1).  A balancer routes
  on byte 0 alone; the id is visible to anyone on the path (a trusted network).
- ``obfuscated`` mode: P = F(server_id || 8 random bits), where F is a keyed
  permutation of the 16-bit space (a 4-round Feistel network on two bytes, its round
  functions tables drawn from HMAC-SHA256 of the fleet secret).  Each server therefore
  owns a secret set of 256 of the 65 536 prefixes.  A balancer that cannot decrypt
  (nftables) holds the inverse as a 65 536-entry map prefix → server id, generated
  from the secret by :func:`prefix_owners`; an observer without the secret sees
  uniformly spread prefixes and cannot tell which server a CID belongs to (only that
  two CIDs with the same prefix share one).  (Unlike QUIC-LB's encrypted modes, a prefix
  is enough to route: the cost is that the balancer's map reveals the partition to
  whoever holds the map, which is why the map is as secret as the fleet secret.)
- nonce: random, so that one server's CIDs differ (24 bits plus the 8 random bits of
  P: 2^32 values per server; the endpoint keeps the first association of a repeated CID).
- tag: the first 3 bytes of HMAC-SHA256(tag key, P || nonce) when a fleet secret is
  configured (a forged CID passes with probability 2^-24), else of plain SHA-256 (a
  checksum that only tells garbage from a real CID).  The tag is no security
  boundary: a record under a CID still has to authenticate under its association's keys;
  it lets a server tell, without state, its own CIDs from other servers' (``foreign``,
  a misrouted client) and from made-up ones (``forged``), and count them apart.

All keys derive from the fleet secret with HMAC-SHA256 and distinct labels, so the
secret itself never meets the wire.  Sans-I/O: randomness comes from the caller.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from dtlsvpn.errors import UsageError

CID_LENGTH = 8
CID_OFFSET = 11  # first CID byte in the UDP payload of a tls12_cid record
MAX_SERVER_ID = 255
MIN_SECRET = 16  # bytes

_ROUNDS = 4
_LABEL_PERM = b"dtlsvpn fleet cid permutation"
_LABEL_TAG = b"dtlsvpn fleet cid tag"


class CidMode(enum.Enum):
    PLAIN = "plain"
    OBFUSCATED = "obfuscated"


class CidClass(enum.Enum):
    """What a CID is to the server that received it."""

    OWN = "own"  # issued by this server (it may still have no association for it)
    FOREIGN = "foreign"  # a valid fleet CID of another server: a misrouted record
    FORGED = "forged"  # not a fleet CID at all (bad length or tag)


def _round_tables(secret: bytes) -> tuple[bytes, ...]:
    """One 256-byte round function per Feistel round, drawn from the secret."""
    tables = []
    for r in range(_ROUNDS):
        out = b""
        block = 0
        while len(out) < 256:
            out += hmac.digest(secret, _LABEL_PERM + bytes((r, block)), "sha256")
            block += 1
        tables.append(out[:256])
    return tuple(tables)


@dataclass(frozen=True)
class CidLayout:
    """How one server (``server_id``) of a fleet makes and recognises its CIDs.

    ``secret`` is the fleet secret shared by every server and the balancer
    (required in obfuscated mode, optional in plain mode, at least 16 bytes).
    """

    server_id: int
    mode: CidMode = CidMode.OBFUSCATED
    secret: bytes | None = field(default=None, repr=False)
    _tables: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _tag_key: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.server_id <= MAX_SERVER_ID:
            raise UsageError(f"server id {self.server_id} is outside 0..{MAX_SERVER_ID}")
        if self.secret is not None and len(self.secret) < MIN_SECRET:
            raise UsageError(f"the fleet secret must be at least {MIN_SECRET} bytes")
        if self.mode is CidMode.OBFUSCATED and self.secret is None:
            raise UsageError("obfuscated CIDs need a fleet secret")
        tables: tuple[bytes, ...] = ()
        if self.mode is CidMode.OBFUSCATED and self.secret is not None:
            tables = _round_tables(self.secret)
        tag_key = (hmac.digest(self.secret, _LABEL_TAG, "sha256")
                   if self.secret is not None else None)
        object.__setattr__(self, "_tables", tables)
        object.__setattr__(self, "_tag_key", tag_key)

    # --- the 16-bit prefix -------------------------------------------------------------

    def encode_prefix(self, server_id: int, low: int) -> int:
        """P for ``server_id`` and 8 random bits ``low`` (the permutation in obfuscated mode)."""
        left, right = server_id, low
        for table in self._tables:
            left, right = right, left ^ table[right]
        return left << 8 | right

    def decode_prefix(self, prefix: int) -> int:
        """The server id that ``prefix`` routes to (any 16-bit value names one)."""
        left, right = prefix >> 8, prefix & 0xFF
        for table in reversed(self._tables):
            left, right = right ^ table[left], left
        return left

    # --- whole CIDs --------------------------------------------------------------------

    def _tag(self, head: bytes) -> bytes:
        if self._tag_key is not None:
            return hmac.digest(self._tag_key, head, "sha256")[:3]
        return hashlib.sha256(head).digest()[:3]

    def issue(self, random_bytes: Callable[[int], bytes]) -> bytes:
        """A new CID of this server (8 bytes)."""
        rnd = random_bytes(4)
        if len(rnd) != 4:
            raise UsageError("random_bytes returned the wrong length")
        prefix = self.encode_prefix(self.server_id, rnd[0])
        head = prefix.to_bytes(2, "big") + rnd[1:]
        return head + self._tag(head)

    def server_of(self, cid: bytes) -> int | None:
        """The server id a valid fleet CID names, or None for a forged one."""
        if len(cid) != CID_LENGTH:
            return None
        head = bytes(cid[:5])
        if not hmac.compare_digest(self._tag(head), bytes(cid[5:])):
            return None
        return self.decode_prefix(int.from_bytes(head[:2], "big"))

    def classify(self, cid: bytes) -> CidClass:
        """Own, another server's, or not a fleet CID (counted apart by the endpoint)."""
        sid = self.server_of(cid)
        if sid is None:
            return CidClass.FORGED
        return CidClass.OWN if sid == self.server_id else CidClass.FOREIGN


def prefix_owners(mode: CidMode, secret: bytes | None) -> list[int]:
    """For every 16-bit prefix (index), the server id it routes to: the balancer's map."""
    layout = CidLayout(0, mode, secret)
    return [layout.decode_prefix(p) for p in range(1 << 16)]
