"""systemd/dtlsvpn@.service under a real systemd (booted by tests/systemd/boot.py).

One instance is booted for the module; `make install` runs inside it (its mount namespace,
the host's network for pip), so the unit, the console script and the virtualenv under test
are the ones a user gets.  The tests run in file order and share the instance:

    instance's own netns                                 netns "cl" (ip netns, inside)
    dtlsvpn@server  dvs0 100.64.0.1/24 fd00::1/64        dtlsvpn@client  dvc0 100.64.0.2/24
    listens 198.18.0.1:4433 ─── veth dva ══ dvb ───────  198.18.0.2       fd00::2/64

Both daemons are units of the same systemd; the client's unit joins "cl" through a drop-in
with NetworkNamespacePath= (the shipped unit plus one line of topology), so a ping from
"cl" to 100.64.0.1 really crosses the tunnel.  A second drop-in shortens WatchdogSec= and
RestartSec= so the watchdog test takes seconds.  Everything else is the shipped, hardened
unit; test_hardening_in_effect checks that the hardening really applies to the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.conf import TunnelConf, peer_section
from tests.systemd.boot import SYSTEMD, BootError, Instance
from tests.util import udp_port_bound

REPO = Path(__file__).resolve().parents[2]
SERVER = "dtlsvpn@server.service"
CLIENT = "dtlsvpn@client.service"
CLIENT_NS = "cl"
PORT = 4433
PING = [sys.executable, "-m", "tests.netns.tools", "ping"]
TOOLS_ENV = {"PYTHONPATH": str(REPO)}

SERVER_CONF = TunnelConf(
    comment="dtlsvpn@server under the test systemd", role="server",
    listen_address=f"198.18.0.1:{PORT}", device="dvs0", address=("100.64.0.1/24", "fd00::1/64"),
    heartbeat_interval=1, dead_peer_timeout=4,
).peer(name="branch", psk_identity="branch", psk_file="branch.psk",
       allowed_ips=("100.64.0.2/32", "fd00::2/128")).render()

CLIENT_CONF = TunnelConf(
    comment=f"dtlsvpn@client under the test systemd (in netns {CLIENT_NS})", role="client",
    device="dvc0", address=("100.64.0.2/24", "fd00::2/64"), heartbeat_interval=1,
    dead_peer_timeout=4,
).peer(name="office", endpoint=f"198.18.0.1:{PORT}", psk_identity="branch",
       psk_file="branch.psk", allowed_ips=("100.64.0.0/24", "fd00::/64")).render()

# Added to server.conf by the reload test: a peer that changes nothing for "branch".
EXTRA_PEER = "\n" + peer_section(name="roamer", psk_identity="roamer", psk_file="roamer.psk",
                                 allowed_ips="100.64.0.3/32")

NETNS_DROPIN = f"""[Service]
NetworkNamespacePath=/run/netns/{CLIENT_NS}
"""

TIMING_DROPIN = """[Service]
WatchdogSec=3s
RestartSec=1s
"""

BAD_UNIT_KEY = "NoSuchHardeningKey=yes"

# CAP_NET_ADMIN (12) and CAP_NET_BIND_SERVICE (10).
CAPS = (1 << 12) | (1 << 10)


def _files() -> dict[str, tuple[str, int]]:
    return {
        "/etc/dtlsvpn/server.conf": (SERVER_CONF, 0o600),
        "/etc/dtlsvpn/client.conf": (CLIENT_CONF, 0o600),
        "/etc/dtlsvpn/branch.psk": (secrets.token_hex(32) + "\n", 0o600),
        "/etc/dtlsvpn/roamer.psk": (secrets.token_hex(32) + "\n", 0o600),
        f"/run/systemd/system/{CLIENT}.d/10-netns.conf": (NETNS_DROPIN, 0o644),
        "/run/systemd/system/dtlsvpn@.service.d/10-test-timing.conf": (TIMING_DROPIN, 0o644),
    }


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, TUN): run `sudo make test`")
    missing = [t for t in ("unshare", "nsenter", "timeout", "ip", "make", "systemd-analyze")
               if shutil.which(t) is None]
    if missing or not Path(SYSTEMD).exists():
        pytest.skip(f"missing programs: {', '.join(missing) or SYSTEMD} "
                    "(`apt-get install systemd iproute2 util-linux coreutils make`)")
    instance = Instance(tmp_path_factory.mktemp("systemd"), lifetime=170, files=_files())
    try:
        instance.boot()
        # pip needs the host's network and environment (index, proxy, cache); not the
        # variables of an outer `make test`, which would reach this make as well.
        res = instance.run(["env", "-u", "MAKEFLAGS", "-u", "MFLAGS", "-u", "MAKELEVEL",
                            "make", "-C", str(REPO), "install"], host_net=True, timeout=240)
        assert res.returncode == 0, f"make install failed\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        # The underlay: a veth pair from the instance's namespace to "cl".
        instance.sh(
            f"ip netns add {CLIENT_NS} && ip -n {CLIENT_NS} link set lo up && "
            f"ip link add dva type veth peer name dvb netns {CLIENT_NS} && "
            "ip addr add 198.18.0.1/24 dev dva && ip link set dva up && "
            f"ip -n {CLIENT_NS} addr add 198.18.0.2/24 dev dvb && "
            f"ip -n {CLIENT_NS} link set dvb up",
            check=True,
        )
        yield instance
    except BootError as exc:
        pytest.fail(str(exc))
    finally:
        instance.poweroff()


# --- helpers --------------------------------------------------------------------------


def status(inst: Instance, name: str) -> dict:
    res = inst.run(["dtlsvpn", "status", name, "--json"], timeout=15)
    assert res.returncode == 0, f"dtlsvpn status {name}: {res.stderr}"
    (snap,) = json.loads(res.stdout)["tunnels"]  # version 1: one shape in every mode
    return snap


def status_or_none(inst: Instance, name: str) -> dict | None:
    res = inst.run(["dtlsvpn", "status", name, "--json"], timeout=15)
    return json.loads(res.stdout)["tunnels"][0] if res.returncode == 0 else None


def peer(snap: dict, name: str) -> dict:
    return next(p for p in snap["peers"] if p["name"] == name)


def main_pid(inst: Instance, unit: str) -> int:
    return int(inst.show(unit, "MainPID")["MainPID"])


def ping(inst: Instance, addr: str, count: int = 3, netns: str | None = CLIENT_NS) -> str:
    res = inst.run([*PING, addr, "--count", str(count)], netns=netns, env=TOOLS_ENV, timeout=30)
    assert res.returncode == 0, f"ping {addr}: {res.stdout}{res.stderr}\n{inst.journal()}"
    return res.stdout


def ensure_up(inst: Instance) -> None:
    """Both units active (a blocking start returns after READY=1)."""
    for unit in (SERVER, CLIENT):
        if inst.active_state(unit) != "active":
            res = inst.systemctl("start", unit, check=False)
            assert res.returncode == 0, f"start {unit}: {res.stderr}\n{inst.journal(unit)}"


# --- tests --------------------------------------------------------------------------------


def test_unit_verifies(inst: Instance) -> None:
    installed = inst.path("/etc/systemd/system/dtlsvpn@.service").read_text()
    assert installed == (REPO / "systemd/dtlsvpn@.service").read_text()
    res = inst.run(["systemd-analyze", "verify", "--recursive-errors=yes",
                    "/etc/systemd/system/dtlsvpn@.service"])
    assert res.returncode == 0, res.stdout + res.stderr
    # ... and verify does catch a broken unit (an unknown key) in this set-up.
    bad = installed.replace("[Service]\n", f"[Service]\n{BAD_UNIT_KEY}\n", 1)
    inst.path("/tmp/bad").mkdir()
    inst.path("/tmp/bad/dtlsvpn@.service").write_text(bad)
    res = inst.run(["systemd-analyze", "verify", "--recursive-errors=yes",
                    "/tmp/bad/dtlsvpn@.service"])
    assert res.returncode != 0 and "NoSuchHardeningKey" in res.stderr, res.stderr


def test_client_active_while_dialling_server_after_listening(inst: Instance) -> None:
    # Offline start: the client starts first, with no server to answer.  A blocking
    # start returns (READY=1: configured and dialling), StatusText says "not connected".
    res = inst.systemctl("start", CLIENT, check=False)
    assert res.returncode == 0, f"start {CLIENT}: {res.stderr}\n{inst.journal(CLIENT)}"
    assert inst.active_state(CLIENT) == "active"
    snap = status_or_none(inst, "client") or {}
    assert snap and peer(snap, "office")["state"] != "established"
    assert "not connected" in inst.show(CLIENT, "StatusText")["StatusText"]

    # A blocking start of the server returns once it sent READY=1: it listens by then.
    inst.systemctl("start", SERVER)
    assert udp_port_bound(PORT, inst.pid or 0), inst.journal(SERVER)
    assert inst.active_state(SERVER) == "active"
    assert status(inst, "server")["interface"]["listen"] == f"198.18.0.1:{PORT}"
    # READY's STATUS= says "listening on …"; the waiting client may connect (its redial)
    # before this query, and the server's status line then counts it instead.
    text = inst.show(SERVER, "StatusText")["StatusText"]
    assert text.startswith("listening on") or "/1 peers up, mtu " in text, text

    # The client connects (its next redial) and says so.
    inst.wait(lambda: "; connected to office" in inst.show(CLIENT, "StatusText")["StatusText"],
              45, "client connected", CLIENT, SERVER)
    office = peer(status(inst, "client"), "office")
    assert office["state"] == "established"
    assert office["handshakes"] >= 1


def test_tunnel_passes_traffic(inst: Instance) -> None:
    ensure_up(inst)
    assert "5 received" in ping(inst, "100.64.0.1", count=5)
    assert "3 received" in ping(inst, "fd00::1", count=3)
    assert "3 received" in ping(inst, "100.64.0.2", count=3, netns=None)
    branch = peer(status(inst, "server"), "branch")
    assert branch["state"] == "established"
    assert branch["rx_packets"] >= 8 and branch["tx_packets"] >= 8
    # The tunnel addresses are where the units put them: dvc0 lives in "cl".
    res = inst.run(["ip", "-n", CLIENT_NS, "-o", "addr", "show", "dev", "dvc0"], check=True)
    assert "100.64.0.2/24" in res.stdout and "fd00::2/64" in res.stdout


def test_reload_keeps_unchanged_associations(inst: Instance) -> None:
    ensure_up(inst)
    before_server = peer(status(inst, "server"), "branch")
    before_client = peer(status(inst, "client"), "office")
    assert before_server["state"] == "established"

    # A ping keeps running across both reloads (each echo waits up to 1 s for its reply).
    out = inst.workdir / "reload-ping.out"
    argv = inst.command([*PING, "100.64.0.1", "--count", "100000", "--timeout", "1"],
                        netns=CLIENT_NS, env=TOOLS_ENV, timeout=90)
    with out.open("w") as f:
        pinger = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        def replies() -> int:
            return out.read_text().count("reply from")

        inst.wait(lambda: replies() >= 20, 20, "ping running before the reload")
        conf = inst.path("/etc/dtlsvpn/server.conf")
        conf.write_text(conf.read_text() + EXTRA_PEER)
        inst.systemctl("reload", SERVER)
        inst.systemctl("reload", CLIENT)  # config unchanged: nothing to redo
        inst.wait(lambda: len((status_or_none(inst, "server") or {"peers": []})["peers"]) == 2,
                  20, "server reloaded with the new peer", SERVER)
        inst.wait(lambda: inst.active_state(SERVER) == "active", 20, "server active again")
        after_reload = replies()
        inst.wait(lambda: replies() >= after_reload + 20, 20, "ping running after the reload")
    finally:
        if pinger.poll() is None:
            os.kill(pinger.pid, signal.SIGTERM)  # the `timeout` wrapper we started
        pinger.wait(10)
    text = out.read_text()
    assert "timed out" not in text and "send failed" not in text, text[-2000:]

    after_server = status(inst, "server")
    branch = peer(after_server, "branch")
    office = peer(status(inst, "client"), "office")
    assert branch["handshakes"] == before_server["handshakes"]
    assert branch["last_handshake"] == before_server["last_handshake"]
    assert office["handshakes"] == before_client["handshakes"]
    assert office["last_handshake"] == before_client["last_handshake"]
    assert peer(after_server, "roamer")["state"] == "down"


def _nofile(inst: Instance, pid: str) -> tuple[int, int]:
    """A process's soft and hard RLIMIT_NOFILE, from /proc/PID/limits."""
    limits = inst.run(["cat", f"/proc/{pid}/limits"], check=True).stdout
    m = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
    assert m is not None, limits
    return int(m.group(1)), int(m.group(2))


