"""The fleet CID layout (dtls/cid.py): ids decode to their server, forgeries are told apart,
the obfuscated form shows no server id.

Every test draws its CIDs from a seeded generator so a failure reproduces.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dtlsvpn.dtls.cid import (
    CID_LENGTH,
    CidClass,
    CidLayout,
    CidMode,
    prefix_owners,
)
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.errors import UsageError

SECRET = bytes(range(32))


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


def _issue(layout: CidLayout, rng: random.Random, n: int) -> list[bytes]:
    return [layout.issue(rng.randbytes) for _ in range(n)]


@pytest.mark.parametrize("mode", list(CidMode))
def test_every_server_id_decodes_to_its_server(mode: CidMode) -> None:
    rng = _rng(1)
    layouts = {sid: CidLayout(sid, mode, SECRET) for sid in (0, 1, 2, 7, 200, 255)}
    for sid, layout in layouts.items():
        for cid in _issue(layout, rng, 50):
            assert len(cid) == CID_LENGTH
            for other in layouts.values():  # any server (and the balancer) reads the id
                assert other.server_of(cid) == sid
            assert layout.classify(cid) is CidClass.OWN


@pytest.mark.parametrize("mode", list(CidMode))
def test_another_servers_cid_is_foreign_and_garbage_is_forged(mode: CidMode) -> None:
    rng = _rng(2)
    one, two = CidLayout(1, mode, SECRET), CidLayout(2, mode, SECRET)
    for cid in _issue(two, rng, 100):
        assert one.classify(cid) is CidClass.FOREIGN
        flipped = bytearray(cid)
        flipped[rng.randrange(CID_LENGTH)] ^= 1 << rng.randrange(8)
        assert one.classify(bytes(flipped)) is CidClass.FORGED
    forged = [rng.randbytes(CID_LENGTH) for _ in range(2000)]
    assert Counter(one.classify(c) for c in forged)[CidClass.FORGED] >= 1990
    for bad in (b"", b"\x01" * 7, b"\x01" * 9):
        assert one.classify(bad) is CidClass.FORGED


def test_a_cid_made_with_another_secret_is_forged() -> None:
    rng = _rng(3)
    ours, theirs = CidLayout(1, CidMode.OBFUSCATED, SECRET), CidLayout(1, CidMode.OBFUSCATED,
                                                                       b"\x55" * 32)
    kinds = Counter(ours.classify(c) for c in _issue(theirs, rng, 500))
    assert kinds == Counter({CidClass.FORGED: 500})


def test_plain_mode_shows_the_id_in_byte_0() -> None:
    rng = _rng(4)
    assert {cid[0] for cid in _issue(CidLayout(9, CidMode.PLAIN), rng, 200)} == {9}


def test_obfuscated_cids_of_one_server_have_no_fixed_byte() -> None:
    """No byte position of one server's CIDs is constant or nearly so (a random 256-subset
    of the prefixes shows about 162 distinct first bytes; plain mode shows 1)."""
    rng = _rng(5)
    cids = _issue(CidLayout(9, CidMode.OBFUSCATED, SECRET), rng, 4000)
    for pos in range(CID_LENGTH):
        values = Counter(c[pos] for c in cids)
        assert len(values) > 128, (pos, len(values))
        assert max(values.values()) < len(cids) // 25, (pos, values.most_common(1))
    prefixes = {int.from_bytes(c[:2], "big") for c in cids}
    assert len(prefixes) > 240  # of the server's 256


def test_obfuscated_prefixes_partition_the_space_evenly() -> None:
    owners = prefix_owners(CidMode.OBFUSCATED, SECRET)
    counts = Counter(owners)
    assert len(owners) == 65536
    assert set(counts) == set(range(256)) and set(counts.values()) == {256}
    # The partition is the secret's: another secret gives another one.
    other = prefix_owners(CidMode.OBFUSCATED, b"\x55" * 32)
    assert sum(a == b for a, b in zip(owners, other, strict=True)) < 65536 // 64
    # Whatever a server issues lands in its own part of the map.
    layout = CidLayout(42, CidMode.OBFUSCATED, SECRET)
    for cid in _issue(layout, _rng(6), 300):
        assert owners[int.from_bytes(cid[:2], "big")] == 42


def test_plain_prefix_map_is_byte_0() -> None:
    owners = prefix_owners(CidMode.PLAIN, None)
    assert all(owners[p] == p >> 8 for p in range(0, 65536, 97))


def test_plain_without_a_secret_still_rejects_garbage() -> None:
    layout = CidLayout(3, CidMode.PLAIN)
    rng = _rng(7)
    cid = layout.issue(rng.randbytes)
    assert layout.classify(cid) is CidClass.OWN
    assert layout.classify(cid[:7] + bytes((cid[7] ^ 0x80,))) is CidClass.FORGED


@pytest.mark.parametrize(("args", "message"), [
    ((256, CidMode.PLAIN, None), "outside 0..255"),
    ((-1, CidMode.PLAIN, None), "outside 0..255"),
    ((1, CidMode.OBFUSCATED, None), "need a fleet secret"),
    ((1, CidMode.OBFUSCATED, b"short"), "at least 16 bytes"),
])
def test_bad_layouts_are_refused(args: tuple[int, CidMode, bytes | None], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        CidLayout(*args)


def test_dtls_config_wants_8_byte_cids_with_a_layout() -> None:
    layout = CidLayout(1, CidMode.OBFUSCATED, SECRET)
    with pytest.raises(UsageError, match="cid_length 8"):
        DtlsConfig(is_client=False, psk=b"k" * 16, cid_length=4, cid_layout=layout,
                   cipher_suites=None)
    DtlsConfig(is_client=False, psk=b"k" * 16, cid_layout=layout)
