"""dtlsvpn.crypto.tickets: ticket state codec, sealing, rotation and the key file text."""

from __future__ import annotations

import dataclasses
import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.crypto.tickets import (
    DEFAULT_TICKET_LIFETIME,
    FUTURE_SKEW,
    KEY_NAME_LEN,
    MAX_BINDING_LEN,
    MAX_PEER_IDENTITY_LEN,
    MAX_TICKET_LEN,
    TICKET_OVERHEAD,
    KeyFileError,
    TicketKey,
    TicketKeyRing,
    TicketState,
    parse_keys,
)
from dtlsvpn.errors import DecodeError, UsageError

T0 = 1_700_000_000  # a wall-clock second
SUITE = 0xC02B  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256


def seeded(seed: int = 1):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def state(
    issued_at: int = T0,
    lifetime: int = 3600,
    identity: bytes = hashlib.sha256(b"leaf").digest(),
    ems: bool = True,
) -> TicketState:
    return TicketState(
        version=0xFEFD, suite=SUITE, master_secret=bytes(range(48)), ems=ems,
        peer_identity=identity, issued_at=issued_at, lifetime=lifetime,
    )


# --- TicketState -----------------------------------------------------------


@pytest.mark.parametrize("identity", [b"", b"psk:client1", hashlib.sha256(b"x").digest()])
@pytest.mark.parametrize("ems", [True, False])
def test_state_round_trip(identity: bytes, ems: bool) -> None:
    s = state(identity=identity, ems=ems)
    assert TicketState.decode(s.encode()) == s


def test_state_layout() -> None:
    data = dataclasses.replace(state(identity=b"id"), binding=b"b" * 16).encode()
    assert data[0] == 2  # format (1: before the binding)
    assert data[1:3] == b"\xfe\xfd"
    assert data[3:5] == SUITE.to_bytes(2, "big")
    assert data[5] == 1  # EMS flag
    assert data[6:14] == T0.to_bytes(8, "big")
    assert data[14:18] == (3600).to_bytes(4, "big")
    assert data[18:66] == bytes(range(48))
    assert data[66:] == b"\x00\x02id\x10" + b"b" * 16


def test_a_format_1_state_no_longer_decodes() -> None:
    data = state(identity=b"id").encode()
    with pytest.raises(DecodeError, match="format 1"):
        TicketState.decode(b"\x01" + data[1:-1])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\x00",  # trailing byte
        lambda d: b"\x03" + d[1:],  # unknown format
        lambda d: d[:5] + b"\x02" + d[6:],  # reserved flag
        lambda d: b"",
    ],
)
def test_state_decode_rejects(mutate) -> None:
    with pytest.raises(DecodeError):
        TicketState.decode(mutate(state().encode()))


def test_state_validation() -> None:
    with pytest.raises(UsageError):
        dataclasses.replace(state(), master_secret=b"short")
    with pytest.raises(UsageError):
        dataclasses.replace(state(), lifetime=-1)
    with pytest.raises(UsageError):
        dataclasses.replace(state(), peer_identity=bytes(MAX_PEER_IDENTITY_LEN + 1))
    with pytest.raises(UsageError):
        dataclasses.replace(state(), suite=0x10000)
    assert "master_secret" not in repr(state())


@given(st.binary(max_size=300))
def test_state_decode_raises_only_decode_error(data: bytes) -> None:
    try:
        s = TicketState.decode(data)
    except DecodeError:
        return
    assert s.encode() == data


@given(
    st.builds(
        TicketState,
        version=st.integers(0, 0xFFFF), suite=st.integers(0, 0xFFFF),
        master_secret=st.binary(min_size=48, max_size=48), ems=st.booleans(),
        peer_identity=st.binary(max_size=100), issued_at=st.integers(0, 2**64 - 1),
        lifetime=st.integers(0, 2**32 - 1),
    )
)
def test_state_round_trip_property(s: TicketState) -> None:
    assert TicketState.decode(s.encode()) == s


# --- sealing and opening ---------------------------------------------------


def test_seal_open_round_trip() -> None:
    ring = TicketKeyRing(seeded())
    s = state()
    ticket = ring.seal(s, T0)
    assert len(ticket) == TICKET_OVERHEAD + len(s.encode())
    assert ticket[:KEY_NAME_LEN] == ring.keys[-1].key_name
    assert ring.open(ticket, T0 + 10) == s
    # A fresh nonce each time: two tickets for one state differ.
    assert ring.seal(s, T0) != ticket


