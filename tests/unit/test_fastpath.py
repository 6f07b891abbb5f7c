"""The record-header fast path (dtls/fastpath.py) against the slow path and real peers.

* FastSeal writes byte for byte what the slow path's ``WriteEpoch.seal`` writes, for
  every suite, with and without an RFC 9146 CID;
* FastOpen opens the application data OpenSSL and GnuTLS sent in the captured sessions
  (tests/vectors), and re-sealing it with FastSeal gives the captured bytes;
* a datagram the fast path does not take (several records, another epoch or type, a
  wrong CID, a bad length, an inner type that is not data, padding) comes back as None
  with nothing changed, so the slow path sees it as before;
* differential: the same stream of datagrams (data, replays, reordering, forgeries,
  truncations, two-record datagrams, a heartbeat) through an association with the fast
  path and one whose fast path is switched off gives the same data, stats and windows.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.micro_core import CLIENT_ADDR, WALL, established_pair
from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.dtls import fastpath
from dtlsvpn.dtls.epoch import CID_PREFIX, ReadState, WriteEpoch
from dtlsvpn.dtls.fastpath import FastOpen, FastSeal
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.wire.constants import DTLS_1_2, ContentType
from dtlsvpn.wire.record import parse_datagram
from tests.support.records import AEAD_SUITES, CT_APP, CT_CID
from tests.support.records import protection as _prot


def _stats(s: Stats) -> dict[str, Any]:
    return dataclasses.asdict(s)


def _no_fast_path(self: FastOpen, datagrams: list[bytes], start: int, stats: Stats,
                  out: list[bytes]) -> int:
    return start  # takes nothing: every datagram goes to the slow path


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("cid", [b"", b"\x01\x02\x03\x04\x05\x06\x07\x08"])
def test_fast_seal_equals_slow_seal(suite: SuiteInfo, cid: bytes) -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(n) for n in (0, 1, 40, 1400, 16384)]
    slow = WriteEpoch(_prot(suite, 3), 1000)
    fast_state = WriteEpoch(_prot(suite, 3), 1000)
    sealed = FastSeal(fast_state, 2, cid).seal(payloads)
    expected = [slow.seal(CT_APP, 2, p, cid) for p in payloads]
    assert sealed == expected
    assert fast_state.next_seq == slow.next_seq == 1005


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("cid", [b"", b"\xaa\xbb\xcc\xdd"])
def test_fast_open_round_trip_replay_and_forgery(suite: SuiteInfo, cid: bytes) -> None:
    ctype = CT_CID if cid else CT_APP
    read = ReadState(epoch=1, protection=_prot(suite, 9), cid=cid)
    fast = FastOpen(read, ctype)
    records = FastSeal(WriteEpoch(_prot(suite, 9), 0), 1, cid).seal(
        [bytes([i]) * (i * 50) for i in range(6)])
    stats = Stats()
    # Out of order, then a replay, then a forgery.
    for i in (1, 0, 3, 2, 5, 4):
        assert fast.open(records[i], stats) == [bytes([i]) * (i * 50)]
    assert read.window.top == 5 and stats.rx_records == 6
    assert fast.open(records[2], stats) == [] and stats.replay == 1
    bad = records[5][:-1] + bytes([records[5][-1] ^ 1])
    fresh = FastSeal(WriteEpoch(_prot(suite, 9), 6), 1, cid).seal([b"x"])[0]
    assert fast.open(fresh[:-1] + bytes([fresh[-1] ^ 1]), stats) == []
    assert stats.bad_mac == 1 and read.window.top == 5  # the window did not move
    assert fast.open(bad, stats) == [] and stats.replay == 2  # replay is checked first
    assert fast.open(fresh, stats) == [b"x"] and fast.advanced and read.window.top == 6


@pytest.mark.parametrize("cid", [b"", b"\xaa\xbb\xcc\xdd"])
def test_a_record_far_ahead_empties_the_window_at_once(cid: bytes) -> None:
    # The peer picks the sequence number: an authenticated record at 2^48 - 1 after
    # record 0 must leave only itself in the window, not shift it by 2^48 bits.
    suite = AEAD_SUITES[1]
    read = ReadState(epoch=1, protection=_prot(suite, 5), cid=cid)
    fast = FastOpen(read, CT_CID if cid else CT_APP)
    first = FastSeal(WriteEpoch(_prot(suite, 5), 0), 1, cid).seal([b"a"])[0]
    last, before = FastSeal(WriteEpoch(_prot(suite, 5), 2**48 - 2), 1, cid).seal([b"b", b"c"])
    last, before = before, last  # 2^48 - 1 arrives first, then 2^48 - 2
    stats = Stats()
    assert fast.open_batch([first, last, first, before], 0, stats, out := []) == 4
    assert out == [b"a", b"c", b"b"] and stats.replay == 1
    assert (read.window.top, read.window.bits) == (2**48 - 1, 0b11)


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
def test_not_a_fast_datagram_changes_nothing(suite: SuiteInfo) -> None:
    cid = b"\x10\x20\x30\x40"
    for use_cid in (False, True):
        c = cid if use_cid else b""
        read = ReadState(epoch=1, protection=_prot(suite, 4), cid=c)
        fast = FastOpen(read, CT_CID if use_cid else CT_APP)
        one = FastSeal(WriteEpoch(_prot(suite, 4), 0), 1, c).seal([b"a" * 100, b"b"])
        seal = WriteEpoch(_prot(suite, 4), 10)
        inner_alert = seal.seal(int(ContentType.alert), 1, b"\x01\x00", c)
        other_epoch = FastSeal(WriteEpoch(_prot(suite, 4), 0), 2, c).seal([b"z"])[0]
        cases = [
            one[0] + one[1],  # two records in one datagram
            one[0][:-1],  # the length field says more than the datagram holds
            one[0] + b"\x00",  # trailing garbage
            other_epoch,
            one[0][:13 + len(c)],  # too short for the AEAD
            b"", b"\x17", one[0][:5],
            b"\x16" + one[0][1:],  # a handshake record
        ]
        if use_cid:
            cases.append(one[0][:11] + b"\x99" * 4 + one[0][15:])  # another CID
            cases.append(inner_alert)  # authenticates, but the inner type is an alert
            inner = b"pad" + b"\x17" + b"\x00" * 5  # DTLSInnerPlaintext with padding
            frag = _prot(suite, 4).seal_cid(1 << 48 | 20, c, inner)
            cases.append(CID_PREFIX.pack(CT_CID, DTLS_1_2, 1 << 48 | 20) + c
                         + len(frag).to_bytes(2, "big") + frag)
        else:
            cases.append(inner_alert)  # an alert record (outer type 21)
        stats = Stats()
        for d in cases:
            assert fast.open(d, stats) is None, d[:16].hex()
        assert _stats(stats) == _stats(Stats()) and read.window.top == -1


def _load_session_replay() -> Any:
    path = Path(__file__).with_name("test_vectors_sessions.py")
    spec = importlib.util.spec_from_file_location("_fastpath_session_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SESSIONS = _load_session_replay()


@pytest.mark.parametrize("name", SESSIONS.ALL)
def test_captured_application_data_through_fast_open_and_seal(name: str) -> None:
    rp = SESSIONS.replay(name)
    opened = {"c2s": b"", "s2c": b""}
    reads = {d: ReadState(epoch=1, protection=rp.protection[d]) for d in opened}
    fasts = {d: FastOpen(reads[d], CT_APP) for d in opened}
    resealed = 0
    for dgram in rp.vector["datagrams"]:
        data = bytes.fromhex(dgram["hex"])
        records, _ = parse_datagram(data)
        if len(records) != 1 or records[0].content_type != CT_APP:
            continue
        rec, d = records[0], dgram["dir"]
        out = fasts[d].open(data, Stats())
        assert out is not None and len(out) == 1
        opened[d] += out[0]
        if rec.fragment[:8] == (1 << 48 | rec.seq).to_bytes(8, "big") or not rp.suite.record_iv_len:
            # The peer's explicit nonce is its epoch||seq (or there is none): ours is the
            # same, so sealing the plaintext again must give the peer's bytes.
            again = FastSeal(WriteEpoch(rp.protection[d], rec.seq), 1, b"").seal(out)
            assert again == [data]
            resealed += 1
    assert opened["c2s"] == rp.vector["client_line"].encode()
    assert opened["s2c"] == rp.vector["server_line"].encode()
    # OpenSSL and GnuTLS choose other GCM explicit nonces; ChaCha20 has none to choose.
    assert resealed > 0 or rp.suite.record_iv_len


def _stream(cid: bool) -> tuple[list[bytes], Any, Any]:
    """Datagrams a client sends, good and bad, and the (endpoint, server) to feed."""
    client, endpoint, server = established_pair(cid)
    rng = random.Random(cid)
    sent = [client.protect([rng.randbytes(rng.randrange(1, 1400))])[0] for _ in range(300)]
    stream: list[bytes] = []
    for i, d in enumerate(sent):
        stream.append(d)
        r = rng.random()
        if r < 0.05:
            stream.append(sent[rng.randrange(0, i + 1)])  # a replay
        elif r < 0.10:
            stream.append(d[:-1] + bytes([d[-1] ^ 0x80]))  # a forgery
        elif r < 0.13:
            stream.append(d[: rng.randrange(0, len(d))])  # truncated
        elif r < 0.16 and i:
            stream.append(sent[i - 1] + d)  # two records in one datagram (replays)
    fresh = client.protect([b"tail-1", b"tail-2"])
    stream.append(fresh[0] + fresh[1])  # two new records in one datagram
    rng.shuffle(stream)  # reordering beyond the window too
    return stream, endpoint, server


@pytest.mark.parametrize("cid", [False, True])
def test_fast_path_and_slow_path_agree(cid: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for fast_on in (True, False):
        with monkeypatch.context() as m:
            if not fast_on:
                m.setattr(fastpath.FastOpen, "open_batch", _no_fast_path)
            stream, endpoint, server = _stream(cid)
            got = [endpoint.receive(d, CLIENT_ADDR, 1.0, WALL)[1] for d in stream]
            results.append((got, _stats(server.stats), server._read.window.top,
                            server._read.window.bits))
    assert results[0] == results[1]
    delivered = sum(len(g) for g in results[0][0])
    assert delivered > 100 and results[0][1]["replay"] > 0 and results[0][1]["bad_mac"] > 0


def test_cid_records_move_the_peer_only_when_newer_fast_and_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9146 §6 through the endpoint: a fresh record from a new address brings a path
    challenge there, and the peer's answer from it moves the association; a replayed or
    forged one from elsewhere moves nothing; fast = slow."""
    moved = ("198.18.0.9", 50000)
    elsewhere = ("198.18.0.7", 50001)
    results = []
    for fast_on in (True, False):
        with monkeypatch.context() as m:
            if not fast_on:
                m.setattr(fastpath.FastOpen, "open_batch", _no_fast_path)
            client, endpoint, server = established_pair(True)
            first, second, third = client.protect([b"one", b"two", b"three"])
            steps: list[object] = [
                endpoint.receive(second, CLIENT_ADDR, 1.0, WALL)[1],
                endpoint.receive(first, moved, 1.0, WALL)[1],  # older: no move
                endpoint.address_of(server),
                endpoint.receive(third, moved, 1.0, WALL)[1],  # newer: a challenge there
                endpoint.address_of(server),
            ]
            challenge = server.take_path_challenge()
            assert challenge is not None
            steps.append(challenge[1])
            client.receive_datagram(challenge[0], 1.0, WALL)
            (answer,) = client.datagrams_to_send(1.0)
            steps += [
                endpoint.receive(answer, moved, 1.0, WALL)[1],  # the answer: moves
                endpoint.address_of(server),
                endpoint.receive(third, elsewhere, 1.0, WALL)[1],  # replay: stays
                endpoint.receive(third[:-1] + b"\x00", elsewhere, 1.0, WALL)[1],  # forged
                endpoint.address_of(server),
                endpoint.associations.get(moved) is server,
                CLIENT_ADDR in endpoint.associations,
            ]
            results.append((steps, _stats(server.stats), dataclasses.asdict(endpoint.stats)))
    assert results[0] == results[1]
    steps = results[0][0]
    assert steps[:6] == [[b"two"], [b"one"], CLIENT_ADDR, [b"three"], CLIENT_ADDR, moved]
    assert steps[6:] == [[], moved, [], [], moved, True, False]
    assert results[0][2]["path_challenges"] == 1
    assert results[0][2]["address_changes"] == 1
