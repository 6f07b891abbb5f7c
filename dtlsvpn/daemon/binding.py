"""Server policy, sans-I/O: what to do when an association authenticates, moves or ends.

The server's shell asks these functions and applies the answers to the peer table and
the associations; nothing here touches a socket, a clock or the table.

``authenticated`` (a ``HandshakeCompleted`` that ``match_peer`` named, or did not):

    no [Peer] matched (or no address)            REJECT: close it, count ``unknown_peer``
    a full handshake from the address of the     RENEWAL (make-before-break): the old one
      peer's established association, and the      stays the peer's as ``previous`` until
      endpoint holds the new one at that address   the endpoint retires it
    anything else (first contact, a resumed      REPLACE: the peer's other associations
      restart, another address, a half-open one)   close (``close``), the new one is bound

A renewal never resumes (fresh ECDHE keys are its point), so a resumed handshake from
the same address is a restarted client, not a renewal.

``moved``: RFC 9146 §6, only the peer's current association moves the peer's address.
``closed``: the end of a renewal's old association leaves the peer up; the end of the
current one takes it down; any other association is not the peer's business.
``retired``: the endpoint dropped the old keys (closed it or forgot its address).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar

Addr = tuple[str, int]


class AssociationLike(Protocol):
    @property
    def is_established(self) -> bool: ...
    @property
    def is_closed(self) -> bool: ...


A = TypeVar("A", bound=AssociationLike)


class Verdict(Enum):
    REJECT = "reject"
    RENEWAL = "renewal"
    REPLACE = "replace"


class Ending(Enum):
    OLD_KEYS_RETIRED = "old keys retired"  # a renewal's previous association
    PEER_DOWN = "peer down"  # the peer's current association
    UNRELATED = "unrelated"  # neither: a stale or half-open one


@dataclass(frozen=True, slots=True)
class Decision(Generic[A]):
    verdict: Verdict
    close: tuple[A, ...] = ()  # associations to close now (with close_notify)


def authenticated(new: A, addr: Addr | None, *, matched: bool, resumed: bool,
                  current: A | None, previous: A | None, current_addr: Addr | None,
                  newest_at_addr: A | None) -> Decision[A]:
    """``new`` completed its handshake from ``addr``.

    ``current``/``previous``: the matched peer's associations; ``current_addr``: where
    the endpoint has ``current`` now; ``newest_at_addr``: the endpoint's association
    at ``addr`` (a renewal's new one replaced the old one there)."""
    if not matched or addr is None:
        return Decision(Verdict.REJECT, (new,))
    if (not resumed and current is not None and current is not new
            and current.is_established and not current.is_closed
            and current_addr == addr and newest_at_addr is new):
        return Decision(Verdict.RENEWAL)
    stale = tuple(a for a in (current, previous)
                  if a is not None and a is not new and not a.is_closed)
    return Decision(Verdict.REPLACE, stale)


def moved(assoc: A, new: object, *, current: A | None) -> Addr | None:
    """The peer's new address when its current association moved, else None."""
    if current is not assoc or not isinstance(new, tuple) or len(new) < 2:
        return None
    return str(new[0]), int(new[1])


def closed(assoc: A, *, current: A | None, previous: A | None) -> Ending:
    if previous is assoc:
        return Ending.OLD_KEYS_RETIRED
    if current is assoc:
        return Ending.PEER_DOWN
    return Ending.UNRELATED


def retired(previous: A, address_now: Addr | None) -> bool:
    """The endpoint is done with a renewal's old association."""
    return previous.is_closed or address_now is None