def test_largest_state_fits_ticket_length() -> None:
    ring = TicketKeyRing(seeded())
    s = dataclasses.replace(state(identity=bytes(MAX_PEER_IDENTITY_LEN)),
                            binding=bytes(MAX_BINDING_LEN))
    ticket = ring.seal(s, T0)
    assert len(ticket) == MAX_TICKET_LEN
    assert ring.open(ticket, T0) == s


def test_tamper_any_byte_rejected() -> None:
    ring = TicketKeyRing(seeded())
    ticket = ring.seal(state(identity=b"psk:a"), T0)
    for i in range(len(ticket)):
        for bit in (0x01, 0x80):
            bad = ticket[:i] + bytes([ticket[i] ^ bit]) + ticket[i + 1:]
            assert ring.open(bad, T0) is None, (i, bit)
    assert ring.open(ticket[:-1], T0) is None
    assert ring.open(ticket + b"\x00", T0) is None
    assert ring.open(b"", T0) is None
    assert ring.open(ticket[:TICKET_OVERHEAD], T0) is None


def test_foreign_ring_rejected() -> None:
    mine, theirs = TicketKeyRing(seeded(1)), TicketKeyRing(seeded(2))
    theirs_ticket = theirs.seal(state(), T0)
    mine.seal(state(), T0)  # mine has a key too, just not theirs
    assert mine.open(theirs_ticket, T0) is None


def test_forged_with_known_key_name_rejected() -> None:
    ring = TicketKeyRing(seeded())
    ticket = ring.seal(state(), T0)
    other = TicketKeyRing(seeded(9), keys=[
        TicketKey(ticket[:KEY_NAME_LEN], bytes(32), T0)  # right name, wrong secret
    ])
    assert ring.open(other.seal(state(), T0), T0) is None


def test_expiry_and_future() -> None:
    ring = TicketKeyRing(seeded(), rotate_every=0)
    ticket = ring.seal(state(issued_at=T0, lifetime=100), T0)
    assert ring.open(ticket, T0 + 100) is not None
    assert ring.open(ticket, T0 + 100.5) is None
    assert ring.open(ticket, T0 + 101) is None
    # Issued "in the future": tolerated up to FUTURE_SKEW seconds of clock skew.
    assert ring.open(ticket, T0 - FUTURE_SKEW) is not None
    assert ring.open(ticket, T0 - FUTURE_SKEW - 1) is None


def test_ring_lifetime_caps_ticket_lifetime() -> None:
    long_ring = TicketKeyRing(seeded(), rotate_every=0, ticket_lifetime=1000)
    ticket = long_ring.seal(state(lifetime=1000), T0)
    short_ring = TicketKeyRing(seeded(), rotate_every=0, ticket_lifetime=10,
                               keys=long_ring.keys)
    assert short_ring.open(ticket, T0 + 10) is not None
    assert short_ring.open(ticket, T0 + 11) is None


def test_seal_refuses_lifetime_beyond_ring() -> None:
    ring = TicketKeyRing(seeded(), ticket_lifetime=100)
    with pytest.raises(UsageError):
        ring.seal(state(lifetime=101), T0)


def test_lifetime_hint_and_default() -> None:
    assert DEFAULT_TICKET_LIFETIME == 43200
    assert TicketKeyRing(seeded()).lifetime_hint == 43200
    assert TicketKeyRing(seeded(), ticket_lifetime=600).lifetime_hint == 600


@given(st.binary(max_size=400))
def test_open_never_raises(data: bytes) -> None:
    ring = TicketKeyRing(seeded())
    ticket = ring.seal(state(), T0)
    assert ring.open(data, T0) is None or data == ticket
    # Also with a valid key name in front of arbitrary bytes.
    assert ring.open(ticket[:KEY_NAME_LEN] + data, T0) is None


# --- rotation ----------------------------------------------------------------


def test_rotation_keeps_old_tickets_then_retires_keys() -> None:
    ring = TicketKeyRing(seeded(), rotate_every=100, ticket_lifetime=1000)
    s0 = state(issued_at=T0, lifetime=1000)
    t0 = ring.seal(s0, T0)
    first = ring.keys[-1].key_name
    # Not yet due: same key.
    ring.seal(state(issued_at=T0 + 100, lifetime=1000), T0 + 100)
    assert [k.key_name for k in ring.keys] == [first]
    # Due: a new key becomes current; the old one still opens its tickets.
    s1 = state(issued_at=T0 + 101, lifetime=1000)
    t1 = ring.seal(s1, T0 + 101)
    assert len(ring.keys) == 2
    assert t1[:KEY_NAME_LEN] == ring.keys[-1].key_name != first
    assert ring.open(t0, T0 + 1000) == s0
    # The last ticket the first key could have sealed (at T0 + 100) lives to T0 + 1100;
    # the key is retired just after, and the second key lives on.
    assert any(k.key_name == first for k in ring.keys)
    assert ring.open(t1, T0 + 1101) == s1
    assert [k.key_name for k in ring.keys] == [t1[:KEY_NAME_LEN]]
    assert ring.open(t0, T0 + 1000) is None  # rotated out


