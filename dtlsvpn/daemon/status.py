"""Status socket: a UNIX stream socket (mode 0600) answering one request per connection.

Protocol (one request line, then the reply, then the daemon closes the connection):

- ``get``       → ``key=value`` lines in the spirit of wireguard-go's UAPI: the
                  interface's keys, then for each peer a ``peer=NAME`` line followed by
                  that peer's keys; drop counters appear as ``drop_<reason>=N``.
- ``get json``  → the same data as one JSON document.

The listener and its connections are non-blocking fds in the daemon's loop; a reply that
does not fit in the socket buffer at once is finished when the connection is writable.
The socket is created under umask 077 and chmod'ed to 0600, so only root can ask.
At most ``MAX_CONNECTIONS`` connections are open at once and each is closed
``CONN_TIMEOUT`` seconds after it was accepted, answered or not, so clients that
connect and never ask (or never read) cannot keep the slots from a later query.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtlsvpn.daemon.loop import EPOLLOUT, Loop, Timer

MAX_REQUEST = 1024
MAX_CONNECTIONS = 16
CONN_TIMEOUT = 2.0  # seconds a connection may take to send its request and read the reply

Snapshot = Callable[[], dict[str, Any]]


def format_text(snap: dict[str, Any]) -> str:
    """The ``key=value`` form of a snapshot."""
    lines: list[str] = []

    def emit(prefix: str, items: dict[str, Any]) -> None:
        for key, value in items.items():
            if isinstance(value, dict):
                emit(f"{prefix}{key}_", value)
            elif isinstance(value, bool):
                lines.append(f"{prefix}{key}={'yes' if value else 'no'}")
            elif isinstance(value, (list, tuple)):
                lines.append(f"{prefix}{key}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"{prefix}{key}={'' if value is None else value}")

    emit("", snap.get("interface", {}))
    for peer in snap.get("peers", []):
        lines.append(f"peer={peer.get('name', '')}")
        emit("", {k: v for k, v in peer.items() if k != "name"})
    return "\n".join(lines) + "\n"


# --- Prometheus text format 0.0.4 --------------------------------------------------------
#
# One family per metric name, each introduced by ``# HELP`` and ``# TYPE`` once, its samples
# from every instance right after (the format forbids a family appearing twice).  Label
# values escape backslash, double quote and newline; HELP text backslash and newline.

_PEER_METRICS: tuple[tuple[str, str, str, str], ...] = (
    # (name, type, help, snapshot key)
    ("dtlsvpn_peer_up", "gauge", "1 when the peer's association is established.", ""),
    ("dtlsvpn_peer_rx_bytes_total", "counter",
     "Inner bytes received from the peer and written to the TUN device.", "rx_bytes"),
    ("dtlsvpn_peer_tx_bytes_total", "counter", "Inner bytes sent to the peer.", "tx_bytes"),
    ("dtlsvpn_peer_rx_packets_total", "counter",
     "Inner packets received from the peer and written to the TUN device.", "rx_packets"),
    ("dtlsvpn_peer_tx_packets_total", "counter", "Inner packets sent to the peer.",
     "tx_packets"),
    ("dtlsvpn_peer_handshakes_total", "counter", "Completed handshakes with the peer.",
     "handshakes"),
    ("dtlsvpn_peer_retransmissions_total", "counter",
     "Handshake flight retransmissions of the current association.", "retransmissions"),
    ("dtlsvpn_peer_last_handshake_seconds", "gauge",
     "Unix time of the last completed handshake (absent before the first).",
     "last_handshake"),
    ("dtlsvpn_peer_rekeys_total", "counter",
     "Key renewals (make-before-break full handshakes) with the peer.", "rekeys"),
    ("dtlsvpn_peer_rekey_generation", "gauge",
     "Renewals since the current connection's first handshake.", "rekey_generation"),
    ("dtlsvpn_peer_last_rekey_seconds", "gauge",
     "Unix time of the last key renewal (absent before the first).", "last_rekey"),
    ("dtlsvpn_peer_resumed", "gauge",
     "1 when the last handshake resumed a session (ticket), 0 for a full handshake.",
     "resumed"),
    ("dtlsvpn_peer_heartbeat_rtt_seconds", "gauge",
     "Round-trip time of the last answered heartbeat.", "heartbeat_rtt_ms"),
    ("dtlsvpn_peer_pmtu_bytes", "gauge",
     "Path MTU found by DPLPMTUD (outer IP packet size).", "plpmtu"),
    ("dtlsvpn_peer_inner_mtu_bytes", "gauge",
     "Largest inner packet one record carries at that path MTU.", "inner_mtu"),
)
_IFACE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("dtlsvpn_interface_mtu_bytes", "gauge", "MTU of the tunnel interface.", "mtu"),
    ("dtlsvpn_mss_clamped_total", "counter",
     "TCP SYNs whose MSS option was lowered to fit the tunnel.", "mss_clamped"),
    ("dtlsvpn_fragmented_total", "counter",
     "Inner IPv4 packets without DF fragmented to fit the path.", "fragmented"),
    ("dtlsvpn_icmp_too_big_sent_total", "counter",
     "ICMP fragmentation-needed / Packet Too Big errors written to the TUN device.",
     "icmp_too_big_sent"),
    ("dtlsvpn_untrusted_closes_total", "counter",
     "Associations and TLS links ended by a reload of the trust (the peer's certificate no "
     "longer validated).", "untrusted_closes"),
)


def _label(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _labels(**labels: object) -> str:
    return "{" + ",".join(f"{k}={_label(v)}" for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


Sample = Callable[[str, str, str, str, float], None]


def _peer_value(peer: dict[str, Any], key: str) -> Any:
    if not key:
        return peer.get("state") == "established"
    value = peer.get(key)
    if value is None or (key == "resumed" and not peer.get("last_handshake")):
        return None
    if key == "heartbeat_rtt_ms":
        return round(value / 1000.0, 7)
    return value


def _peer_samples(sample: Sample, instance: str, peer: dict[str, Any]) -> None:
    labels = _labels(instance=instance, peer=peer.get("name", ""))
    sample("dtlsvpn_peer_info", "gauge",
           "Peer endpoint, transport and cipher suite (always 1).",
           _labels(instance=instance, peer=peer.get("name", ""),
                   endpoint=peer.get("endpoint") or "",
                   transport=peer.get("transport") or "",
                   suite=peer.get("suite") or ""), 1)
    for name, kind, help_text, key in _PEER_METRICS:
        value = _peer_value(peer, key)
        if value is not None:
            sample(name, kind, help_text, labels, value)
    for reason, n in sorted(peer.get("drops", {}).items()):
        sample("dtlsvpn_peer_drops_total", "counter",
               "Packets or records dropped on the peer's path, by reason.",
               _labels(instance=instance, peer=peer.get("name", ""), reason=reason), n)


def _lane_samples(sample: Sample, instance: str, lane: dict[str, int]) -> None:
    """The compiled lane's counters (``daemon/lane.py``), when it is on."""
    for event, n in sorted(lane.items()):
        if event != "flows":
            sample("dtlsvpn_compiled_lane_events_total", "counter",
                   "What the compiled lane did: packets it sent (tx_packets) and received "
                   "(rx_packets) in C, packets it left to Python (handed_back), sends that "
                   "failed, polls, flow armings.", _labels(instance=instance, event=event), n)
    sample("dtlsvpn_compiled_lane_flows", "gauge",
           "Peers the compiled lane serves now (absent when the lane is off).",
           _labels(instance=instance), lane["flows"])


