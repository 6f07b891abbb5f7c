"""Conversation scripts shared by the interop tests.

Each script drives one association between our tool and a peer process and
returns what the tests assert on. Readiness is always a line the process
prints (OpenSSL's `ACCEPT host:port`, gnutls-serv's `listening on IPv4`, our
`listening on host:port` and `handshake:` lines), never a fixed sleep; the
only waits are `Proc.wait_for` polls with deadlines.

Application data is checked in both directions with lines made by
`peers.unique`, so a line can only be seen if the other side decrypted it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.interop.peers import GNUTLS_PORT, HANDSHAKE_RE, OUR_ENV, STATS_RE, unique
from tests.util import PrivateNetns, Proc, ProcessGroup, wait_until

Starter = Callable[..., Proc]  # ProcessGroup.start or PrivateNetns.start

READY_TIMEOUT = 10.0
STEP_TIMEOUT = 10.0
PROC_TIMEOUT = 40.0  # outer `timeout` for every process of one conversation


def expect(proc: Proc, needle: str, stream: str = "stdout",
           timeout: float = STEP_TIMEOUT) -> None:
    """Assert that `proc` prints `needle` on `stream` (stdout, stderr, any) in time."""
    assert proc.wait_for(needle, timeout, stream), (
        f"{proc.name} did not print {needle!r} on {stream} within {timeout:g} s\n"
        f"{proc.describe()}"
    )


def expect_re(proc: Proc, pattern: re.Pattern[str], stream: str = "stdout") -> re.Match[str]:
    text = proc.stdout() if stream == "stdout" else proc.stderr()
    if stream == "any":
        text = proc.stdout() + proc.stderr()
    match = pattern.search(text)
    assert match, f"{proc.name}: no match for {pattern.pattern!r} on {stream}\n{proc.describe()}"
    return match


def announced_port(proc: Proc, prefix: str, stream: str) -> int:
    """The port in a `<prefix>HOST:PORT` readiness line (OpenSSL's ACCEPT, our listening)."""
    expect(proc, prefix, stream, READY_TIMEOUT)
    text = proc.stdout() if stream == "stdout" else proc.stderr()
    match = re.search(re.escape(prefix) + r"\S*:(\d+)\s*$", text, re.M)
    assert match, f"{proc.name}: cannot read the port\n{proc.describe()}"
    return int(match.group(1))


def assert_fits_mtu(mtu: int | None, largest: int) -> None:
    """With --mtu N, none of our datagrams (handshake or data) may exceed N bytes."""
    if mtu is not None:
        assert largest <= mtu, f"we sent a {largest}-byte datagram with --mtu {mtu}"


def count(proc: Proc, needle: str, stream: str = "stdout") -> int:
    """How many times `needle` occurs in a log so far."""
    text = {"stdout": proc.stdout, "stderr": proc.stderr}[stream]() if stream != "any" else (
        proc.stdout() + proc.stderr())
    return text.count(needle)


def expect_count(proc: Proc, needle: str, n: int, stream: str = "stdout",
                 timeout: float = STEP_TIMEOUT) -> None:
    """Assert that `needle` occurs at least `n` times on `stream` within `timeout`."""
    ok = wait_until(lambda: count(proc, needle, stream) >= n or proc.returncode is not None,
                    timeout) and count(proc, needle, stream) >= n
    assert ok, (f"{proc.name} printed {needle!r} {count(proc, needle, stream)} times on {stream}, "
                f"not {n}, within {timeout:g} s\n{proc.describe()}")


def all_matches(proc: Proc, pattern: re.Pattern[str], stream: str = "stderr"
                ) -> list[re.Match[str]]:
    """Every match of `pattern` in a log (e.g. one handshake line per association)."""
    text = proc.stdout() if stream == "stdout" else proc.stderr()
    return list(pattern.finditer(text))


def wait_exit(proc: Proc, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@dataclass(frozen=True)
class Outcome:
    """What our side reported about one association."""

    suite: str
    ems: str
    resumed: str
    max_datagram: int
    datagrams_sent: int
    stderr: str
    heartbeat: str | None = None  # "yes" | "no": the peer accepts our HeartbeatRequests


def _our_outcome(proc: Proc) -> Outcome:
    hs = expect_re(proc, HANDSHAKE_RE, "stderr")
    stats = expect_re(proc, STATS_RE, "stderr")
    return Outcome(hs["suite"], hs["ems"], hs["resumed"], int(stats.group(2)),
                   int(stats.group(1)), proc.stderr(), hs["heartbeat"])


def our_client_session(start: Starter, client_argv: Sequence[str], server: Proc, *,
                       server_echoes: bool, name: str = "ours-client") -> Outcome:
    """Our client against a running peer server; data both ways; clean close; exit 0."""
    return _our_outcome(our_client_exchange(start, client_argv, server,
                                            server_echoes=server_echoes, name=name))


def our_client_exchange(start: Starter, client_argv: Sequence[str], server: Proc, *,
                        server_echoes: bool, name: str = "ours-client") -> Proc:
    """The conversation of :func:`our_client_session` (DTLS or TLS), returning our client.

    `server_echoes` (gnutls-serv --echo): the server's line is the echo of ours, and the
    server's log must show it processed our line. Otherwise (s_server) the server prints
    our line and we feed it its own unique line on stdin.
    """
    to_peer, from_peer = unique("ours-to-peer"), unique("peer-to-ours")
    client = start(list(client_argv), name=name, env=OUR_ENV, timeout=PROC_TIMEOUT)
    client.send(to_peer + "\n")
    expect(client, "handshake: ", "stderr")
    expect(server, to_peer, "any" if server_echoes else "stdout")
    if server_echoes:
        expect(client, to_peer, "stdout")
    else:
        server.send(from_peer + "\n")
        expect(client, from_peer, "stdout")
    client.close_stdin()
    rc = wait_exit(client, STEP_TIMEOUT)
    assert rc == 0, f"our client exited with {rc}\n{client.describe()}\n{server.describe()}"
    return client


def start_gnutls_server(netns: PrivateNetns, argv: list[str]) -> Proc:
    """gnutls-serv in `netns`, ready once the kernel shows its socket bound."""
    server = netns.start(argv, name="gnutls-serv")
    assert wait_until(lambda: netns.udp_port_bound(GNUTLS_PORT) or server.returncode is not None,
                      READY_TIMEOUT) and server.returncode is None, server.describe()
    return server


def start_our_server(procs: ProcessGroup, argv: Sequence[str]) -> tuple[Proc, int]:
    server = procs.start(list(argv), name="ours-server", env=OUR_ENV, timeout=PROC_TIMEOUT)
    return server, announced_port(server, "listening on ", "stderr")


def their_client_session(procs: ProcessGroup, server: Proc, client_argv: Sequence[str]
                         ) -> tuple[Outcome, Proc]:
    """A peer client against our running `server --once`; data both ways; our server exits."""
    client = their_client_exchange(procs, server, client_argv)
    return _our_outcome(server), client


def their_client_exchange(procs: ProcessGroup, server: Proc, client_argv: Sequence[str], *,
                          grace: float = 3.0, name: str = "peer-client") -> Proc:
    """The conversation of :func:`their_client_session` (DTLS or TLS), returning the client.

    The peer client ends with close_notify at stdin EOF; gnutls-cli with --mtu may hang
    instead (peers.md), so after a grace period our server is stopped with SIGTERM, which
    closes its association cleanly (and prints its stats) before it exits 0.
    """
    to_ours, from_ours = unique("peer-to-ours"), unique("ours-to-peer")
    client = procs.start(list(client_argv), name=name, timeout=PROC_TIMEOUT)
    client.send(to_ours + "\n")
    expect(server, "handshake: ", "stderr")
    expect(server, to_ours, "stdout")
    server.send(from_ours + "\n")
    expect(client, from_ours, "stdout")
    client.close_stdin()
    rc = wait_exit(server, grace)
    if rc is None:
        rc = procs.stop(server)
    assert rc == 0, f"our server exited with {rc}\n{server.describe()}\n{client.describe()}"
    return client
