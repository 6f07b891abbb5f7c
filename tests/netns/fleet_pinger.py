"""A paced ICMP echo stream with kernel receive timestamps (run inside a namespace).

``python -m tests.netns.fleet_pinger ADDR SECONDS INTERVAL`` sends one echo request every
INTERVAL seconds for SECONDS, without waiting for replies, and prints one JSON object:
``{"sent": N, "replies": [[seq, t], ...]}`` where ``t`` is the kernel's receive timestamp
of the reply (SO_TIMESTAMPNS, wall clock seconds), so the caller measures an interruption
from packet timestamps rather than from its own scheduling.  IPv4 only; bounded by SECONDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import sys
import time

from dtlsvpn.vpn.ip import checksum

SO_TIMESTAMPNS = 35


def main(argv: list[str]) -> int:
    addr, seconds, interval = argv[0], float(argv[1]), float(argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    ident = os.getpid() & 0xFFFF
    replies: dict[int, float] = {}
    start = time.monotonic()
    end = start + seconds
    seq = 0
    next_send = start
    while (now := time.monotonic()) < end + 1.0:
        if now >= next_send and now < end:
            seq += 1
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
            payload = struct.pack("!d", time.time()) + b"fleet" * 8
            packet = (header[:2] + struct.pack("!H", checksum(header + payload)) + header[4:]
                      + payload)
            with contextlib.suppress(OSError):  # no route for a moment: counts as lost
                sock.sendto(packet, (addr, 0))
            next_send += interval
        wait = max(0.0, min(next_send, end + 1.0) - time.monotonic())
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        data, ancdata, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        icmp = data[(data[0] & 0x0F) * 4:]
        if len(icmp) < 8 or icmp[0] != 0 or struct.unpack("!H", icmp[4:6])[0] != ident:
            continue
        stamp = time.time()
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("=qq", cdata[:16])
                stamp = sec + nsec / 1e9
        replies.setdefault(struct.unpack("!H", icmp[6:8])[0], stamp)
    print(json.dumps({"sent": seq, "replies": sorted(replies.items())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
