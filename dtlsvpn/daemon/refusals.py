"""Handshakes that failed, in the operator's words: counted by reason, logged rate-limited.

The DTLS core closes a handshake that fails with ``AssociationClosed(handshake=True)``
whose ``failure`` is a stable word (``dtls/failures.py``) and whose ``peer_identity``
says who the peer claimed to be.  The server adds ``unknown_peer`` (authenticated, but
no ``[Peer]`` matches).  :func:`explain` turns one into a sentence ("certificate not
signed by CA", "PSK identity alice: Finished failed authentication — wrong key?");
:class:`Refusals` counts every one by failure (the status's ``handshake_failures`` and
``dtlsvpn_handshake_failures_total{reason}``) and logs it at WARNING, but a flood must
not fill the journal:

- one line per source (the peer's IP address) per ``REPEAT_AFTER`` seconds; the next
  line of that source says how many it refused in between;
- at most ``BURST`` lines, refilled at one per ``REFILL`` seconds, over all sources;
  the next line that goes out says how many were not logged;
- at most ``MAX_SOURCES`` sources remembered (the oldest are forgotten first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cryptography.x509.oid import NameOID

from dtlsvpn.dtls.events import AssociationClosed, Event, HandshakeCompleted

log = logging.getLogger("dtlsvpn")

REPEAT_AFTER = 60.0
BURST = 20
REFILL = 3.0
MAX_SOURCES = 4096

# failure -> what the server says about a client it refused ({who}: who it claimed to be)
_SERVER_WORDS: dict[str, str] = {
    "unknown_ca": "certificate not signed by CA",
    "certificate_expired": "certificate expired or not yet valid",
    "bad_certificate": "certificate refused",
    "unsupported_certificate": "certificate of a kind we do not accept",
    "no_client_certificate": "no client certificate (every [Peer] here authenticates with "
                             "a certificate: the client needs Certificate= and PrivateKey=)",
    "unknown_psk_identity": "{who} matches no [Peer]",
    "unknown_peer": "",
    "wrong_key": "{who}: Finished failed authentication — wrong key?",
    "timeout": "handshake did not complete (timed out)",
    "peer_alert": "the client gave up",
    "handshake_failure": "no common ground",
}
# ... and what a client says about a server (or the server's answer to it)
_CLIENT_WORDS: dict[str, str] = {
    "unknown_ca": "server certificate not signed by our CA",
    "certificate_expired": "server certificate expired or not yet valid",
    "bad_certificate": "server certificate refused",
    "unsupported_certificate": "server certificate of a kind we do not accept",
    "wrong_key": "",  # the core's reason says it
    "finished_unanswered": "",
    "timeout": "no answer from the server",
    "peer_alert": "the server refused us",
}
# The server's fatal alert to a client, in that client's words.
_ALERT_HINTS: dict[str, str] = {
    "handshake_failure": "it may require a client certificate, or no cipher suite is "
                         "in common",
    "unknown_ca": "it does not trust the CA of our certificate",
    "bad_certificate": "it refused our certificate",
    "certificate_expired": "our certificate expired or is not yet valid",
    "unknown_psk_identity": "it knows no such PSK identity (PSKIdentity=)",
}


def _detail(ev: AssociationClosed) -> str:
    """The core's reason without the alert-name prefix ("unknown_ca: ...")."""
    head, sep, rest = ev.reason.partition(": ")
    return rest if sep and " " not in head else ev.reason


def explain(ev: AssociationClosed, *, server: bool, who: str | None = None) -> str:
    """One sentence for a failed handshake (``who`` overrides ``ev.peer_identity``)."""
    failure = ev.failure or "closed"
    words = (_SERVER_WORDS if server else _CLIENT_WORDS).get(failure)
    detail = _detail(ev)
    if words is None:
        return f"handshake failed: {detail}"
    if not words:
        return detail
    words = words.format(who=who or ev.peer_identity or "the peer")
    if failure == "peer_alert":
        hint = None if server else _ALERT_HINTS.get(detail.rsplit(" ", 1)[-1])
        return f"{words}: {detail}" + (f" ({hint})" if hint else "")
    if server and failure in _NO_DETAIL:
        return words
    return f"{words}: {detail}"


