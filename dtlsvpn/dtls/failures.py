"""Why a handshake failed, in words the shell can count and show.

Every ``AssociationClosed`` of an association that never completed its handshake
carries a ``failure`` word (``handshake=True``).  The words are stable (they are the
``reason`` label of ``dtlsvpn_handshake_failures_total``): an Alert's ``failure``
(its description's name unless the machine gave a finer one, such as
``no_client_certificate``), ``timeout``, ``wrong_key`` (the keys differ: a wrong PSK),
``peer_alert`` (the peer ended it with a fatal alert), ``finished_unanswered`` (closed
by us while waiting for the peer's Finished) or ``closed`` (closed locally).

Wrong keys (RFC 6347 §4.1.2.7): once the peer's CCS moved the read epoch, a record
that fails authentication before the handshake completed is the peer's Finished.
When ``WRONG_KEY_FAILURES`` records with distinct sequence numbers failed over at least
``WRONG_KEY_SPAN`` seconds (the first Finished and the peer's retransmissions, which
come a retransmission timeout apart: a corrupted or duplicated datagram is not a wrong
key, and forged records injected at once, or held from before the CCS, are not either),
we answer with a fatal bad_record_mac, which the RFC allows, so that the peer learns why
instead of waiting for its timeout.  A peer that receives bad_record_mac or
decrypt_error during the handshake reports ``wrong_key`` too.
"""

from __future__ import annotations

from dtlsvpn.dtls.events import AssociationClosed
from dtlsvpn.errors import Alert, BadRecordMac
from dtlsvpn.wire.constants import AlertDescription

WRONG_KEY_FAILURES = 3
WRONG_KEY_SPAN = 0.5  # seconds; the flight timer starts at 1 s (RFC 6347 §4.2.4.1)
WRONG_KEY_ALERTS = frozenset({AlertDescription.bad_record_mac, AlertDescription.decrypt_error})


def timed_out(auth_failures: int) -> tuple[str, str]:
    """(reason, failure) of a handshake that ran out of retransmissions."""
    if auth_failures:
        return (f"handshake timed out ({auth_failures} records from the peer failed "
                "authentication: wrong PSK or key?)", "wrong_key")
    return "handshake timed out", "timeout"


class WrongKey:
    """Counts the distinct records of the peer's new epoch that failed authentication
    before the handshake completed."""

    __slots__ = ("_first", "_seen", "_seqs")

    def __init__(self) -> None:
        self._seqs: set[int] = set()
        self._seen = 0  # the read state's auth_failures last time
        self._first: float | None = None  # when the first one failed

    def failed(self, auth_failures: int, seq: int, established: bool, now: float) -> bool:
        """A record was refused: when it failed authentication (``auth_failures`` moved),
        one more; True (once) when enough, far enough apart, say the keys differ."""
        moved, self._seen = auth_failures > self._seen, auth_failures
        if not moved or established or self._first == -1.0:
            return False
        if self._first is None:
            self._first = now
        self._seqs.add(seq)
        if len(self._seqs) < WRONG_KEY_FAILURES or now - self._first < WRONG_KEY_SPAN:
            return False
        self._first = -1.0  # said once
        return True


def finished_failed() -> Alert:
    """The alert for a peer's Finished that failed authentication."""
    return BadRecordMac("the peer's Finished failed authentication: wrong PSK or key?",
                        failure="wrong_key")


def peer_alert(desc: int, established: bool) -> tuple[str, str]:
    """(reason, failure) when the peer sent a fatal alert."""
    try:
        name = AlertDescription(desc).name
    except ValueError:
        name = str(desc)
    if not established and desc in WRONG_KEY_ALERTS:
        return (f"peer sent fatal alert {name}: it could not authenticate our Finished "
                "(wrong PSK or key?)", "wrong_key")
    return f"peer sent fatal alert {name}", "peer_alert"


def closed(local: bool, reason: str, alert: int | None, *, failure: str | None,
           handshake: bool, who: str | None, finished_sent: bool) -> AssociationClosed:
    """The event of a closing association (``failure`` and ``who`` only before completion).

    Closed by us (``close()``, a shell's deadline, our timeout) after our Finished went out but
    before the peer's came: ``finished_unanswered``, which from a peer that answered the
    hellos and then stays silent (OpenSSL and GnuTLS drop a Finished they cannot
    authenticate) is most likely a wrong PSK or key.
    """
    if local and handshake and finished_sent and failure in (None, "timeout"):
        failure = "finished_unanswered"
        reason = ("gave up" if reason == "closed" else reason) + (
            " waiting for the peer's Finished: it answered our hellos but never accepted "
            "our Finished (wrong PSK or key?)")
    return AssociationClosed(local=local, reason=reason, alert=alert, handshake=handshake,
                             failure=(failure or "closed") if handshake else None,
                             peer_identity=who if handshake else None)