def test_hardening_in_effect(inst: Instance) -> None:
    ensure_up(inst)
    for unit in (SERVER, CLIENT):
        pid = main_pid(inst, unit)
        proc = dict(
            line.split(":\t", 1)
            for line in inst.run(["cat", f"/proc/{pid}/status"], check=True).stdout.splitlines()
            if ":\t" in line
        )
        assert int(proc["CapBnd"], 16) == CAPS, proc["CapBnd"]
        assert int(proc["CapEff"], 16) == CAPS, proc["CapEff"]
        assert proc["NoNewPrivs"].strip() == "1"
        # LimitNOFILE=65536, or as near as the instance's own hard limit lets systemd go
        # (the services' default soft limit is 1024).
        soft, _ = _nofile(inst, str(pid))
        _, ceiling = _nofile(inst, "1")
        assert soft == min(65536, ceiling), (soft, ceiling)
        assert proc["Seccomp"].strip() == "2"
        # ProtectHome=yes: the host's /root (visible in this instance) is empty to it.
        assert inst.run(["ls", "-A", f"/proc/{pid}/root/root"], check=True).stdout == ""
    res = inst.run(["systemd-analyze", "security", "--no-pager", SERVER], check=True)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", res.stdout)
    assert level is not None, res.stdout[-1000:]
    assert float(level.group(1)) < 3.0, res.stdout