_NO_DETAIL = frozenset({"no_client_certificate", "unknown_psk_identity", "unknown_peer",
                        "wrong_key", "timeout"})


def unknown_peer(ev: HandshakeCompleted, *, matched: bool) -> AssociationClosed:
    """The refusal of a handshake that authenticated but names no [Peer] (or whose
    [Peer] may not take this association: ``matched``)."""
    cert = ev.peer_certificate
    if ev.psk_identity is not None:
        who = f"PSK identity {ev.psk_identity.decode('utf-8', 'backslashreplace')}"
        claim = who
    elif cert is not None:
        who = f"certificate {cert.subject.rfc4514_string()}"
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        claim = f"CommonName {', '.join(names)}" if names else "a certificate without CommonName"
    else:
        who = claim = "an anonymous client"
    if matched:
        reason = f"{claim}: its [Peer] refused this association (a newer one holds it)"
    else:
        reason = f"{claim} matches no [Peer] (CommonName= / PeerKeyPin= / PSKIdentity=)"
    return AssociationClosed(local=True, reason=reason, alert=None, handshake=True,
                             failure="unknown_peer", peer_identity=who)


@dataclass
class _Source:
    last_logged: float
    since: int = 0  # refused since the last line about this source


@dataclass
class Refusals:
    """Counts refusals by failure and logs them, rate-limited (see the module doc)."""

    counts: dict[str, int] = field(default_factory=dict)
    tokens: float = BURST
    refilled_at: float | None = None
    suppressed: int = 0
    _sources: dict[str, _Source] = field(default_factory=dict)

    def note(self, failure: str, source: str, where: str, message: str, now: float) -> bool:
        """Count one refusal; log it unless the limits say not.  True when logged."""
        self.counts[failure] = self.counts.get(failure, 0) + 1
        self._refill(now)
        src = self._sources.get(source)
        if src is not None and now - src.last_logged < REPEAT_AFTER:
            src.since += 1
            return False
        if self.tokens < 1:
            self.suppressed += 1
            return False
        self.tokens -= 1
        extra = []
        if src is not None and src.since:
            extra.append(f"{src.since} more from {source} since the last report")
        if self.suppressed:
            extra.append(f"{self.suppressed} more refusals not logged (rate limit)")
            self.suppressed = 0
        self._remember(source, now)
        log.warning("refused handshake from %s: %s%s", where, message,
                    f" [{'; '.join(extra)}]" if extra else "")
        return True

    def client_failed(self, peer: str, ev: AssociationClosed, now: float,
                      over: str = "") -> bool:
        """A client's handshake with its server failed: counted, said at WARNING
        (``over``: " over TCP" for the TLS fallback)."""
        self.counts[ev.failure or "closed"] = self.counts.get(ev.failure or "closed", 0) + 1
        self._refill(now)
        if self.tokens < 1:
            self.suppressed += 1
            return False
        self.tokens -= 1
        log.warning("peer %s: handshake failed%s: %s", peer, over, explain(ev, server=False))
        return True

    def timed_out(self, peer: str, events: list[Event], now: float) -> None:
        """The client gave up dialling: the close of its handshake says what it waited
        for (``finished_unanswered``: the server answered but never took our Finished)."""
        for ev in events:
            if isinstance(ev, AssociationClosed) and ev.handshake:
                if ev.failure == "finished_unanswered":
                    self.client_failed(peer, ev, now)
                else:
                    self.counts["timeout"] = self.counts.get("timeout", 0) + 1

    def _refill(self, now: float) -> None:
        if self.refilled_at is not None:
            self.tokens = min(BURST, self.tokens + (now - self.refilled_at) / REFILL)
        self.refilled_at = now

    def _remember(self, source: str, now: float) -> None:
        self._sources.pop(source, None)
        self._sources[source] = _Source(now)
        while len(self._sources) > MAX_SOURCES:
            del self._sources[next(iter(self._sources))]

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
