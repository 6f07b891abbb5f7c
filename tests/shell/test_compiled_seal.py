"""The compiled batch sealer (``_lane.Sealer``, ``DtlsConfig.record_sealer``) against ``FastSeal``'s loop.

With ``CompiledLane`` the daemon seals its batches of data records in C; the records
must be the bytes ``FastSeal``'s Python loop builds, for every AEAD (AES-128-GCM,
AES-256-GCM, ChaCha20-Poly1305), with and without an RFC 9146 connection ID, for any
sizes (empty to 2^14) and sequence numbers, and ``FastOpen`` must open them.  What is
checked before the loop (the 2^14 limit, the numbers left) stays Python's, and so does
the rest: a lone payload and heartbeat records do not use it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.crypto.suites import SuiteInfo
from dtlsvpn.daemon import compiled
from dtlsvpn.dtls.epoch import ReadState, WriteEpoch
from dtlsvpn.dtls.fastpath import FastOpen, FastSeal
from dtlsvpn.dtls.stats import Stats
from dtlsvpn.errors import UsageError
from dtlsvpn.wire.constants import MAX_SEQ
from tests.shell.conftest import needs_lane
from tests.support.records import AEAD_SUITES, CT_APP, CT_CID
from tests.support.records import protection as _prot

pytestmark = needs_lane

CIDS = [b"", b"\x01\x02\x03\x04\x05\x06\x07\x08", bytes(range(255))]


def two(suite: SuiteInfo, cid: bytes, first: int, epoch: int) -> tuple[FastSeal, FastSeal]:
    """A Python FastSeal and a compiled one over equal write states."""
    py = FastSeal(WriteEpoch(_prot(suite, 5), first), epoch, cid)
    c = FastSeal(WriteEpoch(_prot(suite, 5), first), epoch, cid, compiled=compiled.sealer)
    assert py.compiled is None and c.compiled is not None
    return py, c


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(AEAD_SUITES), st.sampled_from(CIDS),
       st.lists(st.binary(max_size=1500) | st.sampled_from([b"", bytes(16384)]), min_size=2,
                max_size=40),
       st.integers(0, MAX_SEQ - 100), st.integers(1, 0xFFFF))
def test_the_records_are_fastseals_bytes(suite: SuiteInfo, cid: bytes,
                                         payloads: list[bytes], first: int,
                                         epoch: int) -> None:
    py, c = two(suite, cid, first, epoch)
    records = c.seal(payloads)
    assert records == py.seal(payloads)
    assert c.state.next_seq == py.state.next_seq == first + len(payloads)
    read = ReadState(epoch=epoch, protection=_prot(suite, 5), cid=cid)
    out: list[bytes] = []
    fast = FastOpen(read, CT_CID if cid else CT_APP)
    assert fast.open_batch(records, 0, Stats(), out) == len(records)
    assert out == payloads


@pytest.mark.parametrize("suite", AEAD_SUITES, ids=lambda s: s.name)
def test_the_limits_stay_pythons(suite: SuiteInfo) -> None:
    _, c = two(suite, b"", MAX_SEQ - 1, 1)
    with pytest.raises(UsageError, match="exhausted"):
        c.seal([b"a", b"b", b"c"])
    assert c.state.next_seq == MAX_SEQ + 1  # two were numbered, the third refused
    _, c = two(suite, b"", 0, 1)
    with pytest.raises(UsageError, match="exceeds"):
        c.seal([b"a", bytes(16385)])
    with pytest.raises(ValueError):
        c.compiled.seal([b"a", bytes(16385)], 1 << 48)  # and C refuses it itself


def test_only_data_records_and_only_batches() -> None:
    suite = AEAD_SUITES[0]
    hb = FastSeal(WriteEpoch(_prot(suite, 5), 0), 1, b"", 24, compiled=compiled.sealer)
    assert hb.compiled is None  # heartbeats: Python's loop
    py, c = two(suite, b"", 10, 1)
    calls: list[int] = []
    real = c.compiled

    class Spy:
        def seal(self, payloads: list[bytes], es: int) -> list[bytes]:
            calls.append(len(payloads))
            out: list[bytes] = real.seal(payloads, es)
            return out

    c.compiled = Spy()
    assert c.seal([b"lone"]) == py.seal([b"lone"]) and calls == []
    assert c.seal([b"a", b"b"]) == py.seal([b"a", b"b"]) and calls == [2]
