"""tshark captures on ``lo``: start one for a port, stop it without losing the tail, read it.

``start_capture`` returns once tshark is capturing ``udp port PORT``.  ``stop_capture``
first sends one sentinel datagram to ``SENTINEL_ADDR:PORT`` and waits until tshark's live
summary shows it: packets reach dumpcap in order, so everything before the sentinel is in
the file (stopping tshark right after the peers exit loses the last datagrams, e.g. the
close_notify alerts, to the capture ring's block timeout).  :class:`Capture` reads the
file back with a key log (``tshark -r``), leaving the sentinel out, as a table of
:class:`Frame` or through the "no malformed DTLS" filter of peers.md.

Used by ``test_tshark.py`` and ``test_heartbeat.py``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tests.interop.harness import READY_TIMEOUT
from tests.util import Proc, ProcessGroup, run_bounded, wait_until

# The "no malformed DTLS" display filter of peers.md ("tshark as an oracle").
MALFORMED = (
    "dtls && (_ws.malformed || _ws.expert.severity >= warning || !dtls.record"
    " || dtls.record.content_type < 20 || dtls.record.content_type > 25)"
)
SENTINEL_ADDR = "127.0.0.2"  # nobody listens there; its datagram marks the end of a capture
NOT_SENTINEL = f"!(ip.dst == {SENTINEL_ADDR})"
CAPTURE_LIMIT = 25  # seconds: tshark's own -a duration, below its `timeout`
READ_TIMEOUT = 20.0  # one `tshark -r` pass
TLS12_CID = 25  # RFC 9146 content type

# Fields of the per-frame table, in this order (see Frame).
FIELDS = (
    "frame.number", "udp.srcport", "udp.length", "dtls.record.content_type",
    "dtls.record.epoch", "dtls.handshake.type", "dtls.handshake.ciphersuite",
    "dtls.handshake.fragment_offset", "data.data", "dtls.alert_message.desc",
)


@dataclass(frozen=True)
class Frame:
    """One captured datagram as tshark dissected (and decrypted) it."""

    number: int
    src_port: int
    udp_length: int
    records: tuple[tuple[int, int], ...]  # (content type, epoch) of each DTLS record
    handshake_types: tuple[int, ...]
    suites: tuple[int, ...]
    fragment_offsets: tuple[int, ...]
    app_data: tuple[bytes, ...]
    alerts: tuple[int, ...]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v, 0) for v in text.split(",") if v)


@dataclass(frozen=True)
class Capture:
    """A finished capture file of one association, and the key log that decrypts it."""

    path: Path
    port: int
    keylog: Path

    def tshark(self, *args: str) -> str:
        argv = ["tshark", "-n", "-r", str(self.path), "-d", f"udp.port=={self.port},dtls",
                "-o", f"tls.keylog_file:{self.keylog}", *args]
        result = run_bounded(argv, READ_TIMEOUT)
        assert result.returncode == 0, f"{' '.join(argv)}: rc {result.returncode}\n{result.stderr}"
        return result.stdout

    def malformed(self) -> str:
        """Frame numbers (one a line) that the malformed filter flags; "" for a clean capture."""
        where = f"{NOT_SENTINEL} && ({MALFORMED})"
        return self.tshark("-T", "fields", "-e", "frame.number", "-Y", where).strip()

    def expert_info(self) -> str:
        """tshark's expert-info summary, for assertion messages."""
        return self.tshark("-q", "-z", "expert")

    def frames(self) -> list[Frame]:
        fields = [arg for name in FIELDS for arg in ("-e", name)]
        out = self.tshark("-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
                          "-Y", NOT_SENTINEL, *fields)
        frames = []
        for line in out.splitlines():
            num, src, length, ctypes, epochs, types, suites, offsets, data, alerts = (
                line.split("\t"))
            cts, eps = _ints(ctypes), _ints(epochs)
            # tshark 4.0 gives tls12_cid records (RFC 9146, type 25) an epoch but no
            # content_type field; they follow the plaintext records of a datagram.
            cts = cts + (TLS12_CID,) * (len(eps) - len(cts))
            frames.append(Frame(
                int(num), int(src), int(length), tuple(zip(cts, eps, strict=True)),
                _ints(types), _ints(suites), _ints(offsets),
                tuple(bytes.fromhex(h) for h in data.split(",") if h), _ints(alerts),
            ))
        return frames



def start_capture(procs: ProcessGroup, port: int, path: Path) -> Proc:
    """tshark capturing `udp port <port>` on lo into `path`, once it is capturing."""
    # -P -l: a flushed summary line per packet on stdout, for stop_capture's sentinel.
    proc = procs.start(
        ["tshark", "-n", "-l", "-P", "-i", "lo", "-f", f"udp port {port}", "-w", str(path),
         "-a", f"duration:{CAPTURE_LIMIT}"],
        name="tshark", timeout=CAPTURE_LIMIT + 5, stdin_pipe=False,
    )
    ready = wait_until(
        lambda: "Capturing on" in proc.stderr() or path.exists() or proc.returncode is not None,
        READY_TIMEOUT,
    )
    assert ready and proc.returncode is None, f"tshark is not capturing\n{proc.describe()}"
    return proc


def stop_capture(procs: ProcessGroup, proc: Proc, path: Path, port: int) -> None:
    """Drain (sentinel, see the module docstring), then SIGTERM tshark by PID and wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"end-of-capture", (SENTINEL_ADDR, port))
    assert proc.wait_for(f" {SENTINEL_ADDR} ", READY_TIMEOUT), (
        f"tshark did not see the sentinel datagram\n{proc.describe()}")
    rc = procs.stop(proc, grace=5.0)
    assert rc == 0, f"tshark exited with {rc}\n{proc.describe()}"
    assert path.exists() and path.stat().st_size > 0, proc.describe()
