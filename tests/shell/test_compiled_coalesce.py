"""The compiled ``coalesce`` (``dtlsvpn/daemon/_vnet.c``) against ``vpn/gro.coalesce``, byte for byte.

The TUN writes through the compiled one when the compiled module is used
(``daemon/tun.py``), so it must give the frames the Python one gives for any list of
packets: interleaved flows of both families with and without options, short segments,
PSH, FIN and pure ACKs, gaps, UDP in between (``tests/support/tcp_batches.py``, the
Python coalescer's own strategies); runs where single segments differ in one field
(TOS, TTL, DF, flow label, acknowledgement, window, a flag, an option, IP options, a
lying IPv4 length, the size) and runs that reach the 64 KiB limit; fragments and IPv6
extension headers that close runs; and random bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtlsvpn.daemon import compiled
from dtlsvpn.vpn.gro import coalesce
from tests.fakes.packets import ACK, PSH, TIMESTAMPS, URG, tcp, udp
from tests.shell.conftest import needs_lane
from tests.support.tcp_batches import C4, C6, S4, S6, altered_runs, batches, psh_batches

pytestmark = needs_lane


def c_coalesce(packets: list[bytes]) -> list[bytes]:
    assert compiled.coalesce is not None
    return compiled.coalesce(packets)


@settings(max_examples=300, deadline=None)
@given(st.one_of(batches(), psh_batches(), altered_runs()))
def test_the_same_frames_as_python(packets: list[bytes]) -> None:
    assert c_coalesce(packets) == coalesce(packets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from([
    tcp(C4, S4, 1, bytes(100)), tcp(C6, S6, 1, bytes(100)),
    tcp(C4, S4, 101, bytes(100)), tcp(C6, S6, 101, bytes(100), flags=ACK | PSH)])),
    max_size=12))
def test_any_bytes_give_what_python_gives(packets: list[bytes]) -> None:
    assert c_coalesce(packets) == coalesce(packets)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("change", ["tos", "ttl", "df", "flow", "ack", "window", "psh", "urg",
                                    "option", "ipopt", "gap", "short", "long", "none"])
def test_a_segment_that_differs_in_one_field_as_in_python(v6: bool, change: str) -> None:
    """Each field a run's segments must repeat, changed in the third of six segments
    (hypothesis draws these too, but not every one in every run)."""
    src, dst = (C6, S6) if v6 else (C4, S4)
    packets = []
    seq = 1
    for i in range(6):
        kw: dict[str, object] = {"ident": i, "options": TIMESTAMPS}
        size = 1000
        if i == 2:
            kw.update({"tos": {"tos": 4}, "ttl": {"ttl": 63}, "df": {"df": False},
                       "flow": {"flow": 5}, "ack": {"ack": 8}, "window": {"window": 513},
                       "psh": {"flags": ACK | PSH}, "urg": {"flags": ACK | URG},
                       "option": {"options": TIMESTAMPS[:-1] + b"\x01"},
                       "ipopt": {"ip_options": b"" if v6 else b"\x01\x01\x01\x00"},
                       }.get(change, {}))
            seq += 7 if change == "gap" else 0
            size = {"short": 999, "long": 1004}.get(change, size)
        packets.append(tcp(src, dst, seq, bytes([i]) * size, **kw))  # type: ignore[arg-type]
        seq += size
    frames = c_coalesce(packets)
    assert frames == coalesce(packets)
    inert = change == "none" or (change in ("df", "ipopt") and v6) or (change == "flow"
                                                                         and not v6)
    # a PSH, a short segment or a gap ends one run and the rest makes another; any other
    # change makes that segment a run of its own between two
    want = 1 if inert else 2 if change in ("psh", "short", "gap") else 3
    assert len(frames) == want, (change, len(frames))


def fragment(pkt: bytes, offset: int) -> bytes:
    """``pkt`` (IPv4) marked as a fragment at ``offset`` 8-byte units."""
    return pkt[:6] + struct.pack("!H", offset) + pkt[8:]


def test_fragments_and_extension_headers_close_runs_as_in_python() -> None:
    run = [tcp(C4, S4, 1 + 1000 * i, bytes(1000), ident=i) for i in range(4)]
    run6 = [tcp(C6, S6, 1 + 1000 * i, bytes(1000)) for i in range(4)]
    ext = run6[0][:6] + b"\x00" + run6[0][7:]  # hop-by-hop next header
    for packets in ([*run[:2], fragment(run[2], 100), *run[2:]],
                    [*run[:2], fragment(run[2], 0)[:30], run[3]],
                    [*run6[:2], ext, *run6[2:]],
                    [*run[:2], udp(C4, S4), *run[2:]],
                    [*run[:2], *run6, *run[2:]]):
        assert c_coalesce(packets) == coalesce(packets)


def test_a_run_at_the_64k_limit_as_in_python() -> None:
    for size in (1000, 1448, 4000):
        run = [tcp(C4, S4, 1 + size * i, bytes(size), ident=i) for i in range(70)]
        frames = c_coalesce(run)
        assert frames == coalesce(run) and len(frames) > 1


def test_only_lists_of_bytes() -> None:
    with pytest.raises(TypeError):
        c_coalesce((b"x",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c_coalesce([bytearray(b"x")])  # type: ignore[list-item]
    assert c_coalesce([]) == []
