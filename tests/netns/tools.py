"""Small network tools run *inside* a test namespace (``python -m tests.netns.tools ...``).

No dependency on iputils or netcat: the tests need exactly these behaviours and bounded
run times, so they are written here with the standard library.

- ``ping ADDR [--count N] [--size N] [--df] [--timeout S]``: ICMP/ICMPv6 echo over a raw
  socket; ``--df`` sets IP_PMTUDISC_DO (IPv4: DF set, no local fragmentation; IPv6 never
  fragments on the way anyway).  Prints one line per reply and exits 0 when every echo
  came back.
- ``recv ADDR PORT``: accept one TCP connection, print the byte count and SHA-256 of what
  arrived (``bytes=N sha256=HEX``).
- ``send ADDR PORT FILE``: connect and send the file.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import socket
import struct
import sys
import time

from dtlsvpn.vpn.ip import checksum

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2


def ping(addr: str, count: int, size: int, df: bool, timeout: float) -> int:
    v6 = ipaddress.ip_address(addr).version == 6
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        if df:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    ident = os.getpid() & 0xFFFF
    payload = (b"dtlsvpn!" * (size // 8 + 1))[:size]
    received = 0
    for seq in range(1, count + 1):
        kind = 128 if v6 else 8
        header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
        packet = header + payload
        if not v6:  # the kernel fills in the ICMPv6 checksum
            packet = header[:2] + struct.pack("!H", checksum(packet)) + header[4:] + payload
        start = time.monotonic()
        try:
            sock.sendto(packet, (addr, 0))
        except OSError as exc:
            print(f"seq={seq} send failed: {exc.strerror}", flush=True)
            continue
        deadline = start + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            want = 129 if v6 else 0
            if len(icmp) >= 8 and icmp[0] == want and struct.unpack("!HH", icmp[4:8]) == (
                ident, seq
            ):
                rtt = (time.monotonic() - start) * 1000
                print(f"reply from {addr}: seq={seq} bytes={len(icmp)} time={rtt:.2f} ms",
                      flush=True)
                received += 1
                break
        else:
            print(f"seq={seq} timed out", flush=True)
    print(f"{count} transmitted, {received} received", flush=True)
    return 0 if received == count else 1


def recv(addr: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
        digest = hashlib.sha256()
        total = 0
        start = time.monotonic()
        with conn:
            while data := conn.recv(1 << 20):
                digest.update(data)
                total += len(data)
        seconds = max(time.monotonic() - start, 1e-6)
    print(f"bytes={total} sha256={digest.hexdigest()} mbit_s={total * 8 / seconds / 1e6:.0f}",
          flush=True)
    return 0


def send(addr: str, port: int, path: str) -> int:
    with socket.create_connection((addr, port), timeout=30) as sock, open(path, "rb") as f:
        sock.sendfile(f)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("ping")
    pp.add_argument("addr")
    pp.add_argument("--count", type=int, default=3)
    pp.add_argument("--size", type=int, default=56)
    pp.add_argument("--df", action="store_true")
    pp.add_argument("--timeout", type=float, default=2.0)
    rp = sub.add_parser("recv")
    rp.add_argument("addr")
    rp.add_argument("port", type=int)
    sp = sub.add_parser("send")
    sp.add_argument("addr")
    sp.add_argument("port", type=int)
    sp.add_argument("file")
    a = p.parse_args(argv)
    if a.cmd == "ping":
        return ping(a.addr, a.count, a.size, a.df, a.timeout)
    if a.cmd == "recv":
        return recv(a.addr, a.port)
    return send(a.addr, a.port, a.file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
