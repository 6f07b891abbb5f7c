"""Hypothesis strategies of TCP traffic toward a TUN: batches for the coalescer.

Shared by the Python coalescer's tests (``tests/unit/test_vpn_gro.py``) and the
compiled one's (``tests/shell/test_compiled_coalesce.py``), which must give the same
frames for the same batches.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from tests.fakes.packets import ACK, FIN, PSH, TIMESTAMPS, URG, tcp, udp

C4, S4 = "100.64.0.2", "100.64.0.1"
C6, S6 = "fd00::2", "fd00::1"


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Interleaved segments of a few flows (v4/v6, options or none, sizes, PSH, gaps,
    the odd pure ACK or FIN) and some UDP."""
    out: list[list[bytes]] = []
    for i in range(draw(st.integers(1, 3))):
        v6 = draw(st.booleans())
        src, dst = (C6, S6) if v6 else (C4, S4)
        mss = draw(st.sampled_from([536, 1220, 1373, 1374, 1448]))
        options = draw(st.sampled_from([b"", TIMESTAMPS]))
        seq = draw(st.integers(0, 2**32 - 1))
        segs: list[bytes] = []
        for j in range(draw(st.integers(1, 60))):
            kind = draw(st.sampled_from(["full"] * 8 + ["short", "psh", "ack", "fin", "gap"]))
            size = draw(st.integers(1, mss - 1)) if kind == "short" else mss
            if kind in ("ack", "fin"):
                size = 0 if kind == "ack" else 10
            if kind == "gap":
                seq += 1000
            flags = {"psh": ACK | PSH, "fin": ACK | FIN}.get(kind, ACK)
            segs.append(tcp(src, dst, seq, draw(st.binary(min_size=size, max_size=size)),
                            flags=flags, sport=40000 + i, ident=j, options=options))
            seq = (seq + size) & 0xFFFFFFFF
        out.append(segs)
    out.append([udp(C4, S4, seq=k, size=120) for k in range(draw(st.integers(0, 4)))])
    merged: list[bytes] = []
    while any(out):
        pick = draw(st.integers(0, len(out) - 1))
        if out[pick]:
            merged.append(out[pick].pop(0))
        else:
            out.pop(pick)
    return merged


@st.composite
def psh_batches(draw: st.DrawFn) -> list[bytes]:
    """``batches`` with PSH segments that open their flow's traffic (requests, keystrokes)
    and PSH-ended runs, in random places."""
    packets = draw(batches())
    for _ in range(draw(st.integers(0, 6))):
        size = draw(st.integers(1, 200))
        v6 = draw(st.booleans())
        pkt = tcp(C6 if v6 else C4, S6 if v6 else S4, draw(st.integers(0, 2**32 - 1)),
                  bytes(size), flags=ACK | PSH, sport=draw(st.sampled_from([40000, 40001, 41000])))
        packets.insert(draw(st.integers(0, len(packets))), pkt)
    return packets


_ALTERATIONS: dict[str, dict[str, object]] = {
    "tos": {"tos": 4}, "ttl": {"ttl": 63}, "df": {"df": False}, "flow": {"flow": 5},
    "ack": {"ack": 8}, "window": {"window": 513}, "psh": {"flags": ACK | PSH},
    "urg": {"flags": ACK | URG},
}


@st.composite
def altered_runs(draw: st.DrawFn) -> list[bytes]:
    """Long runs of one or two flows (the held run's territory) where single segments
    differ from their run in one field each: TOS or traffic class, TTL, DF, flow label,
    acknowledgement, window, a flag, an option's bytes, IP options, the IP length, a
    sequence gap, the size; and runs long enough to reach the 64 KiB limit."""
    out: list[bytes] = []
    flows = [(C6, S6) if draw(st.booleans()) else (C4, S4)
             for _ in range(draw(st.integers(1, 2)))]
    seqs = [draw(st.integers(0, 2**32 - 1)) for _ in flows]
    mss = draw(st.sampled_from([536, 1374, 1448]))
    options = draw(st.sampled_from([b"", TIMESTAMPS]))
    for i in range(draw(st.integers(1, 120))):
        f = draw(st.integers(0, len(flows) - 1)) if draw(st.integers(0, 9)) == 0 else 0
        src, dst = flows[f]
        v6 = ":" in src
        kw: dict[str, object] = {"sport": 40000 + f, "ident": i, "options": options}
        size = mss
        change = draw(st.sampled_from(["none"] * 12 + [*_ALTERATIONS, "option", "ipopt",
                                                        "length", "gap", "short", "long"]))
        kw.update(_ALTERATIONS.get(change, {}))
        if change == "option" and options:
            kw["options"] = options[:-1] + b"\x01"
        elif change == "ipopt" and not v6:
            kw["ip_options"] = b"\x01\x01\x01\x00"
        elif change == "gap":
            seqs[f] += 7
        elif change in ("short", "long"):
            size = draw(st.integers(1, mss - 1)) if change == "short" else mss + 4
        pkt = tcp(src, dst, seqs[f], draw(st.binary(min_size=size, max_size=size)),
                  **kw)  # type: ignore[arg-type]
        if change == "length" and not v6:  # an IPv4 total length that lies
            pkt = pkt[:2] + struct.pack("!H", len(pkt) - 1) + pkt[4:]
        out.append(pkt)
        seqs[f] = (seqs[f] + size) & 0xFFFFFFFF
    return out
