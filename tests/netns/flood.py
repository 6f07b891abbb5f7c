"""A bounded spoofed-source UDP flood for tests/netns/test_flood.py, run in its own namespace.

``python -m tests.netns.flood KIND TARGET_IP PORT RATE SECONDS SOURCE_PREFIX``

KIND: ``hello`` (DTLS 1.2 ClientHellos built with our wire codecs, a fresh random per
datagram, no cookie), ``garbage`` (random bytes, 20–300 of them) or ``cid`` (well-formed
``tls12_cid`` records with random 8-byte CIDs and sequence numbers).  Each datagram
leaves from a random address of SOURCE_PREFIX (an IPv4 /16), through a raw socket
(``IP_HDRINCL``).  A second raw socket counts the UDP datagrams the target sends back
to any address of the prefix (the namespace routes that prefix to us) and the largest.
The flood is paced in 1 ms ticks and stops after SECONDS; then one JSON line on stdout:
``{"sent": N, "sent_bytes": B, "largest_sent": S, "replies": R, "largest_reply": L,
"seconds": T}``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import threading
import time

from dtlsvpn.wire.constants import DTLS_1_2, ContentType, ExtensionType, NamedGroup
from dtlsvpn.wire.extensions import (
    Extension,
    encode_extended_master_secret,
    encode_supported_groups,
)
from dtlsvpn.wire.handshake import ClientHello, encode_client_hello, encode_handshake
from dtlsvpn.wire.record import encode_record

PSK_SUITES = (0x00A8, 0xCCAC)


def _hello(rng: random.Random) -> bytes:
    exts = (Extension(ExtensionType.supported_groups,
                      encode_supported_groups([NamedGroup.x25519])),
            Extension(ExtensionType.extended_master_secret, encode_extended_master_secret()))
    body = encode_client_hello(ClientHello(DTLS_1_2, rng.randbytes(32), b"", b"",
                                           PSK_SUITES, b"\x00", exts))
    return encode_record(ContentType.handshake, 0, 0, encode_handshake(1, 0, body))


def _payload(kind: str, rng: random.Random, hello: bytes) -> bytes:
    if kind == "hello":
        return hello[:27] + rng.randbytes(32) + hello[59:]  # only the random changes
    if kind == "garbage":
        return rng.randbytes(rng.randrange(20, 300))
    # RFC 9146 §4: type 25, version, epoch 1, seq(6), an 8-byte CID, length, body.
    body = rng.randbytes(rng.randrange(40, 200))
    return (struct.pack("!BHH", ContentType.tls12_cid, DTLS_1_2, 1)
            + rng.getrandbits(48).to_bytes(6, "big") + rng.randbytes(8)
            + struct.pack("!H", len(body)) + body)


def _ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    # The kernel fills the IPv4 checksum and id (IP_HDRINCL with both 0); UDP checksum 0.
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64,
                       socket.IPPROTO_UDP, 0, socket.inet_aton(src),
                       socket.inet_aton(dst)) + udp


def main(argv: list[str]) -> int:
    kind, target, port_s, rate_s, seconds_s, prefix = argv
    port, rate, seconds = int(port_s), float(rate_s), float(seconds_s)
    a, b = (int(x) for x in prefix.split(".")[:2])
    rng = random.Random(os.getpid())
    hello = _hello(rng)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    rx.settimeout(0.2)
    stats = {"sent": 0, "sent_bytes": 0, "largest_sent": 0, "replies": 0, "largest_reply": 0}
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                pkt = rx.recv(65535)
            except TimeoutError:
                continue
            ihl = (pkt[0] & 15) * 4
            src = socket.inet_ntoa(pkt[12:16])
            sport = struct.unpack("!H", pkt[ihl:ihl + 2])[0]
            if src == target and sport == port:
                stats["replies"] += 1
                stats["largest_reply"] = max(stats["largest_reply"], len(pkt) - ihl - 8)

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - stats["sent"]
        for _ in range(min(due, 1000)):
            payload = _payload(kind, rng, hello)
            src = f"{a}.{b}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            try:
                tx.sendto(_ip_udp(src, target, rng.randrange(1024, 65535), port, payload),
                          (target, 0))
            except OSError:
                continue
            stats["sent"] += 1
            stats["sent_bytes"] += len(payload)
            stats["largest_sent"] = max(stats["largest_sent"], len(payload))
        time.sleep(0.001)
    time.sleep(0.5)  # the last replies
    done.set()
    reader.join(2)
    stats["seconds"] = round(time.monotonic() - start, 2)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
