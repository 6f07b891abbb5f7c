"""Tools for the roaming tests, run inside a namespace (``python -m tests.netns.roamtools``).

- ``stream ADDR PORT --interval S --seconds S``: a UDP datagram every ``interval``
  seconds, each carrying its sequence number and wall-clock send time (the namespaces
  share the host's clock), for ``seconds``.
- ``sink ADDR PORT --seconds S``: receive such a stream and print one line per datagram
  (``seq sent_at arrived_at``; the arrival is the kernel's receive timestamp,
  SO_TIMESTAMPNS, so a sink that runs late on a busy machine does not shift it), then
  ``done``; ``summary`` reads those lines.
- ``paced ADDR PORT FILE --rate BYTES_PER_S``: a TCP copy of FILE at a bounded rate, so a
  change in the middle of it meets the copy in flight (``tools recv`` receives it).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import socket
import struct
import sys
import time
from dataclasses import dataclass

_DATAGRAM = struct.Struct("!Id")  # seq, wall-clock send time
_TIMESPEC = struct.Struct("=qq")  # struct timespec (64-bit Linux)
SO_TIMESTAMPNS = 35  # asm-generic/socket.h (also SCM_TIMESTAMPNS); not in Python's socket
END = 0xFFFFFFFF


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def stream(addr: str, port: int, interval: float, seconds: float) -> int:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        seq = 0
        while time.monotonic() < start + seconds:
            # No route for a moment: the datagram is lost, as on a real path.
            with contextlib.suppress(OSError):
                sock.sendto(_DATAGRAM.pack(seq, time.time()) + bytes(64), (addr, port))
            seq += 1
            time.sleep(max(0.0, start + seq * interval - time.monotonic()))
        for _ in range(3):  # the end (the sink stops at the first that arrives)
            sock.sendto(_DATAGRAM.pack(END, time.time()), (addr, port))
            time.sleep(0.05)
    print(f"sent={seq}", flush=True)
    return 0


def sink(addr: str, port: int, seconds: float) -> int:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as sock:
        sock.bind((addr, port))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        print("listening", flush=True)
        end = time.monotonic() + seconds
        lines: list[str] = []
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, ancdata, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(_TIMESPEC.size))
            except TimeoutError:
                break
            arrived = time.time()
            for level, kind, cdata in ancdata:
                if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                    sec, nsec = _TIMESPEC.unpack(cdata[:_TIMESPEC.size])
                    arrived = sec + nsec / 1e9
            seq, sent = _DATAGRAM.unpack_from(data)
            if seq == END:
                break
            lines.append(f"{seq} {sent:.6f} {arrived:.6f}")
    print("\n".join(lines), flush=True)
    print("done", flush=True)
    return 0


@dataclass(frozen=True)
class Summary:
    received: int
    lost: int  # sequence numbers never seen between the first and the last
    gap: float  # the longest time between two consecutive arrivals, seconds
    gap_after: float  # arrival time of the datagram that ended that gap
    back_after: float | None  # first datagram sent after ``since`` arriving, minus since


def summary(output: str, since: float) -> Summary:
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            rows.append((int(parts[0]), float(parts[1]), float(parts[2])))
    rows.sort(key=lambda r: r[2])
    seqs = {r[0] for r in rows}
    lost = (max(seqs) - min(seqs) + 1 - len(seqs)) if seqs else 0
    gap, gap_after = 0.0, 0.0
    for (_, _, a), (_, _, b) in itertools.pairwise(rows):
        if b - a > gap:
            gap, gap_after = b - a, b
    back = next((r[2] - since for r in rows if r[1] >= since), None)
    return Summary(len(rows), lost, gap, gap_after, back)


def paced(addr: str, port: int, path: str, rate: float) -> int:
    chunk = 16384
    with socket.create_connection((addr, port), timeout=30) as sock, open(path, "rb") as f:
        start = time.monotonic()
        sent = 0
        while data := f.read(chunk):
            sock.sendall(data)
            sent += len(data)
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.roamtools")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("stream", "sink", "paced"):
        sp = sub.add_parser(name)
        sp.add_argument("addr")
        sp.add_argument("port", type=int)
        if name == "paced":
            sp.add_argument("file")
            sp.add_argument("--rate", type=float, default=2e6)
        else:
            sp.add_argument("--seconds", type=float, default=10.0)
            sp.add_argument("--interval", type=float, default=0.005)
    a = p.parse_args(argv)
    if a.cmd == "stream":
        return stream(a.addr, a.port, a.interval, a.seconds)
    if a.cmd == "sink":
        return sink(a.addr, a.port, a.seconds)
    return paced(a.addr, a.port, a.file, a.rate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
