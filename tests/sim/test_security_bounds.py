"""Resource bounds pushed past, and the HelloVerifyRequest rate limits (security.md B3.3,
S13; README "Security").

Each test drives a real ``ServerEndpoint`` past one cap and prints the memory it
allocated (``tracemalloc``: the traced bytes still held after the push, and the peak)
next to what the cap allows.  Memory is asserted only against the caps' own arithmetic
(bytes, never time): a bound that leaked would grow with the number of datagrams.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from dtlsvpn.dtls.admission import AdmissionLimits
from dtlsvpn.wire.constants import (
    MAX_BUFFERED_HANDSHAKE_BYTES,
    MAX_FUTURE_MESSAGES,
    MAX_HANDSHAKE_MESSAGE,
    HandshakeType,
)
from dtlsvpn.wire.record import encode_record, parse_datagram
from tests.pki import Pki
from tests.sim.configs import configs_for
from tests.sim.scripted import HS, ServerUnderTest, drops, flight5, make_client, to_flight4

pytestmark = pytest.mark.sim


@contextmanager
def traced(label: str) -> Iterator[Callable[[], tuple[int, int]]]:
    """Trace allocations inside the block; the callable gives (held, peak) bytes."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    figures: list[tuple[int, int]] = []

    def now() -> tuple[int, int]:
        gc.collect()
        cur, peak = tracemalloc.get_traced_memory()
        return cur - base, peak - base

    try:
        yield now
        figures.append(now())
    finally:
        tracemalloc.stop()
    if figures:
        held, peak = figures[0]
        print(f"\n{label}: held {held / 1024:.1f} KiB, peak {peak / 1024:.1f} KiB")


def _frag(msg_type: int, length: int, seq: int, offset: int, body: bytes) -> bytes:
    return (struct.pack("!B", msg_type) + length.to_bytes(3, "big") + struct.pack("!H", seq)
            + offset.to_bytes(3, "big") + len(body).to_bytes(3, "big") + body)


# --- handshake message size, future messages, reassembly bytes --------------------------------


def test_b3_3_handshake_message_size_future_messages_and_reassembly_bytes(pki: Pki) -> None:
    c, srv = to_flight4(pki)
    seq0 = c.next_msg_seq
    chunk = 1200
    with traced("reassembly pushed past its caps (2000 datagrams)") as mem:
        before = drops(srv.assoc)
        # 1) a message longer than MAX_HANDSHAKE_MESSAGE: refused at its first fragment.
        for i in range(200):
            srv.send(c.record(HS, _frag(16, MAX_HANDSHAKE_MESSAGE + 1, seq0, i * chunk,
                                        bytes(chunk)), 0))
        # 2) message_seqs beyond the future window: refused.
        for i in range(200):
            srv.send(c.record(HS, _frag(16, 100, seq0 + MAX_FUTURE_MESSAGES + i, 0,
                                        bytes(100)), 0))
        # 3) every window slot with the largest message, fragments never completing it.
        for i in range(1600):
            seq = seq0 + 1 + i % (MAX_FUTURE_MESSAGES - 1)
            off = (i // MAX_FUTURE_MESSAGES) * chunk % (MAX_HANDSHAKE_MESSAGE - chunk)
            srv.send(c.record(HS, _frag(16, MAX_HANDSHAKE_MESSAGE, seq, off, bytes(chunk)), 0))
        held, peak = mem()
    moved = {k: v - before[k] for k, v in drops(srv.assoc).items() if v != before[k]}
    print(f"drops: {moved}; caps: message {MAX_HANDSHAKE_MESSAGE} B, future window "
          f"{MAX_FUTURE_MESSAGES}, buffered {MAX_BUFFERED_HANDSHAKE_BYTES} B per association")
    assert moved.get("buffer_full", 0) >= 400
    assert not srv.assoc.is_closed
    # What is held is the buffered bytes (at most the cap) plus bookkeeping, not 2000
    # datagrams' worth (2000 x 1.2 KB = 2.4 MB).
    assert held < MAX_BUFFERED_HANDSHAKE_BYTES + 256 * 1024, held
    assert peak < 2 * MAX_BUFFERED_HANDSHAKE_BYTES + 512 * 1024, peak
    # And the handshake still completes; completion frees the buffers.
    msgs, fin = flight5(c)
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok


def test_b3_3_reassembly_charged_by_bytes_received_not_declared_length(pki: Pki) -> None:
    # One byte of a message declared MAX_HANDSHAKE_MESSAGE long in every window slot: 9
    # datagrams of 38 bytes held 256 KiB (the whole budget, 4 x 64 KiB, the rest
    # buffer_full) when the first fragment allocated the declared length.
    c, srv = to_flight4(pki)
    seq0 = c.next_msg_seq
    with traced("one byte of a 64 KiB message in every window slot") as mem:
        before = drops(srv.assoc)
        for s in range(1, MAX_FUTURE_MESSAGES):
            srv.send(c.record(HS, _frag(16, MAX_HANDSHAKE_MESSAGE, seq0 + s,
                                        MAX_HANDSHAKE_MESSAGE - 1, b"x"), 0))
        held, _peak = mem()
    assert drops(srv.assoc) == before  # nothing full: 9 bytes received
    assert held < 16 * 1024, held
    msgs, fin = flight5(c)
    c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1)))
    assert srv.assoc.is_established and c.server_finished_ok


