"""ServerEndpoint: the stateless gate in front of the server's associations.

RFC 6347 §4.2.1 and security.md S12/S13: before a ClientHello carries a
valid cookie the endpoint keeps no state and does no asymmetric crypto.  A
ClientHello without one gets a HelloVerifyRequest that is never larger than
the ClientHello (no amplification), one per ClientHello, never re-sent by a
timer.  The cookie is an HMAC (``crypto/cookie.py``) over the client's
address and port and the ClientHello's version, random, session_id,
cipher_suites and compression_methods, so a different ClientHello needs a
different cookie.

Only a complete, unfragmented ClientHello in one epoch-0 record is looked at
here; anything else from an unknown address is dropped and counted.

Admission (``dtls/admission.py``): HelloVerifyRequests are rate-limited, globally
and per source host (fixed-size hashed buckets: still no state per source), and
one source host may hold only so many half-open associations; both refusals are
silent drops, counted on ``admission``.

Replays (``dtls/hellocache.py``): a cookie-verified ClientHello whose cookie already
opened an association within the cookie's validity is dropped silently
(``hello_replayed``), before the admission buckets: answering it with a
HelloVerifyRequest would hand back the same cookie, and it would cost the victim of a
spoofed replay its own new-association tokens.

RFC 6347 §4.2.8: a new ClientHello (another random) from the address of a live
association starts a new association only once it has a valid cookie; until
then the live one is untouched.

Rekeying, make-before-break: DTLS 1.2 renegotiation stays refused, so a
client renews its keys with a new full handshake from the same address.  While
that runs, and for ``rekey_grace`` seconds after it completes, the previous
association still opens the records sent under the old keys: a protected
record is tried with the newest established association first and with the
other one if it does not authenticate there.  Then the old keys are dropped.

RFC 9146 connection IDs: a tls12_cid record is routed by its CID, whatever its
source address.  The association moves to the new address only when that
datagram authenticated a record newer than any seen before (RFC 9146 §6), so
a replayed, older or forged record from elsewhere moves nothing.  And only once the
peer proved it receives at the new address (a return-routability check, as QUIC's
path validation and RFC 9853 do, here with the heartbeats both ends negotiated):
an on-path attacker who sends a copy of a fresh record from a spoofed source wins
the RFC 9146 test, and would otherwise turn the tunnel's traffic on the victim.  The
record's data is delivered at once (it authenticated); the endpoint sends a
HeartbeatRequest with a fresh payload to the new address alone and keeps sending
everything else to the old one; the move happens at the first newer record from
the new address after the peer answered.  A real move costs one round trip more of
the server's traffic to the old address; a peer without heartbeats moves as RFC 9146
has it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dtlsvpn.crypto.cookie import CookieSecrets
from dtlsvpn.dtls.admission import Admission
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.cid import CidClass
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.hellocache import HelloReplayCache
from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.buffer import Writer
from dtlsvpn.wire.constants import DTLS_1_0, DTLS_1_2, ContentType, HandshakeType
from dtlsvpn.wire.handshake import (
    ClientHello,
    HelloVerifyRequest,
    decode_client_hello,
    encode_handshake,
    encode_hello_verify_request,
    parse_handshake_fragments,
)
from dtlsvpn.wire.record import Record, encode_record, parse_datagram

Address = tuple[str, int]

CHALLENGE_GAP = 0.2  # seconds between two path challenges of one association, at least
_HANDSHAKE_TYPE = bytes((ContentType.handshake,))
_APP_DATA_TYPE = bytes((ContentType.application_data,))


@dataclass(slots=True)
class EndpointStats:
    hello_verify_sent: int = 0
    cookie_accepted: int = 0
    not_client_hello: int = 0  # unknown address, and not a ClientHello we can read
    table_full: int = 0
    replaced: int = 0  # RFC 6347 §4.2.8 new association on a live address
    unknown_cid: int = 0  # a tls12_cid record whose CID is no association's
    cid_foreign: int = 0  # ... of those, another fleet server's CID (dtls/cid.py)
    cid_forged: int = 0  # ... of those, no fleet CID at all (bad tag)
    address_changes: int = 0  # RFC 9146 §6 moves
    path_challenges: int = 0  # return-routability checks sent before such a move
    rekeys: int = 0  # new associations that replaced an established one
    hello_replayed: int = 0  # a cookie that already opened an association (hellocache.py)


def _peer_bytes(addr: Address) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


def _ip_header(addr: Address) -> int:
    """Outer IP header size for PMTU arithmetic: 40 for IPv6, 20 for IPv4 (and the
    IPv4-mapped addresses of a dual-stack socket, whose packets are IPv4)."""
    host = addr[0]
    return 40 if ":" in host and not host.lower().startswith("::ffff:") else 20


def _hello_params(ch: ClientHello) -> bytes:
    """The ClientHello fields the cookie binds (RFC 6347 §4.2.1)."""
    w = Writer()
    w.push_uint16(ch.version)
    w.push_bytes(ch.random)
    w.push_opaque8(ch.session_id)
    with w.block(2):
        for s in ch.cipher_suites:
            w.push_uint16(s)
    w.push_opaque8(ch.compression_methods)
    return w.data()


def _initial_client_hello(data: bytes) -> tuple[Record, int, ClientHello] | None:
    """(record, message_seq, hello) when the datagram starts with a whole ClientHello."""
    if data[:1] != _HANDSHAKE_TYPE or data[3:5] != b"\x00\x00":
        return None  # not an epoch-0 handshake record: no need to parse the datagram
    records, _ = parse_datagram(data, limit=1)  # only the first is looked at
    if not records:
        return None
    rec = records[0]
    if (rec.content_type != ContentType.handshake or rec.epoch != 0
            or rec.version not in (DTLS_1_0, DTLS_1_2)):
        return None
    try:
        frags = parse_handshake_fragments(rec.fragment)
        frag = frags[0]
        if (frag.msg_type != HandshakeType.client_hello or frag.fragment_offset != 0
                or len(frag.body) != frag.length):
            return None
        return rec, frag.message_seq, decode_client_hello(frag.body)
    except (DecodeError, IndexError):
        return None


class ServerEndpoint:
    """Demultiplexes datagrams by source address and gates new associations."""

    def __init__(self, config: DtlsConfig, *, max_associations: int = 1024,
                 rekey_grace: float = 10.0) -> None:
        if config.is_client:
            raise UsageError("ServerEndpoint needs a server config")
        self.config = config
        self.max_associations = max_associations
        self.associations: dict[Address, Association] = {}
        self.stats = EndpointStats()
        self._cookies = CookieSecrets(config.random_bytes)
        self.hello_cache = HelloReplayCache(self._cookies.period)
        self._cid_len = config.own_cid_length or 0
        self._by_cid: dict[bytes, Association] = {}
        self._address: dict[Association, Address] = {}
        self.rekey_grace = rekey_grace
        self._previous: dict[Address, Association] = {}  # being replaced by a rekey
        self._retire_at: dict[Address, float] = {}
        # security.md S13 / README "Security": HVR rate limits, half-open per source.
        self.admission = Admission(config.random_bytes)

    def address_of(self, assoc: Association) -> Address | None:
        """Where the association's peer is now (it moves with RFC 9146 CIDs)."""
        return self._address.get(assoc)

    def receive(
        self, data: bytes, addr: Address, now: float, wall: float
    ) -> tuple[Association | None, list[bytes]]:
        n = self._cid_len
        if n and len(data) >= 13 + n and data[0] == ContentType.tls12_cid:
            return self._receive_by_cid(bytes(data[11:11 + n]), data, addr, now, wall)
        assoc = self.associations.get(addr)
        if (assoc is None or assoc.is_closed) and addr in self._previous:
            assoc = self._reinstate(addr, assoc)  # security.md S17: the new one gave up
        if assoc is not None and data[:1] == _APP_DATA_TYPE and addr not in self._previous:
            fast = assoc.fast_open  # None before the fast path opens and after close
            if fast is not None:
                # Routed by address before any parse: a data record is never a ClientHello.
                out = assoc.receive_datagram(data, now, wall)
                if assoc.fast_open is not fast:  # the slow path ran (it may add a CID)
                    self._register_cid(assoc)
                return assoc, out
        return self._receive_slow(assoc, data, addr, now, wall)

    def fast_lane(self, assoc: Association, addr: Address) -> bool:
        """Whether ``receive`` of a datagram from ``addr`` that ``assoc``'s header fast
        path takes would be that and nothing more (no rekey overlap on the address, no
        RFC 9146 move, routed to ``assoc`` by its CID or its address): the shell may then
        hand a run of them to ``assoc.receive_fast`` at once.  True until the next
        ``receive``."""
        fast = assoc.fast_open
        if fast is None or addr in self._previous or self._address.get(assoc) != addr:
            return False
        if fast.cid:
            return len(fast.cid) == self._cid_len and self._by_cid.get(fast.cid) is assoc
        return self.associations.get(addr) is assoc

    def _receive_slow(self, assoc: Association | None, data: bytes, addr: Address,
                      now: float, wall: float) -> tuple[Association | None, list[bytes]]:
        """A non-CID datagram that is not a data record of a live association."""
        hello = None
        if assoc is not None and not assoc.is_closed:
            hello = _initial_client_hello(data)
            if hello is None or hello[2].random == assoc.client_random:
                old = self._previous.get(addr)
                if old is not None and data[3:5] != b"\x00\x00":
                    return self._receive_overlap(assoc, old, data, addr, now, wall)
                out = assoc.receive_datagram(data, now, wall)
                self._register_cid(assoc)
                return assoc, out
        if hello is None:
            hello = _initial_client_hello(data)
        if hello is None:
            self.stats.not_client_hello += 1
            return None, []
        rec, message_seq, ch = hello
        refused = self._gate(ch, rec, message_seq, addr, now)
        if refused is not None:
            return None, refused
        if assoc is not None:
            self._replace(addr, assoc)
        assoc = Association(self.config, _peer_bytes(addr), first_message_seq=message_seq,
                            first_record_seq=rec.seq, ip_header=_ip_header(addr))
        self.associations[addr] = assoc
        self._address[assoc] = addr
        self.admission.opened(addr[0], assoc)
        out = assoc.receive_datagram(data, now, wall)
        self._register_cid(assoc)
        return assoc, out

    def _gate(self, ch: ClientHello, rec: Record, message_seq: int, addr: Address,
              now: float) -> list[bytes] | None:
        """None when the ClientHello may open an association, else the answer to it."""
        if self.config.cookie_exchange:
            peer = _peer_bytes(addr)
            params = _hello_params(ch)
            if not ch.cookie or not self._cookies.check(now, peer, params, ch.cookie):
                if not self.admission.allow_hello_verify(addr[0], now):  # dtls/admission.py
                    return []
                return [self._hello_verify(now, peer, params, rec, message_seq)]
            if self.hello_cache.seen(ch.cookie, now):
                self.stats.hello_replayed += 1
                return []
            self.stats.cookie_accepted += 1
        if addr not in self.associations and len(self.associations) >= self.max_associations:
            self.stats.table_full += 1
            return []
        if not self.admission.admit(addr[0], now):  # half-open cap, new-association rate
            return []
        if self.config.cookie_exchange:
            self.hello_cache.remember(ch.cookie, now)
        return None

    def _replace(self, addr: Address, assoc: Association) -> None:
        """A new association takes the address of ``assoc`` (RFC 6347 §4.2.8)."""
        self.stats.replaced += 1
        if assoc.is_established and not assoc.is_closed:
            # Make-before-break: the old keys keep working until the new
            # association is up, and for rekey_grace seconds after.
            self.stats.rekeys += 1
            stale = self._previous.pop(addr, None)
            if stale is not None:
                self._forget(stale)
            self._previous[addr] = assoc
            self._retire_at.pop(addr, None)
            del self.associations[addr]
        else:
            self._forget(assoc)

    def _reinstate(self, addr: Address, failed: Association | None) -> Association:
        """The live association a failed new handshake was to replace takes its address
        back (RFC 6347 §4.2.8: the new one must not disturb it unless it completes)."""
        if failed is not None:
            self._forget(failed)
        old = self._previous.pop(addr)
        self._retire_at.pop(addr, None)
        self.associations[addr] = old
        self._address[old] = addr
        return old

    def _receive_overlap(self, new: Association, old: Association, data: bytes,
                         addr: Address, now: float, wall: float
                         ) -> tuple[Association | None, list[bytes]]:
        """A protected datagram while a rekey overlaps two associations."""
        first, second = (new, old) if new.is_established else (old, new)
        out = first.try_receive(data, now, wall)
        if out is not None:
            self._note_rekey_progress(addr, now)
            return first, out
        out = second.receive_datagram(data, now, wall)
        self._register_cid(new)
        self._note_rekey_progress(addr, now)
        return second, out

    def _note_rekey_progress(self, addr: Address, now: float) -> None:
        """Start the old keys' grace period once the client uses the new ones."""
        new = self.associations.get(addr)
        if (addr in self._previous and new is not None and new.peer_switched
                and addr not in self._retire_at):
            self._retire_at[addr] = now + self.rekey_grace

    def sending_association(self, addr: Address) -> Association | None:
        """The association to send the peer's traffic on.

        During a rekey this stays the old one until the client has sent
        something under the new keys: it may not have the server's Finished
        yet, and it drops records it cannot open.
        """
        new = self.associations.get(addr)
        old = self._previous.get(addr)
        if old is not None and not old.is_closed and (new is None or not new.peer_switched):
            return old
        return new

    def _receive_by_cid(self, cid: bytes, data: bytes, addr: Address, now: float,
                        wall: float) -> tuple[Association | None, list[bytes]]:
        assoc = self._by_cid.get(cid)
        if assoc is None or assoc.is_closed:
            self.stats.unknown_cid += 1
            self._note_unknown_cid(cid)
            return None, []
        out = assoc.receive_datagram(data, now, wall)
        old = self._address.get(assoc)
        if self._previous and old is not None and old in self._previous:
            self._note_rekey_progress(old, now)
        if old is not None and old != addr and assoc.advanced and self._may_move(assoc, addr,
                                                                                  now):
            # RFC 9146 §6: only an authenticated record newer than any before moves
            # the peer; whoever held the new address before loses it.
            assoc.path_candidate = None
            self.stats.address_changes += 1
            if self.associations.get(old) is assoc:
                del self.associations[old]
            displaced = self.associations.get(addr)
            if displaced is not None and displaced is not assoc:
                self._forget(displaced)
            self.associations[addr] = assoc
            self._address[assoc] = addr
            assoc.note_address_change(old, addr)
        return assoc, out

    def _may_move(self, assoc: Association, addr: Address, now: float) -> bool:
        """Return routability before an RFC 9146 move (see the module doc): True once
        the peer answered a challenge sent to ``addr`` alone, or at once when it takes
        no heartbeat requests.  Otherwise a challenge goes to ``addr``, at most one per
        ``CHALLENGE_GAP`` per association whatever the address, so a flood of copies
        from spoofed sources reflects one small datagram per gap."""
        candidate = assoc.path_candidate
        if candidate is not None:
            if candidate[0] == addr and assoc.challenge_answered:
                return True
            if now < candidate[1] + CHALLENGE_GAP:
                return False  # a check is under way (this address's or another's)
        if not assoc.challenge_path(addr, now):
            return True
        self.stats.path_challenges += 1
        return False

    def _note_unknown_cid(self, cid: bytes) -> None:
        layout = self.config.cid_layout  # fleet hook: tell misrouted from made-up CIDs
        if layout is not None:
            kind = layout.classify(cid)
            if kind is CidClass.FOREIGN:
                self.stats.cid_foreign += 1
            elif kind is CidClass.FORGED:
                self.stats.cid_forged += 1

    def _register_cid(self, assoc: Association) -> None:
        ids = assoc.connection_ids
        if ids is not None and ids[0] and ids[0] not in self._by_cid:
            self._by_cid[ids[0]] = assoc

    def _forget(self, assoc: Association) -> None:
        addr = self._address.pop(assoc, None)
        if addr is not None and self.associations.get(addr) is assoc:
            del self.associations[addr]
        ids = assoc.connection_ids
        if ids is not None and self._by_cid.get(ids[0]) is assoc:
            del self._by_cid[ids[0]]

    def _hello_verify(self, now: float, peer: bytes, params: bytes, rec: Record,
                      message_seq: int) -> bytes:
        cookie = self._cookies.make(now, peer, params)
        # RFC 6347 §4.2.1: server_version 1.0 whatever will be negotiated; the
        # record sequence number copies the ClientHello's.
        body = encode_hello_verify_request(HelloVerifyRequest(DTLS_1_0, cookie))
        msg = encode_handshake(HandshakeType.hello_verify_request, message_seq, body)
        self.stats.hello_verify_sent += 1
        return encode_record(ContentType.handshake, 0, rec.seq, msg, version=DTLS_1_0)

    def get_timer(self) -> float | None:
        deadlines = [t for a in self.associations.values() if (t := a.get_timer()) is not None]
        deadlines += self._retire_at.values()
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Every due association timer, then ``retire_old_keys`` (walks the table: a
        shell with a timer per association calls ``retire_old_keys`` alone)."""
        for a in list(self.associations.values()):
            t = a.get_timer()
            if t is not None and now >= t:
                a.handle_timer(now)
        self.retire_old_keys(now)

    def retire_old_keys(self, now: float) -> None:
        """Drop the renewals' old associations whose grace period is over (no walk
        over the table: only the renewals in progress)."""
        for addr, when in list(self._retire_at.items()):
            if now >= when:
                # The grace period is over: the old keys are no longer accepted.
                del self._retire_at[addr]
                old = self._previous.pop(addr, None)
                if old is not None:
                    old.close(now)
                    old.datagrams_to_send(now)  # its peer switched already: no close_notify
                    self._forget(old)

    def remove_closed(self) -> list[Address]:
        """Forget every closed association (a walk over the table: a shell that knows
        which ones closed calls ``forget_closed`` with them)."""
        gone = [(addr, a) for addr, a in self.associations.items() if a.is_closed]
        for _addr, a in gone:
            self._forget(a)
        return [addr for addr, _a in gone]

    def forget_closed(self, assocs: Iterable[Association]) -> list[Address]:
        """``remove_closed`` for the associations given (those that closed since the
        last call): each that is closed and still holds its address leaves the table and
        the CID index; no walk over the others.  The addresses that were freed."""
        gone: list[Address] = []
        for a in assocs:
            addr = self._address.get(a)
            if a.is_closed and addr is not None and self.associations.get(addr) is a:
                self._forget(a)
                gone.append(addr)
        return gone
