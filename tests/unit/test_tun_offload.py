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

from dtlsvpn.cli.status import summary
from dtlsvpn.daemon import compiled
from dtlsvpn.daemon import tun as tun_mod
from dtlsvpn.daemon.tun import IFF_VNET_HDR, TSO_OFFLOADS, TUNSETOFFLOAD, Tun
from dtlsvpn.vpn.gro import coalesce
from dtlsvpn.vpn.vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    PLAIN_HDR,
    VNET_HDR,
    VNET_HDR_LEN,
    header,
    segment,
)
from tests.fakes.packets import ACK, PSH, needs_csum, tcp, tcp_valid, udp


class Kernel:
    """What ``_open`` and ``ioctl`` answer; the far ends of the pairs handed out."""

    def __init__(self, refuse_vnet: int = 0) -> None:
        self.refuse_vnet = refuse_vnet
        self.refuse_tso = 0
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
        if arg and self.refuse_tso:
            raise OSError(self.refuse_tso, os.strerror(self.refuse_tso))
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


# --- TSO on read (with the compiled segment; here vnet.segment stands in for it) --------


@pytest.fixture
def segmenter(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """``compiled.segment`` as if built: ``vnet.segment`` (the compiled one is held to it
    byte for byte in tests/shell/test_compiled_segment.py), recording its frames."""
    seen: list[bytes] = []

    def cut(frame: bytes) -> list[bytes]:
        seen.append(frame)
        return segment(frame)

    monkeypatch.setattr(compiled, "segment", cut)
    return seen


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_tso_is_offered_when_asked_and_compiled(kernel: Kernel, segmenter: list[bytes],
                                                mode: str) -> None:
    t = Tun("dv0", mode, use_compiled=True)
    try:
        assert t.vnet and t.gro and t.tso and kernel.offloads == [TSO_OFFLOADS]
    finally:
        t.close()


def test_tso_needs_the_compiled_segment_and_the_header(kernel: Kernel,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "segment", None)  # not built, or DTLSVPN_COMPILED_LANE=off
    t = Tun("dv0", "on", use_compiled=True)
    try:
        assert t.vnet and not t.tso and kernel.offloads == [0]
    finally:
        t.close()
    t = Tun("dv0", "off", use_compiled=True)
    try:
        assert not t.vnet and not t.tso and kernel.offloads == [0]
    finally:
        t.close()


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_kernel_that_refuses_tso_gives_finished_packets(
        kernel: Kernel, segmenter: list[bytes], caplog: pytest.LogCaptureFixture,
        mode: str) -> None:
    kernel.refuse_tso = errno.EINVAL
    caplog.set_level("INFO")
    t = Tun("dv0", mode, use_compiled=True)
    try:
        assert t.vnet and t.gro and not t.tso and kernel.offloads == [TSO_OFFLOADS, 0]
        assert "refused TSO on read" in caplog.text
    finally:
        t.close()


def test_tso_reads_cut_super_packets_and_complete_checksums(kernel: Kernel,
                                                            segmenter: list[bytes]) -> None:
    t = Tun("dv0", "on", use_compiled=True)
    far = kernel.far[0]
    try:
        run = [tcp("100.64.0.2", "100.64.0.1", 1 + 1300 * i, os.urandom(1300), ident=i,
                   flags=ACK | (PSH if i == 4 else 0)) for i in range(5)]
        (frame,) = coalesce(run)  # the same layout as a TSO read: NEEDS_CSUM, GSO, pseudo
        lone = tcp("100.64.0.2", "100.64.0.1", 9, b"keystroke", flags=ACK | PSH)
        plain = udp("100.64.0.2", "100.64.0.1", size=300)
        bad = header(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 4000) + lone  # offset past the end
        for f in (frame, needs_csum(lone), PLAIN_HDR + plain, bad):
            far.send(f)
        got = t.read_batch(64)
        assert got == [*run, lone, plain]
        assert all(tcp_valid(p) for p in got[:6])
        assert (t.counters.tso_reads, t.counters.tso_malformed) == (1, 1)
        assert len(segmenter) == 3  # the plain packet is not handed to segment
        assert t.read_batch(64) == []
    finally:
        t.close()


def test_a_tso_batch_counts_segments_and_ends_past_the_budget(
        kernel: Kernel, segmenter: list[bytes]) -> None:
    """The budget counts packets, not reads: a super-packet's segments all come out in
    the batch that read it (which may end above the budget), the next read waits for the
    next batch; what the compiled lane handed back comes first."""
    t = Tun("dv0", "on", use_compiled=True)
    far = kernel.far[0]
    try:
        runs = [[tcp("100.64.0.2", "100.64.0.1", 100000 * k + 1 + 1000 * i, bytes(1000),
                     ident=i) for i in range(5)] for k in range(3)]
        for run in runs:
            far.send(coalesce(run)[0])
        t.pending.append(b"handed back")
        assert t.read_batch(4) == [b"handed back", *runs[0]]
        assert t.read_batch(6) == [*runs[1], *runs[2]]
        assert t.read_batch(6) == []
        assert t.counters.tso_reads == 3
    finally:
        t.close()


def test_writes_coalesce_in_c_only_with_the_compiled_parts(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """``use_compiled`` takes ``compiled.coalesce`` for the writes (the compiled one is
    held to ``gro.coalesce`` in tests/shell/test_compiled_coalesce.py); without it, or
    without the module, ``gro.coalesce``."""
    calls: list[int] = []

    def recorded(packets: list[bytes]) -> list[bytes]:
        calls.append(len(packets))
        return coalesce(packets)

    segs = [tcp("100.64.0.2", "100.64.0.1", 1 + 1000 * i, bytes(1000), ident=i)
            for i in range(3)]
    for use, module_there, want in ((True, True, [3]), (False, True, []), (True, False, [])):
        monkeypatch.setattr(compiled, "coalesce", recorded if module_there else None)
        calls.clear()
        t = Tun("dv0", "on", use_compiled=use)
        far = kernel.far[-1]
        try:
            assert t.write_batch(segs) == 0
            assert segment(far.recv(70000)) == segs
            assert calls == want, (use, module_there)
        finally:
            t.close()


def with_hop_by_hop(frame: bytes) -> bytes:
    """An IPv6 TSO frame with an 8-byte hop-by-hop header (PadN) before its TCP header:
    what ``segment`` cannot cut (it knows TCP right after the fixed header only)."""
    flags, gso, hdr_len, gso_size, start, offset = VNET_HDR.unpack_from(frame)
    pkt = frame[VNET_HDR_LEN:]
    plen = int.from_bytes(pkt[4:6], "big") + 8
    ip = pkt[:4] + plen.to_bytes(2, "big") + b"\x00" + pkt[7:40]  # next header: hop-by-hop
    hbh = bytes((6, 0, 1, 4, 0, 0, 0, 0))
    return VNET_HDR.pack(flags, gso, hdr_len + 8, gso_size, start + 8, offset) + ip + hbh + (
        pkt[40:])


def test_a_read_that_cannot_be_cut_stops_tso_for_the_queue(
        kernel: Kernel, segmenter: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """The super-packet is dropped and counted, and the kernel is told to segment from
    then on, so that the TCP's retransmission of it arrives finished; what was queued
    before is still cut."""
    t = Tun("dv0", "on", use_compiled=True)
    far = kernel.far[0]
    try:
        run = [tcp("fd00::2", "fd00::1", 1 + 1000 * i, bytes(1000)) for i in range(3)]
        (frame,) = coalesce(run)
        assert segment(with_hop_by_hop(frame)) == []
        far.send(with_hop_by_hop(frame))
        far.send(frame)  # queued before the kernel was told: still a super-packet
        assert t.read_batch(64) == run
        assert (t.counters.tso_malformed, t.counters.tso_reads) == (1, 1)
        assert kernel.offloads == [TSO_OFFLOADS, 0] and t.tso and not t.tso_offered
        assert "could not be cut into segments" in caplog.text
        far.send(PLAIN_HDR + run[0])
        assert t.read_batch(64) == [run[0]] and kernel.offloads == [TSO_OFFLOADS, 0]
    finally:
        t.close()


def test_a_drop_counted_by_the_compiled_lane_stops_tso_at_the_next_read(
        kernel: Kernel, segmenter: list[bytes]) -> None:
    """C counts a read it could not cut in the Tun's counters and hands the event back
    with nothing pending; the next Python read sees the count and stops TSO."""
    t = Tun("dv0", "on", use_compiled=True)
    try:
        t.counters.tso_malformed += 1  # (what _lane.c's offloaded_read does)
        assert t.read_batch(64) == []
        assert kernel.offloads == [TSO_OFFLOADS, 0] and not t.tso_offered
    finally:
        t.close()


def test_status_says_whether_tso_is_offered_and_what_the_offload_did() -> None:
    """``dtlsvpn status``'s line for the TUN offload, on and off."""
    on = {"name": "t", "device": "dv0", "role": "client", "addresses": [], "mtu": 1400,
          "mtu_policy": "pmtu", "tun_offload": "on", "tun_tso": "on", "tun_tso_reads": 7,
          "tun_gso_writes": 3, "tun_gso_segments": 40}
    text = summary({"interface": on, "peers": []})
    assert "  tun offload: on, TSO on read on; 7 super-packets read, 3 written (40 segments)" \
        in text.splitlines()
    text = summary({"interface": {**on, "tun_offload": "off"}, "peers": []})
    assert "  tun offload: off" in text.splitlines()