def test_watchdog_kills_hung_loop_and_restarts(inst: Instance) -> None:
    ensure_up(inst)
    props = inst.show(CLIENT, "WatchdogUSec", "NRestarts")
    assert props["WatchdogUSec"] == "3s"
    restarts = int(props["NRestarts"])
    old = main_pid(inst, CLIENT)
    inst.run(["kill", "-STOP", str(old)], check=True)  # the loop hangs: no more WATCHDOG=1

    def restarted() -> bool:
        p = inst.show(CLIENT, "NRestarts", "MainPID", "ActiveState")
        return (int(p["NRestarts"]) == restarts + 1 and p["MainPID"] not in ("0", str(old))
                and p["ActiveState"] == "active")

    inst.wait(restarted, 40, "client killed by the watchdog and active again", CLIENT)
    journal = inst.journal(CLIENT)
    assert "Watchdog timeout" in journal, journal
    assert "Failed with result 'watchdog'" in journal, journal
    assert inst.run(["cat", f"/proc/{old}/status"]).returncode != 0  # the old one is gone
    # The new process resumed with the ticket the old one stored in StateDirectory=.
    assert peer(status(inst, "client"), "office")["resumed"] is True
    tickets = [p for p in inst.path("/var/lib/dtlsvpn/client").iterdir() if p.is_file()]
    assert tickets and all(p.stat().st_mode & 0o077 == 0 for p in tickets), tickets
    assert "3 received" in ping(inst, "100.64.0.1", count=3)


