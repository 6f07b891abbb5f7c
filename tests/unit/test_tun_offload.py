"""The real ``Tun``'s offload choices and its vnet batch code, over a socketpair.

``_open`` (TUNSETIFF) and ``fcntl.ioctl`` (TUNSETOFFLOAD) are replaced so that the
kernel's answers can be chosen: ``auto`` falls back to a plain TUN when the header is
refused (EINVAL) but not on a permission error; ``on`` never falls back; reads drop the
header, writes carry it (coalesced where they can be).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest

from dtlsvpn.daemon import tun as tun_mod
from dtlsvpn.daemon.tun import IFF_VNET_HDR, TUNSETOFFLOAD, Tun
from dtlsvpn.vpn.vnet import PLAIN_HDR, VNET_HDR_LEN, segment
from tests.fakes.packets import tcp, udp


class Kernel:
    """What ``_open`` and ``ioctl`` answer; the far ends of the pairs handed out."""

    def __init__(self, refuse_vnet: int = 0) -> None:
        self.refuse_vnet = refuse_vnet
        self.opened: list[int] = []  # TUNSETIFF flags asked for
        self.offloads: list[int] = []
        self.far: list[socket.socket] = []

    def open(self, name: str, flags: int) -> tuple[int, str]:
        self.opened.append(flags)
        if flags & IFF_VNET_HDR and self.refuse_vnet:
            raise OSError(self.refuse_vnet, os.strerror(self.refuse_vnet))
        near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.far.append(far)
        return near.detach(), name

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        assert request == TUNSETOFFLOAD
        self.offloads.append(arg)
        return 0


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    k = Kernel()
    monkeypatch.setattr(tun_mod, "_open", k.open)
    monkeypatch.setattr(tun_mod.fcntl, "ioctl", k.ioctl)
    return k


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_offload_opens_with_the_header_and_no_read_offloads(kernel: Kernel, mode: str) -> None:
    t = Tun("dv0", mode)
    try:
        assert t.vnet and t.gro
        assert kernel.opened == [tun_mod.IFF_TUN | tun_mod.IFF_NO_PI | IFF_VNET_HDR]
        assert kernel.offloads == [0]  # the kernel segments and checksums what we read
    finally:
        t.close()


def test_off_is_plain(kernel: Kernel) -> None:
    t = Tun("dv0", "off")
    try:
        assert not t.vnet and kernel.opened == [tun_mod.IFF_TUN | tun_mod.IFF_NO_PI]
        kernel.far[0].send(b"packet")
        assert t.read_batch(8) == [b"packet"]
    finally:
        t.close()


def test_auto_falls_back_when_the_kernel_refuses_the_header(kernel: Kernel) -> None:
    kernel.refuse_vnet = errno.EINVAL
    t = Tun("dv0", "auto")
    try:
        assert not t.vnet and not t.gro
        assert len(kernel.opened) == 2 and not kernel.opened[1] & IFF_VNET_HDR
    finally:
        t.close()


@pytest.mark.parametrize(("mode", "err"), [("on", errno.EINVAL), ("auto", errno.EPERM),
                                           ("auto", errno.EBUSY)])
def test_no_fallback_for_on_or_for_errors_a_plain_tun_would_share(
    kernel: Kernel, mode: str, err: int
) -> None:
    kernel.refuse_vnet = err
    with pytest.raises(OSError) as info:
        Tun("dv0", mode)
    assert info.value.errno == err and len(kernel.opened) == 1


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="offload"):
        Tun("dv0", "maybe")


def test_vnet_reads_drop_the_header_and_writes_carry_it(kernel: Kernel) -> None:
    t = Tun("dv0", "on")
    far = kernel.far[0]
    far.setblocking(False)
    try:
        far.send(PLAIN_HDR + b"abc")
        far.send(bytes([2]) + bytes(9) + b"def")  # DATA_VALID: nothing to do for us
        assert t.read_batch(8) == [b"abc", b"def"]
        segs = [tcp("100.64.0.2", "100.64.0.1", 1 + 1300 * i, os.urandom(1300), ident=i)
                for i in range(5)]
        lone = udp("100.64.0.2", "100.64.0.1", size=300)
        assert t.write_batch([*segs, lone]) == 0
        first, second = far.recv(70000), far.recv(70000)
        assert segment(first) == segs and second == PLAIN_HDR + lone
        assert (t.counters.gso_writes, t.counters.gso_segments) == (1, 5)
        assert len(first) == VNET_HDR_LEN + 20 + 32 + 5 * 1300
    finally:
        t.close()
        far.close()


@pytest.mark.parametrize("mode", ["off", "on"])
@pytest.mark.parametrize("queued", [0, 1, 2, 7, 8, 9])
def test_a_batch_ends_at_the_poll_or_the_budget(kernel: Kernel, monkeypatch: pytest.MonkeyPatch,
                                                mode: str, queued: int) -> None:
    """Every queued packet comes out in order, at most ``budget`` per call; a lone packet
    costs one read (the zero-timeout poll ends the batch, no failing read)."""
    t = Tun("dv0", mode)
    far = kernel.far[0]
    header = PLAIN_HDR if t.vnet else b""
    reads: list[int] = []
    real_read = os.read

    def counting(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    try:
        sent = [f"packet-{i}".encode() for i in range(queued)]
        for pkt in sent:
            far.send(header + pkt)
        monkeypatch.setattr(os, "read", counting)
        got = t.read_batch(8)
        assert got == sent[:8]
        if queued == 1:
            assert len(reads) == 1  # no EAGAIN read after a lone packet
        assert t.read_batch(8) == sent[8:]
        assert t.read_batch(8) == []
    finally:
        monkeypatch.undo()
        t.close()
