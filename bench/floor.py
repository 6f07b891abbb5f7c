"""The Python floor: the least a Python TUN↔UDP forwarder can do per packet.

Not a VPN and not part of dtlsvpn: no handshake, no replay window, no routing, no
timers, a key from the command line.  Per packet it does what any Python tunnel must
(one ``os.read`` or ``recv``, one AES-128-GCM seal or open through ``cryptography``,
one ``send`` or ``os.write``) and nothing else, so its round trip is the lower bound
of a pure-Python design on this machine, interpreter wake-up included.  The bench
runs it beside the VPNs (``BENCH_SYSTEMS=floor``) to show how much of dtlsvpn's
latency is the language and how much is dtlsvpn's own code.

Record: an 8-byte big-endian sequence number (the GCM nonce's explicit part, after a
4-byte salt, as in RFC 5288) followed by the ciphertext and tag.

    python -m bench.floor DEV LOCAL_PORT PEER_IP PEER_PORT KEY_HEX
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SALT = b"\x00floor"[:4]


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(argv: list[str]) -> int:
    dev, local_port, peer_ip, peer_port, key_hex = argv
    tun = open_tun(dev)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", int(local_port)))
    peer = (peer_ip, int(peer_port))
    aead = AESGCM(bytes.fromhex(key_hex))
    seal, open_, pack = aead.encrypt, aead.decrypt, struct.pack
    read, write, recv, sendto = os.read, os.write, sock.recv, sock.sendto
    ep = select.epoll()
    ep.register(tun, select.EPOLLIN)
    ep.register(sock.fileno(), select.EPOLLIN)
    seq = 0
    print(f"floor: {dev} up, udp {local_port} -> {peer_ip}:{peer_port}", flush=True)
    while True:
        for fd, _ in ep.poll():
            if fd == tun:
                while True:
                    try:
                        pkt = read(tun, 65535)
                    except BlockingIOError:
                        break
                    seq += 1
                    explicit = pack("!Q", seq)
                    try:  # noqa: SIM105 (a with-block costs more per packet)
                        sendto(explicit + seal(SALT + explicit, pkt, None), peer)
                    except OSError:  # the peer not up yet (ICMP unreachable), a full buffer
                        pass
            else:
                while True:
                    try:
                        dgram = recv(65535)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue
                    if len(dgram) < 24:
                        continue
                    try:  # noqa: SIM105 (as above)
                        write(tun, open_(SALT + dgram[:8], dgram[8:], None))
                    except Exception:  # a forgery or a full TUN queue: dropped
                        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