def test_stop_leaves_nothing_behind(inst: Instance) -> None:
    ensure_up(inst)
    inst.systemctl("stop", CLIENT)
    assert inst.active_state(CLIENT) == "inactive"
    assert inst.run(["ip", "-n", CLIENT_NS, "link", "show", "dvc0"]).returncode != 0
    for family in ("-4", "-6"):
        routes = inst.run(["ip", "-n", CLIENT_NS, family, "route", "show", "table", "all"],
                          check=True).stdout
        assert "dvc0" not in routes and "100.64." not in routes and "fd00:" not in routes, routes
    udp = inst.run(["cat", "/proc/net/udp", "/proc/net/udp6"], netns=CLIENT_NS, check=True)
    assert len(udp.stdout.strip().splitlines()) == 2, udp.stdout  # the two header lines
    assert not inst.path("/run/dtlsvpn/client.sock").exists()
    # RuntimeDirectoryPreserve=yes: the other instance's socket is still there and answers.
    assert status(inst, "server")["interface"]["name"] == "server"

    inst.systemctl("stop", SERVER)
    props = inst.show(SERVER, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert inst.run(["ip", "link", "show", "dvs0"]).returncode != 0
    for family in ("-4", "-6"):
        routes = inst.run(["ip", family, "route", "show", "table", "all"], check=True).stdout
        assert "dvs0" not in routes and "100.64." not in routes and "fd00:" not in routes, routes
    assert not udp_port_bound(PORT, inst.pid or 0)
    assert list(inst.path("/run/dtlsvpn").iterdir()) == []


def test_make_uninstall(inst: Instance) -> None:
    with contextlib.suppress(AssertionError):
        inst.systemctl("stop", SERVER, CLIENT)
    res = inst.run(["make", "-C", str(REPO), "uninstall"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    for gone in ("/etc/systemd/system/dtlsvpn@.service", "/usr/local/bin/dtlsvpn",
                 "/opt/dtlsvpn", "/usr/share/doc/dtlsvpn"):
        assert not os.path.lexists(inst.path(gone)), gone
    assert inst.path("/etc/dtlsvpn/server.conf").exists()  # configuration is kept
    res = inst.systemctl("cat", "dtlsvpn@x.service", check=False)
    assert res.returncode != 0