def format_prometheus(snaps: list[dict[str, Any]]) -> str:
    """Prometheus text exposition (format 0.0.4) of one or more daemons' snapshots."""
    families: dict[str, tuple[str, str, list[str]]] = {}

    def sample(name: str, kind: str, help_text: str, labels: str, value: float) -> None:
        family = families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{labels} {_number(value)}")

    for snap in snaps:
        iface = snap.get("interface", {})
        instance = iface.get("name", "")
        for name, kind, help_text, key in _IFACE_METRICS:
            if isinstance(iface.get(key), int):
                sample(name, kind, help_text, _labels(instance=instance), iface[key])
        for reason, n in sorted(iface.get("drops", {}).items()):
            sample("dtlsvpn_interface_drops_total", "counter",
                   "Packets dropped by the interface with no peer to charge, by reason.",
                   _labels(instance=instance, reason=reason), n)
        for reason, n in sorted(iface.get("handshake_failures", {}).items()):
            sample("dtlsvpn_handshake_failures_total", "counter",
                   "Handshakes refused (server) or failed (client), by reason.",
                   _labels(instance=instance, reason=reason), n)
        for reason, n in sorted(iface.get("tcp_closes", {}).items()):
            sample("dtlsvpn_tcp_closes_total", "counter",
                   "Established TLS/TCP links closed, by cause (record_limit, key_age, "
                   "dead_peer, peer_closed, ...).", _labels(instance=instance, reason=reason), n)
        for event, n in sorted((iface.get("endpoint") or {}).items()):
            sample("dtlsvpn_endpoint_events_total", "counter",
                   "Server endpoint events before any association (cookies, admission "
                   "limits, table full, unknown CIDs), by event.",
                   _labels(instance=instance, event=event), n)
        if iface.get("compiled_lane"):
            _lane_samples(sample, instance, iface["compiled_lane"])
        for peer in snap.get("peers", []):
            _peer_samples(sample, instance, peer)
    out: list[str] = []
    for name, (kind, help_text, lines) in families.items():
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out += lines
    return "\n".join(out) + "\n" if out else ""