def test_b3_3_future_epoch_records_are_capped(pki: Pki) -> None:
    _c, srv = to_flight4(pki)
    with traced("3000 epoch-1 records before the CCS") as mem:
        before = drops(srv.assoc)
        for i in range(3000):
            srv.send(encode_record(23, 1, i, bytes(1000)))
        held, _peak = mem()
    moved = {k: v - before[k] for k, v in drops(srv.assoc).items() if v != before[k]}
    print(f"drops: {moved}")
    assert moved.get("buffer_full", 0) >= 2900
    assert held < 256 * 1024, held


# --- half-open associations and associations per source ----------------------------------------


def _hello_with_cookie(srv: ServerUnderTest, pki: Pki, addr: tuple[str, int], seed: int
                       ) -> tuple[bytes, list[bytes]]:
    c = make_client(pki, "psk-aes128", seed=seed)
    c.absorb(srv.send(c.hs(c.client_hello()), addr=addr))
    assert c.cookie
    ch = c.hs(c.client_hello())
    return ch, srv.send(ch, addr=addr)


def test_b3_3_half_open_associations_capped_per_source_and_in_total(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    ep = srv.endpoint
    ep.max_associations = 100
    cap = ep.admission.limits.max_half_open_per_source
    with traced("300 cookie-verified half-open associations from one host, 200 from others") \
            as mem:
        for port in range(300):
            srv.clock.advance(0.1)  # under the per-source HVR rate
            _hello_with_cookie(srv, pki, ("198.18.0.9", 20000 + port), port)
        one_host = len(ep.associations)
        for i in range(200):
            srv.clock.advance(0.01)
            _hello_with_cookie(srv, pki, (f"198.18.1.{i % 250 + 1}", 30000 + i), 1000 + i)
        held, _peak = mem()
    print(f"one host: {one_host} associations (cap {cap}), source_limited "
          f"{ep.admission.source_limited}; total {len(ep.associations)} (cap "
          f"{ep.max_associations}), table_full {ep.stats.table_full}")
    assert one_host == cap and ep.admission.source_limited == 300 - cap
    assert len(ep.associations) == ep.max_associations
    assert ep.stats.table_full == 200 - (ep.max_associations - cap)
    assert held < ep.max_associations * 64 * 1024, held  # per association: a few KiB


def test_b3_3_established_associations_free_their_half_open_slot(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    adm = srv.endpoint.admission
    cap = adm.limits.max_half_open_per_source
    clients = []
    for port in range(cap):
        srv.clock.advance(0.1)
        c = make_client(pki, "psk-aes128", seed=port)
        addr = ("198.18.0.9", 20000 + port)
        c.absorb(srv.send(c.hs(c.client_hello()), addr=addr))
        c.absorb(srv.send(c.hs(c.client_hello()), addr=addr))
        clients.append((c, addr))
    assert adm.half_open("198.18.0.9") == cap
    for c, addr in clients[:5]:
        msgs, fin = flight5(c)
        c.absorb(srv.send(c.hs(*msgs) + c.ccs() + c.hs(fin, epoch=1), addr=addr))
        assert c.server_finished_ok
    assert adm.half_open("198.18.0.9") == cap - 5
    srv.clock.advance(0.1)
    _ch, out = _hello_with_cookie(srv, pki, ("198.18.0.9", 29999), 999)
    assert out and adm.source_limited == 0


def test_one_replayed_cookie_buys_no_second_handshake(pki: Pki) -> None:
    """A captured cookie-bearing ClientHello replayed 200 times at one instant, each
    followed by a fatal alert that closes the half-open association it opened: the
    half-open cap never bites and no HelloVerifyRequest is asked for.  The replay cache
    (dtls/hellocache.py) refuses every replay (the new-association bucket alone let 40
    of 200 through, a full flight each; before the bucket, all 200)."""
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    adm = srv.endpoint.admission
    addr = ("198.18.0.9", 20000)
    ch, out = _hello_with_cookie(srv, pki, addr, 1)
    assert out  # the genuine one: a server flight
    alert = encode_record(21, 0, 99, b"\x02\x28")  # fatal handshake_failure, epoch 0
    replies = 0
    for _ in range(200):
        srv.send(alert, addr=addr)
        replies += bool(srv.send(ch, addr=addr))
    print(f"200 replays at one instant: {replies} answered, "
          f"hello_replayed {srv.endpoint.stats.hello_replayed}")
    assert replies == 0 and srv.endpoint.stats.hello_replayed == 200
    assert adm.association_rate_limited == 0  # refused before the victim's bucket
    srv.clock.advance(1.0)
    srv.send(alert, addr=addr)
    assert not srv.send(ch, addr=addr)  # still refused: the cookie is still valid
    _ch2, out = _hello_with_cookie(srv, pki, addr, 2)  # a new random: a new handshake
    assert out


def test_distinct_cookie_bearing_hellos_meet_the_new_association_bucket(pki: Pki) -> None:
    """200 different cookie-bearing ClientHellos from one host (each its own random and
    cookie, fetched over 10 s within the HelloVerifyRequest bucket) sent at one instant,
    each followed by an alert: the replay cache does not apply, the per-source
    new-association bucket lets its burst through."""
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    adm = srv.endpoint.admission
    addr = ("198.18.0.9", 20000)
    hellos = []
    for seed in range(200):
        c = make_client(pki, "psk-aes128", seed=1000 + seed)
        c.absorb(srv.send(c.hs(c.client_hello()), addr=addr))
        assert c.cookie
        hellos.append(c.hs(c.client_hello()))
        srv.clock.advance(0.05)
    alert = encode_record(21, 0, 99, b"\x02\x28")
    flights = 0
    for ch in hellos:
        srv.send(alert, addr=addr)
        flights += bool(srv.send(ch, addr=addr))
    burst = int(adm.limits.new_per_source_burst)
    print(f"200 distinct hellos at one instant: {flights} server flights, "
          f"association_rate_limited {adm.association_rate_limited}")
    assert flights == burst and adm.association_rate_limited == 200 - burst
    assert srv.endpoint.stats.hello_replayed == 0
    srv.clock.advance(1.0)  # the bucket refills: a refused hello's retry gets in
    srv.send(alert, addr=addr)
    assert srv.send(hellos[-1], addr=addr)


# --- HelloVerifyRequest rate limits ------------------------------------------------------------


def _hvr_types(out: list[bytes]) -> list[int]:
    return [r.fragment[0] for d in out for r in parse_datagram(d)[0] if r.content_type == HS]


def test_s13_hvr_rate_limited_per_source(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    ep = srv.endpoint
    lim = ep.admission.limits
    c = make_client(pki, "psk-aes128")
    ch = c.hs(c.client_hello())
    answered = sum(len(srv.send(ch)) for _ in range(500))
    print(f"\none source, 500 ClientHellos at one instant: {answered} HVRs "
          f"(burst {lim.per_source_burst:.0f}), {ep.admission.hvr_rate_limited} rate-limited")
    assert answered == int(lim.per_source_burst) == ep.stats.hello_verify_sent
    assert ep.admission.hvr_rate_limited == 500 - answered
    assert not ep.associations
    srv.clock.advance(1.0)
    again = sum(len(srv.send(ch)) for _ in range(100))
    assert again == int(lim.per_source_rate)
    # Another host is not affected by the first one's bucket (unless their slots collide).
    other = sum(len(srv.send(ch, addr=("198.18.7.7", 4444))) for _ in range(10))
    assert other == 10


def test_s13_hvr_rate_limited_globally_spoofed_sources_no_state(pki: Pki) -> None:
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    ep = srv.endpoint
    lim = ep.admission.limits
    c = make_client(pki, "psk-aes128")
    ch = c.hs(c.client_hello())
    sizes = [0]  # the largest HVR seen (a list of every size would be traced memory)

    def flood(n: int, rate: float, first: int) -> int:
        sent = 0
        for i in range(n):
            srv.clock.advance(1.0 / rate)
            a = first + i
            out = srv.send(ch, addr=(f"198.{18 + (a >> 16) % 2}.{(a >> 8) & 255}.{a & 255}",
                                     1024 + a % 60000))
            assert len(out) <= 1
            sizes[0] = max([sizes[0], *map(len, out)])
            sent += len(out)
        return sent

    with traced("10 000 spoofed ClientHellos at 10 000/s") as mem_small:
        first = flood(10_000, 10_000.0, 0)
        small = mem_small()
    with traced("another 30 000 from new sources") as mem_big:
        second = flood(30_000, 10_000.0, 10_000)
        big = mem_big()
    limited = ep.admission.hvr_rate_limited
    print(f"spoofed flood: 40 000 ClientHellos in 4 s simulated, {first + second} HVRs "
          f"(global {lim.global_rate:.0f}/s, burst {lim.global_burst:.0f}), {limited} "
          f"rate-limited; largest HVR {sizes[0]} B for a {len(ch)} B ClientHello; memory "
          f"held after 10k sources {small[0]} B, after 40k {big[0]} B")
    assert 0 < sizes[0] <= len(ch)
    assert first + second <= lim.global_burst + 4.0 * lim.global_rate + 1
    assert limited == 40_000 - first - second
    assert not ep.associations and ep.get_timer() is None
    # No per-source state: 30 000 more sources cost no more memory than the first 10 000.
    assert big[0] < 64 * 1024, big
    # The flood over, a real client gets its cookie and its association.
    srv.clock.advance(5.0)
    c2 = make_client(pki, "psk-aes128", seed=5)
    c2.absorb(srv.send(c2.hs(c2.client_hello())))
    assert c2.cookie
    msgs_out = srv.send(c2.hs(c2.client_hello()))
    assert HandshakeType.server_hello in _hvr_types(msgs_out)


def test_admission_limits_validated() -> None:
    with pytest.raises(ValueError):
        AdmissionLimits(global_rate=0)
    with pytest.raises(ValueError):
        AdmissionLimits(max_half_open_per_source=0)


def test_a_genuine_retransmitted_hello_reaches_its_association(pki: Pki) -> None:
    """The client's own retransmission of its cookie-bearing ClientHello (its flight
    was lost) while its association exists is routed to that association, before the
    replay cache: it is answered again, and nothing counts as a replay."""
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    addr = ("198.18.0.9", 20000)
    ch, out = _hello_with_cookie(srv, pki, addr, 1)
    assert out
    srv.clock.advance(1.0)
    assert srv.send(ch, addr=addr)  # the same hello again: the flight again
    assert srv.endpoint.stats.hello_replayed == 0


def test_a_replay_after_the_cookie_expired_gets_only_a_hello_verify(pki: Pki) -> None:
    """Once no cookie of its time is valid, the cache has forgotten the hello and the
    cookie check itself refuses it: a HelloVerifyRequest (no flight), not a replay."""
    srv = ServerUnderTest(configs_for("psk-aes128", pki)[1])
    addr = ("198.18.0.9", 20000)
    ch, out = _hello_with_cookie(srv, pki, addr, 1)
    assert out
    srv.send(encode_record(21, 0, 99, b"\x02\x28"), addr=addr)  # its association ends
    srv.clock.advance(2 * srv.endpoint._cookies.period + 1.0)
    replies = srv.send(ch, addr=addr)
    assert len(replies) == 1 and replies[0][13] == 3  # hello_verify_request (type 3)
    assert srv.endpoint.stats.hello_replayed == 0