def test_long_idle_replaces_everything() -> None:
    ring = TicketKeyRing(seeded(), rotate_every=10, ticket_lifetime=20)
    t0 = ring.seal(state(lifetime=20), T0)
    assert ring.maintain(T0 + 1000) is True
    assert len(ring.keys) == 1 and ring.keys[0].created == T0 + 1000
    assert ring.open(t0, T0 + 10) is None


def test_maintain_reports_changes() -> None:
    ring = TicketKeyRing(seeded(), rotate_every=10, ticket_lifetime=20)
    assert ring.maintain(T0) is True  # first key
    assert ring.maintain(T0 + 10) is False
    assert ring.maintain(T0 + 11) is True  # rotated
    assert ring.maintain(T0 + 21) is False
    assert ring.maintain(T0 + 22) is True  # rotated again
    assert ring.maintain(T0 + 30) is False  # the first key's last ticket may still live
    assert ring.maintain(T0 + 31) is True  # first key retired
    assert [k.created for k in ring.keys] == [T0 + 11, T0 + 22]


def test_rotate_every_zero_never_rotates_or_retires() -> None:
    key = TicketKey(b"k" * 16, b"s" * 32, 0)  # a deployment key from long ago
    ring = TicketKeyRing(seeded(), rotate_every=0, keys=[key])
    ticket = ring.seal(state(), T0)
    assert ring.keys == (key,)
    assert ticket[:KEY_NAME_LEN] == key.key_name
    assert ring.open(ticket, T0 + 1) == state()


def test_ring_validation() -> None:
    with pytest.raises(UsageError):
        TicketKeyRing(seeded(), rotate_every=-1)
    with pytest.raises(UsageError):
        TicketKeyRing(seeded(), ticket_lifetime=0)
    k = TicketKey(b"k" * 16, b"s" * 32, 0)
    with pytest.raises(UsageError):
        TicketKeyRing(seeded(), keys=[k, dataclasses.replace(k, created=1)])
    with pytest.raises(UsageError):
        TicketKey(b"short", b"s" * 32, 0)
    with pytest.raises(UsageError):
        TicketKeyRing(lambda n: b"\x00").seal(state(), T0)
    assert "secret" not in repr(k)


# --- key file text ----------------------------------------------------------


def test_dumps_and_parse_keys_round_trip() -> None:
    ring = TicketKeyRing(seeded(), rotate_every=10)
    ring.maintain(T0)
    ring.maintain(T0 + 11)
    text = ring.dumps()
    assert text.startswith("# ") and text.endswith("\n")
    assert parse_keys(text.encode("ascii")) == ring.keys
    reader = TicketKeyRing(seeded(2), rotate_every=0)
    reader.replace_keys(parse_keys(text.encode("ascii")))
    s = state()
    assert reader.open(ring.seal(s, T0 + 11), T0 + 11) == s


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"00" * 16 + b" 1 " + b"00" * 31, 1),
        (b"# c\n\n" + b"00" * 16 + b" x " + b"00" * 32, 3),
        ((b"00" * 16 + b" 1 " + b"11" * 32 + b"\n") * 2, 2),
        (b"# nothing\n", None),
        (b"\xe9", None),
    ],
)
def test_parse_keys_names_the_line(data: bytes, line: int | None) -> None:
    with pytest.raises(KeyFileError) as exc:
        parse_keys(data)
    assert isinstance(exc.value, DecodeError)
    assert exc.value.line == line
    assert str(exc.value) == (exc.value.reason if line is None
                              else f"line {line}: {exc.value.reason}")


def test_replace_keys_refuses_repeated_names_and_keeps_the_old_ones() -> None:
    ring = TicketKeyRing(seeded())
    ring.maintain(T0)
    old = ring.keys
    with pytest.raises(UsageError):
        ring.replace_keys([old[0], dataclasses.replace(old[0], created=1)])
    assert ring.keys == old