class StatusServer:
    """Serves snapshots on ``path`` from inside the daemon loop."""

    def __init__(self, path: Path, snapshot: Snapshot, loop: Loop) -> None:
        self.path = path
        self.snapshot = snapshot
        self.loop = loop
        self._conns: dict[int, tuple[socket.socket, bytearray, bytearray]] = {}
        self._timers: dict[int, Timer] = {}
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
        self.sock = sock
        loop.add(sock.fileno(), self._on_accept)

    def _on_accept(self, _mask: int, _now: float, _wall: float) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            self._conns[fd] = (conn, bytearray(), bytearray())
            self.loop.add(fd, self._conn_handler(fd))
            timer = self._timers[fd] = self.loop.timer(self._expiry(fd))
            timer.schedule(self.loop.now + CONN_TIMEOUT)

    def _expiry(self, fd: int) -> Callable[[float, float], None]:
        def expire(_now: float, _wall: float) -> None:
            self._drop(fd)

        return expire

    def _conn_handler(self, fd: int) -> Callable[[int, float, float], None]:
        def handler(_mask: int, _now: float, _wall: float) -> None:
            self._on_conn(fd)

        return handler

    def _on_conn(self, fd: int) -> None:
        entry = self._conns.get(fd)
        if entry is None:
            return
        conn, inbuf, outbuf = entry
        if outbuf:
            self._flush(fd, conn, outbuf)
            return
        try:
            data = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if inbuf:
                self._answer(fd, conn, bytes(inbuf), outbuf)
            else:
                self._drop(fd)
            return
        inbuf += data
        if b"\n" in inbuf or len(inbuf) >= MAX_REQUEST:
            self._answer(fd, conn, bytes(inbuf), outbuf)

    def _answer(self, fd: int, conn: socket.socket, request: bytes, outbuf: bytearray) -> None:
        words = request.split(b"\n", 1)[0].decode(errors="replace").split()
        if words[:1] != ["get"]:
            reply = "error=unknown request (expected 'get' or 'get json')\n"
        else:
            snap = self.snapshot()
            reply = (json.dumps(snap, indent=2, sort_keys=False) + "\n"
                     if words[1:2] == ["json"] else format_text(snap))
        outbuf += reply.encode()
        self._flush(fd, conn, outbuf)

    def _flush(self, fd: int, conn: socket.socket, outbuf: bytearray) -> None:
        try:
            sent = conn.send(outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(fd)
            return
        del outbuf[:sent]
        if outbuf:
            self.loop.modify(fd, EPOLLOUT)
        else:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        entry = self._conns.pop(fd, None)
        timer = self._timers.pop(fd, None)
        if timer is not None:
            timer.cancel()
        self.loop.remove(fd)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        for fd in list(self._conns):
            self._drop(fd)
        self.loop.remove(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def query(path: Path, *, as_json: bool = False, timeout: float = 5.0) -> str:
    """Ask a running daemon for its status (used by ``dtlsvpn status``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b"get json\n" if as_json else b"get\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode()

