"""A laptop's life around the tunnel, with real daemons: an offline start, and a suspend.

- Offline start: the client's only link has no address yet.  READY=1 comes anyway (the
  interface is configured and the client dialling: ``systemctl start`` returns), STATUS=
  says it is not connected; the address appears and the kernel's notification makes the
  client dial at once, not after its back-off.
- Suspend: the client is stopped (SIGSTOP) longer than the server's DeadPeerTimeout, so
  the server has given it up, then continued (SIGCONT): the tunnel is back.

Both figures come from packet timestamps: a UDP stream from the server's side through
the tunnel (one datagram every 5 ms with its send time), received in the client's
namespace; the time from the event to the first datagram that arrived.  Printed,
never asserted.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tests.netns.harness import REPO, RunDaemon, Topology, ip, psk_pair, start_pair
from tests.netns.roamtools import summary
from tests.util import Proc, ProcessGroup, wait_until

ENV = {"PYTHONPATH": str(REPO)}
SUSPEND = 12.0  # seconds: longer than the default DeadPeerTimeout (8 s)


def _roam_tool(procs: ProcessGroup, ns: str, *args: str, name: str) -> Proc:
    return procs.start(["ip", "netns", "exec", ns, sys.executable, "-m",
                        "tests.netns.roamtools", *args], name=name, timeout=60, env=ENV,
                       stdin_pipe=False)


def _stream_to_client(procs: ProcessGroup, server_ns: str, client_ns: str,
                      seconds: float) -> tuple[Proc, Proc]:
    sink = _roam_tool(procs, client_ns, "sink", "100.64.0.2", "6001", "--seconds",
                      str(seconds + 5), name="sink")
    assert sink.wait_for("listening", 15), sink.describe()
    stream = _roam_tool(procs, server_ns, "stream", "100.64.0.2", "6001", "--seconds",
                        str(seconds), name="stream")
    return sink, stream


def test_offline_start_is_ready_and_connects_when_the_network_comes(
        topo: Topology, run_daemon: RunDaemon, procs: ProcessGroup, tmp_path: Path) -> None:
    server_ns, client_ns = topo.netns("s"), topo.netns("c")
    _, c_dev = topo.veth(server_ns, ["198.18.0.1/24"], client_ns, [])
    server_conf, client_conf = psk_pair(tmp_path)
    server = run_daemon(server_ns, server_conf, server_conf.with_suffix(".sock"))
    server.wait_ready()
    started = time.monotonic()
    client = run_daemon(client_ns, client_conf, client_conf.with_suffix(".sock"))
    client.wait_ready(timeout=20)
    ready_after = time.monotonic() - started
    assert wait_until(lambda: any("not connected" in m for m in client.messages), 10)
    assert not client.wait_connected(timeout=3.0)  # no network: dialling, backing off
    assert client.status()["peers"][0]["state"] != "established"

    sink, stream = _stream_to_client(procs, server_ns, client_ns, 6.0)
    time.sleep(0.5)
    appeared = time.time()
    ip("-n", client_ns, "addr", "add", "198.18.0.2/24", "dev", c_dev)
    assert client.wait_connected(timeout=10), client.proc.describe()
    assert stream.wait(20) == 0 and sink.wait(20) == 0, sink.describe()
    s = summary(sink.stdout(), appeared)
    assert s.received > 0
    print(f"\noffline start: READY=1 {ready_after * 1000:.0f} ms after the start with no "
          f"network; the address appeared, first datagram through the tunnel "
          f"{(s.back_after or 0) * 1000:.0f} ms later")
    assert client.stop() == 0 and server.stop() == 0


def test_suspend_and_resume(topo: Topology, run_daemon: RunDaemon, procs: ProcessGroup,
                            tmp_path: Path) -> None:
    server_ns, client_ns = topo.netns("s"), topo.netns("c")
    topo.veth(server_ns, ["198.18.0.1/24"], client_ns, ["198.18.0.2/24"])
    server_conf, client_conf = psk_pair(tmp_path)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    assert client.pid is not None
    os.kill(client.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: server.status()["peers"][0]["state"] != "established",
                          SUSPEND)
        time.sleep(max(0.0, SUSPEND - 8.0))
        sink, stream = _stream_to_client(procs, server_ns, client_ns, 8.0)
        time.sleep(0.3)
    finally:
        seen = len(client.messages)
        resumed = time.time()
        os.kill(client.pid, signal.SIGCONT)
    assert client.wait_connected(timeout=15, after=seen)
    assert stream.wait(20) == 0 and sink.wait(20) == 0, sink.describe()
    s = summary(sink.stdout(), resumed)
    assert s.received > 0, client.proc.describe()
    peer = client.status()["peers"][0]
    print(f"\nsuspend {SUSPEND:.0f} s (the server gave the client up): first datagram "
          f"through the tunnel {(s.back_after or 0) * 1000:.0f} ms after SIGCONT; "
          f"handshakes {peer['handshakes']}, resumed {peer['resumed']}")
    assert peer["state"] == "established"
    assert client.stop() == 0 and server.stop() == 0


def test_reload_adds_and_removes_an_address(topo: Topology, run_daemon: RunDaemon,
                                            tmp_path: Path) -> None:
    """SIGHUP with another Address list: the interface follows, the session stays."""
    server_ns, client_ns = topo.netns("s"), topo.netns("c")
    topo.veth(server_ns, ["198.18.0.1/24"], client_ns, ["198.18.0.2/24"])
    server_conf, client_conf = psk_pair(tmp_path)
    server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
    text = client_conf.read_text()
    assert "Address = 100.64.0.2/24, fd00::2/64" in text
    client_conf.write_text(text.replace("Address = 100.64.0.2/24, fd00::2/64",
                                        "Address = 100.64.0.2/24, 100.64.0.12/24"))
    assert client.pid is not None
    seen = len(client.messages)
    os.kill(client.pid, signal.SIGHUP)
    assert wait_until(lambda: "READY=1" in client.messages[seen:], 10)

    def addresses() -> str:
        return ip("-n", client_ns, "-o", "addr", "show", "dev", "dvc0").stdout

    assert wait_until(lambda: "100.64.0.12/24" in addresses() and "fd00::2" not in addresses(),
                      5), addresses()
    assert client.status()["peers"][0]["handshakes"] == 1
    assert client.stop() == 0 and server.stop() == 0


def test_a_name_with_both_families_moves_when_one_goes_away(
        topo: Topology, run_daemon: RunDaemon, procs: ProcessGroup, tmp_path: Path) -> None:
    """``office.test`` has AAAA 2001:db8::1 and A 198.18.0.1 (the client namespace's
    /etc/hosts, as ``ip netns exec`` mounts /etc/netns/NS/hosts); the server listens on
    both ([::]).  The client takes IPv6 first; its IPv6 address goes away: it looks the
    name up again and carries on over IPv4."""
    server_ns, client_ns = topo.netns("s"), topo.netns("c")
    _, c_dev = topo.veth(server_ns, ["198.18.0.1/24", "2001:db8::1/64"],
                         client_ns, ["198.18.0.2/24", "2001:db8::2/64"])
    top = Path("/etc/netns")
    made_top = not top.exists()
    etc = top / client_ns
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text("127.0.0.1 localhost\n2001:db8::1 office.test\n"
                                   "198.18.0.1 office.test\n")
        server_conf, client_conf = psk_pair(tmp_path, server_ip="::")
        client_conf.write_text(client_conf.read_text().replace("Endpoint = [::]:4433",
                                                               "Endpoint = office.test:4433"))
        server, client = start_pair(run_daemon, server_ns, client_ns, server_conf, client_conf)
        assert client.status()["peers"][0]["endpoint"].startswith("[2001:db8::1]")
        sink, stream = _stream_to_client(procs, server_ns, client_ns, 6.0)
        time.sleep(0.5)
        gone = time.time()
        ip("-n", client_ns, "addr", "del", "2001:db8::2/64", "dev", c_dev)
        assert wait_until(lambda: client.status()["peers"][0]["endpoint"].startswith("198.18"),
                          15), client.proc.describe()
        assert stream.wait(20) == 0 and sink.wait(20) == 0, sink.describe()
        s = summary(sink.stdout(), gone)
        peer = client.status()["peers"][0]
        print(f"\nA and AAAA, IPv6 gone: now {peer['endpoint']}; first datagram through the "
              f"tunnel {(s.back_after or 0) * 1000:.0f} ms after the address went; longest "
              f"gap {s.gap * 1000:.0f} ms; handshakes {peer['handshakes']}, resumed "
              f"{peer['resumed']}")
        assert peer["state"] == "established"
        assert client.stop() == 0 and server.stop() == 0
    finally:
        for f in etc.iterdir():
            f.unlink()
        etc.rmdir()
        if made_top:
            top.rmdir()
