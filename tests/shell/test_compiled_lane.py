"""The compiled lane (``dtlsvpn/daemon/_lane.c``) against the Python lanes, packet for packet.

Each test runs one script of packets twice, on two fresh pairs of real daemons in this
process (``tests/fakes/loopback.py``: real clock, real UDP on 127.0.0.1, a socketpair
TUN that C reads and writes): once with ``CompiledLane = yes`` and once with ``no``.
What the hosts receive, every record's place in its epoch, the peers' counters and
drop reasons, and the replay windows must be the same; the lane's own counters prove
that C, not Python, carried the lone packets of the first run.  Every record C sealed
is also rebuilt with ``FastSeal`` at its sequence number and must be the same bytes.

The scripts cover what C must hand back untouched for Python to count or change: a
replay, a forgery (the genuine record behind it still accepted), a heartbeat between
data records, a source outside the peer's AllowedIPs, a multicast and a non-IP
packet, a TCP SYN to clamp (each way: which end clamped is compared step by step), a
GRO super-buffer, the peer's own underlay address inside its prefixes, packets over
the peer's limit (ICMP "too big" with DF, fragments without), and the record budget
of an epoch reached (the renewal then re-arms the lane), a NAT rebinding (the
server's flow follows the connection ID to the new source); and two records swapped on
the way (the replay window's older half).  A send that fails in C is charged as the
Python lane charges it.  AES-128-GCM and ChaCha20-Poly1305, with and without a
connection ID; a TUN with virtio-net headers (``TUNOffload = auto``) and one without.

Each check here was seen to fail against a deliberately broken ``_lane.c`` (no replay
check, a byte count not written back, the window's older bit not set, no SYN hand-back,
no underlay, limit, multicast or source check, a wrong virtio-net header, a wrong
AAD).  One break is not seen: accepting a tls12_cid record whose inner type is not
data, because such a record (a heartbeat) is never an IP packet and is handed back by
the next check.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dtlsvpn.cli.status import summary
from dtlsvpn.daemon import tcpclient
from dtlsvpn.daemon.status import format_prometheus
from dtlsvpn.daemon.udp import UDP_SEGMENT
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.epoch import REKEY_RECORDS, WriteEpoch
from dtlsvpn.dtls.fastpath import FastSeal
from dtlsvpn.vpn.gro import coalesce
from dtlsvpn.vpn.vnet import F_NEEDS_CSUM, GSO_TCPV4, header
from tests.fakes.loopback import LOCAL, LoopbackWorld, Node, Tap, free_port
from tests.fakes.packets import ACK, PSH, SYN, needs_csum, seq_of, tcp, udp
from tests.netns.harness import psk_pair
from tests.shell.conftest import needs_lane
from tests.support.conf import Value

pytestmark = needs_lane

GCM = "TLS_PSK_WITH_AES_128_GCM_SHA256"
CHACHA = "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256"
CT_APP, CT_CID = 23, 25
# what differs between two runs whatever the lane did: the process, the files, the ports;
# and whether the TUN was offered TSO on read (CompiledLane: it goes with the compiled
# parts), compared apart (``offloaded_reads``)
VOLATILE = frozenset({"pid", "uptime", "config", "listen", "compiled_lane", "tun_tso",
                      "tun_tso_reads"})
MSS_1460 = b"\x02\x04\x05\xb4"  # the option a SYN carries


def start(worlds: list[LoopbackWorld], workdir: Path, *, compiled: bool,
          client_allows: str = "", transport: str = "udp", **interface: Value
          ) -> tuple[LoopbackWorld, Node, Node]:
    """A server and a client (``CompiledLane`` as asked) with the tap between them,
    established, their path MTU searches over (``client_allows``: one more prefix the
    client routes into the tunnel)."""
    workdir.mkdir()
    port = free_port()
    server_conf, client_conf = psk_pair(workdir, server_ip=LOCAL, port=port,
                                        compiled_lane=compiled, transport=transport,
                                        heartbeat_interval=60,
                                        dead_peer_timeout=180, **interface)
    world = LoopbackWorld()
    worlds.append(world)
    tap = world.tap = Tap((LOCAL, port))
    text = client_conf.read_text()
    text = text.replace(f"{LOCAL}:{port}", f"{LOCAL}:{tap.addr[1]}")
    if client_allows:
        text = text.replace("AllowedIPs = 100.64.0.0/24", f"AllowedIPs = {client_allows}, "
                            "100.64.0.0/24")
        assert client_allows in text
    client_conf.write_text(text)
    server = world.start(server_conf)
    client = world.start(client_conf)

    def ready() -> bool:
        return all(p["state"] == "established" and p["plpmtu"] is not None
                   and not p["rekeying"] for node in (server, client)
                   for p in node.snapshot()["peers"])

    assert world.run_until(ready, within=10.0), (server.snapshot(), client.snapshot())
    world.settle(0.2)  # the search's last probes and acknowledgements
    return world, server, client


def records(wire: list[tuple[str, bytes]]) -> list[tuple[str, int, int, int]]:
    """(direction, content type, epoch, sequence number) of each record on the wire."""
    return [(d, data[0], int.from_bytes(data[3:5], "big"), int.from_bytes(data[5:11], "big"))
            for d, data in wire]


class Script:
    """Runs the packets of one test on one pair and keeps what a comparison needs."""

    def __init__(self, world: LoopbackWorld, server: Node, client: Node) -> None:
        self.world, self.server, self.client = world, server, client
        assert world.tap is not None
        self.tap: Tap = world.tap
        self.start = len(self.tap.wire)
        self.got: dict[str, list[bytes]] = {"server": [], "client": []}
        self.sealed: list[tuple[Node, bytes, bytes]] = []  # (sender, packet, record)
        # after each send, what each side clamped and dropped: which end did it matters
        # (either end clamps a SYN, so totals alone would hide a lane that skips it)
        self.steps: list[tuple[Any, ...]] = []

    def _drain(self) -> None:
        self.got["server"] += self.server.tun.drain()
        self.got["client"] += self.client.tun.drain()

    def send(self, sender: Node, packets: list[bytes], *, arrives: int | None = None,
             frames: list[bytes] | None = None) -> None:
        """Inject ``packets`` at ``sender``'s host and wait until ``arrives`` of them
        (default all) reached the other host, then a little longer.  ``frames``: what the
        host's TCP hands the TUN instead (``FakeTun.inject_offloaded``), ``packets``
        being the finished segments they carry."""
        other = "server" if sender is self.client else "client"
        want = len(self.got[other]) + (len(packets) if arrives is None else arrives)
        before = len(self.tap.wire)
        if frames is None:
            sender.tun.inject(packets)
        else:
            sender.tun.inject_offloaded(frames)

        def done() -> bool:
            self._drain()
            return len(self.got[other]) >= want

        assert self.world.run_until(done, within=3.0), (packets, self.got[other][-3:])
        self.world.settle(0.02)
        self._drain()
        self.steps.append(tuple((n.snapshot()["interface"]["mss_clamped"], n.peer()["drops"])
                                for n in (self.client, self.server)))
        if len(packets) == 1 and self.got[other][-1:] == packets:  # (not clamped on the way)
            direction = "up" if sender is self.client else "down"
            new = [data for d, data in self.tap.wire[before:] if d == direction]
            if len(new) == 1 and new[0][0] in (CT_APP, CT_CID):
                self.sealed.append((sender, packets[0], new[0]))

    def wire(self) -> list[tuple[str, int, int, int]]:
        """The scripted records, their sequence numbers counted from the first one's
        in each direction and epoch (a handshake's own records vary in number)."""
        out = records(self.tap.wire[self.start:])
        base: dict[tuple[str, int], int] = {}
        for d, _, epoch, seq in out:
            base.setdefault((d, epoch), seq)
        return [(d, t, e, s - base[(d, e)]) for d, t, e, s in out if t in (CT_APP, CT_CID)]

    def outcome(self) -> dict[str, Any]:
        self._drain()
        out: dict[str, Any] = {"received": dict(self.got), "wire": self.wire(),
                               "steps": self.steps}
        for name, node in (("server", self.server), ("client", self.client)):
            peer = node.peer()
            out[name] = {k: peer[k] for k in ("rx_packets", "rx_bytes", "tx_packets",
                                               "tx_bytes", "drops", "state", "dtls")}
            out[name + "_window"] = window_bits(node)
            iface = node.snapshot()["interface"]
            out[name + "_interface"] = {k: v for k, v in iface.items() if k not in VOLATILE}
            out[name + "_tso_reads"] = iface["tun_tso_reads"]
            out[name + "_tso"] = iface["tun_tso"]
        return out


def window_bits(node: Node) -> int:
    """The replay window's bitmap (which of the last 128 numbers were accepted)."""
    assoc = current(node)
    fast = assoc.fast_open
    assert fast is not None
    bits: int = fast.window.bits
    return bits


def current(node: Node) -> Any:
    dp = node.datapath
    if dp.client_peer is not None:
        conn = dp.client_peer.conn
        assert conn is not None
        return conn.current
    (peer,) = dp.peers.by_addr.values()
    return peer.assoc


def lane_counts(node: Node) -> dict[str, int] | None:
    got: dict[str, int] | None = node.snapshot()["interface"]["compiled_lane"]
    return got


def check_seals(script: Script) -> int:
    """Every lone record on the wire equals ``FastSeal`` at its number; how many."""
    n = 0
    for sender, packet, record in script.sealed:
        assoc = current(sender)
        seal = assoc.fast_seal
        epoch = int.from_bytes(record[3:5], "big")
        if seal is None or seal.epoch != epoch:
            continue  # sealed in an epoch since renewed: checked when it was current
        seq = int.from_bytes(record[5:11], "big")
        again = FastSeal(WriteEpoch(seal.state.protection, seq), epoch, seal.cid, seal.ctype)
        assert again.seal_one(packet) == record, (seq, len(packet))
        n += 1
    return n


def lone_both_ways(script: Script, count: int) -> None:
    for i in range(count):
        size = 28 + (i * 157) % 1370
        script.send(script.client, [udp("100.64.0.2", "100.64.0.1", seq=100 + i, size=size)])
        script.send(script.server, [udp("fd00::1", "fd00::2", seq=200 + i, size=size)])


def hand_backs(script: Script) -> None:
    """Each packet C must leave to Python, between lone packets it carries."""
    client, server, tap = script.client, script.server, script.tap
    # a replay of the last record up: dropped by the server's Python lane, counted
    last_up = next(data for d, data in reversed(tap.wire) if d == "up")
    tap.send("up", last_up)
    script.world.settle(0.05)
    # a forgery in front of the genuine record: the forgery dropped, the record accepted
    tap.tamper = lambda d, data: [data[:-1] + bytes((data[-1] ^ 1,)), data] if d == "up" \
        else [data]
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=300, size=400)])
    tap.tamper = None
    # two records swapped on the way: the later one moves the window, the earlier one
    # is still inside it and accepted after
    held: list[bytes] = []

    def swap(direction: str, data: bytes) -> list[bytes]:
        if direction != "up":
            return [data]
        if not held:
            held.append(data)
            return []
        return [data, held.pop()]

    tap.tamper = swap
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=310, size=90)], arrives=0)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=311, size=90)], arrives=2)
    tap.tamper = None
    # a heartbeat request and its response between data records (with a CID the
    # request is a tls12_cid record too: its inner type is not data)
    assert client.conn.probe_liveness(client.loop.now)
    service = client.datapath.service
    assert service is not None
    service(client.loop.now, client.loop.wall)
    script.world.settle(0.05)
    # a source outside the client's AllowedIPs on the server: sealed, then refused
    script.send(client, [udp("100.64.0.77", "100.64.0.1", seq=301)], arrives=0)
    # multicast and not IP at all: the client's router counts them, nothing is sent
    script.send(client, [udp("100.64.0.2", "224.0.0.251", seq=302)], arrives=0)
    script.send(client, [bytes(40)], arrives=0)
    # a TCP SYN (its MSS clamped in Python) both ways
    script.send(client, [tcp("100.64.0.2", "100.64.0.1", 7, b"", flags=SYN, options=MSS_1460)])
    script.send(server, [tcp("100.64.0.1", "100.64.0.2", 9, b"", flags=SYN, options=MSS_1460)])
    lone_both_ways(script, 2)


def gro_burst(script: Script) -> None:
    """Three records to the client in one GRO buffer (the tap sends them with
    UDP_SEGMENT): C hands the buffer back and the port splits it."""
    packets = [udp("100.64.0.1", "100.64.0.2", seq=400 + i, size=600) for i in range(3)]
    held_burst(script, script.server, lambda: script.server.tun.inject(packets), 3)


def offloaded_reads(script: Script) -> None:
    """What a TUN offered TSO on read hands over (with the lane; without it, the fake
    kernel segments and checksums them first, as a real one does): a lone NEEDS_CSUM
    segment, which C completes and seals, and a super-packet of five segments, which C
    cuts and hands back (or the Python read does).  The other host must get the same
    finished segments either way, both ways.  The five records are held at the tap and
    released as one GRO buffer, so that the receiver's batching (its TUN writes) does
    not depend on how the two loops happened to be scheduled."""
    for sender, src, dst in ((script.client, "100.64.0.2", "100.64.0.1"),
                             (script.server, "100.64.0.1", "100.64.0.2")):
        lone = tcp(src, dst, 500, b"keystroke", flags=ACK | PSH)
        script.send(sender, [lone], frames=[needs_csum(lone)])
        run = [tcp(src, dst, 1000 + 900 * i, bytes([i]) * 900, ident=7 + i,
                   flags=ACK | (PSH if i == 4 else 0)) for i in range(5)]
        frames = coalesce(run)
        assert len(frames) == 1 and frames[0][1] == GSO_TCPV4
        held_burst(script, sender, partial(sender.tun.inject_offloaded, frames), len(run))


def held_burst(script: Script, sender: Node, inject: Callable[[], None], n: int) -> None:
    """``inject`` at ``sender``'s host; its ``n`` records are held at the tap and sent on
    as one GRO buffer (UDP_SEGMENT): C hands the buffer back and the port splits it."""
    tap = script.tap
    direction = "up" if sender is script.client else "down"
    held: list[bytes] = []

    def hold(d: str, data: bytes) -> list[bytes]:
        if d == direction:
            held.append(data)
            return []
        return [data]

    tap.tamper = hold
    inject()
    assert script.world.run_until(lambda: len(held) == n, within=3.0), held
    tap.tamper = None
    assert len({len(h) for h in held[:-1]}) == 1 and len(held[-1]) <= len(held[0])
    size = len(held[0]).to_bytes(2, "little")  # (a u16 in host order)
    cmsg = [(socket.IPPROTO_UDP, UDP_SEGMENT, size)]
    if direction == "up":
        tap.up.sendmsg([b"".join(held)], cmsg, 0, tap.server)
    else:
        assert tap.client is not None
        tap.sock.sendmsg([b"".join(held)], cmsg, 0, tap.client)
    script.send(sender, [], arrives=n)


def run_script(script: Script, *, gro: bool = True) -> dict[str, Any]:
    lone_both_ways(script, 6)
    offloaded_reads(script)
    hand_backs(script)
    if gro:
        gro_burst(script)
    lone_both_ways(script, 2)
    return script.outcome()


def compare(worlds: list[LoopbackWorld], tmp_path: Path, script_of: Any = None,
            client_allows: str = "", least: int = 8,
            hands_back: tuple[str, ...] = ("server", "client"), **interface: Value
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The script (``run_script`` unless ``script_of``) on a pair with the lane and on
    one without; both outcomes."""
    outcomes = []
    for compiled in (True, False):
        world, server, client = start(worlds, tmp_path / f"lane-{compiled}",
                                      compiled=compiled, client_allows=client_allows,
                                      **interface)
        script = Script(world, server, client)
        outcome = (script_of or run_script)(script)
        outcome["seals_checked"] = check_seals(script)
        outcome["lane"] = {"server": lane_counts(server), "client": lane_counts(client)}
        snap = client.snapshot()
        line = next(x for x in summary(snap).splitlines() if x.startswith("  compiled lane:"))
        outcome["status"] = (line.split()[2].rstrip(","), "".join(
            x for x in format_prometheus([snap]).splitlines() if "compiled_lane" in x))
        outcomes.append(outcome)
        world.close()
    on, off = outcomes
    assert off["lane"] == {"server": None, "client": None}
    for side in ("server", "client"):
        counts = on["lane"][side]
        assert counts is not None, side
        assert counts["tx_packets"] >= least and counts["rx_packets"] >= least, (side, counts)
        assert counts["handed_back"] >= (side in hands_back), (side, counts)
    return on, off


def same(on: dict[str, Any], off: dict[str, Any]) -> None:
    for key in sorted(set(on) | set(off)):
        if key not in ("lane", "status", "server_tso_reads", "client_tso_reads", "server_tso",
                       "client_tso"):
            assert on[key] == off[key], key
    # TSO on read goes with the compiled parts: never offered in the run without them
    assert off["server_tso_reads"] == off["client_tso_reads"] == 0
    assert off["server_tso"] == off["client_tso"] == "off"


@pytest.mark.parametrize("cipher", [GCM, CHACHA])
@pytest.mark.parametrize("cid", [True, False], ids=["cid", "no-cid"])
def test_the_lane_matches_the_python_lanes(worlds: list[LoopbackWorld], tmp_path: Path,
                                           cipher: str, cid: bool) -> None:
    on, off = compare(worlds, tmp_path, ciphers=cipher, connection_id=cid)
    same(on, off)
    assert on["seals_checked"] >= 16
    # each side read offloaded_reads' super-packet whole and cut it (C or Python)
    assert on["server_tso_reads"] == on["client_tso_reads"] == 1
    assert on["server_tso"] == on["client_tso"] == "on"
    assert on["status"][0] == "on" and off["status"] == ("off", "")
    assert 'dtlsvpn_compiled_lane_events_total{instance="client",event="tx_packets"}' in (
        on["status"][1])
    # the server's CID on the way up; the client asks for none (a server does not roam)
    assert {t for d, t, _, _ in on["wire"] if d == "up"} == {CT_CID if cid else CT_APP}
    assert {t for d, t, _, _ in on["wire"] if d == "down"} == {CT_APP}
    drops = on["server"]["drops"]
    assert drops.get("replay", 0) >= 1 and drops.get("spoofed_source", 0) == 1, drops
    assert seq_of(on["received"]["server"][0]) == 100


def test_the_lane_on_a_tun_without_virtio_net_headers(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    """``TUNOffload = off`` (the other tests run with ``auto``, which the fake TUN grants:
    frames with a virtio-net header)."""
    on, off = compare(worlds, tmp_path, ciphers=GCM, tun_offload="off")
    same(on, off)
    for world in worlds:
        assert all(not node.tun.vnet and not node.tun.tso for node in world.nodes)
    assert on["server_tso_reads"] == on["client_tso_reads"] == 0


def budget_run(worlds: list[LoopbackWorld], workdir: Path, compiled: bool
               ) -> tuple[dict[str, list[int]], dict[str, int] | None, dict[str, int] | None]:
    """Lone packets across the client's record budget and its renewal: what each host
    received (sequence numbers) and the two lanes' counters."""
    world, server, client = start(worlds, workdir, compiled=compiled, ciphers=GCM)
    script = Script(world, server, client)
    lone_both_ways(script, 3)
    assoc = current(client)
    seal = assoc.fast_seal
    assert seal is not None
    budget = REKEY_RECORDS[seal.state.protection.suite.aead]
    # the old keys' grace after the switch, shortened: a flow is armed only when no
    # renewal overlaps it (lane.py)
    client.conn.grace = 0.3
    endpoint = server.datapath.endpoint
    assert endpoint is not None
    endpoint.rekey_grace = 0.3
    seal.state.next_seq = budget - 3  # (between two polls: C reads it at the next)
    for i in range(6):
        script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=500 + i, size=200)])

    def renewed() -> bool:
        return client.peer()["rekeys"] >= 1 and not any(
            p["rekeying"] for n in (server, client) for p in n.snapshot()["peers"])

    assert world.run_until(renewed, within=10.0), client.peer()
    assert current(client) is not assoc
    lone_both_ways(script, 3)
    got = {k: [seq_of(p) for p in v] for k, v in script.got.items()}
    out = got, lane_counts(client), lane_counts(server)
    world.close()
    return out


def test_the_record_budget_hands_back_and_the_renewal_rearms(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    """Three records short of the AEAD's budget: C seals up to it and hands the rest
    back (and the server's C opens up to it); Python seals on, the client renews at
    once, and the lane arms the new keys."""
    on, lane_client, lane_server = budget_run(worlds, tmp_path / "on", True)
    off, _, _ = budget_run(worlds, tmp_path / "off", False)
    assert on == off
    assert on["server"][3:9] == list(range(500, 506))
    assert lane_client is not None and lane_server is not None
    assert lane_client["armings"] >= 2 and lane_server["armings"] >= 2, (lane_client,
                                                                          lane_server)
    assert lane_client["handed_back"] >= 1, lane_client  # (the renewal then disarms it)


def test_a_send_that_fails_in_c_is_charged_as_in_python(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    """The tap's port closed: ICMP port unreachable queues ECONNREFUSED on the client's
    connected socket; the next lone packet C seals fails to send and is charged as
    ``Datapath.send_failed`` charges it (the record's number is spent, as in Python)."""
    world, server, client = start(worlds, tmp_path / "refused", compiled=True,
                                  ciphers=GCM)
    script = Script(world, server, client)
    lone_both_ways(script, 2)
    assert world.tap is not None
    world.tap.close()
    seal = current(client).fast_seal
    assert seal is not None
    for attempt in range(20):
        # one packet out to the closed port (its ICMP error queues on the socket), then
        # one more before the client's loop looks at the error
        client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=600 + attempt)])
        client.loop.run_once(max_wait=0)
        time.sleep(0.01)
        client.tun.inject([udp("100.64.0.2", "100.64.0.1", seq=700 + attempt)])
        before = seal.state.next_seq
        client.loop.run_once(max_wait=0)
        counts = lane_counts(client)
        assert counts is not None
        if counts["send_failures"]:
            break
    else:
        raise AssertionError(f"no send failed in C: {lane_counts(client)}")
    peer = client.peer()
    assert counts["send_failures"] == 1
    assert peer["drops"].get("send_error") == 1, peer["drops"]
    assert seal.state.next_seq == before + 1
    raw = client.datapath.client_peer
    assert raw is not None and raw.last_error == "Connection refused"


def underlay_script(script: Script) -> dict[str, Any]:
    """The client routes 127.0.0.0/8 into the tunnel, and the server's own address
    (the tap's, here) is inside it: a packet to it would loop the tunnel's datagrams
    back into the tunnel, so the router drops it (``recursive``) and C must leave it.
    Then packets over the peer's limit, which C must leave to Python as well."""
    client = script.client
    lone_both_ways(script, 3)
    script.send(client, [udp("100.64.0.2", "127.0.0.1", seq=800)], arrives=0)
    script.send(client, [udp("100.64.0.2", "127.0.0.2", seq=801)], arrives=0)
    # the path shrank below the TUN's MTU (as a PMTU drop sets it): a packet over the
    # peer's limit is Python's, with DF an ICMP "too big" back, without it fragmented
    peer = client.datapath.client_peer
    assert peer is not None
    peer.limit = 1000  # (between two polls: the lane re-arms with it)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=802, size=1200)], arrives=0)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=803, size=1200, df=False)],
                arrives=2)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=804, size=900)])
    peer.limit = 0
    lone_both_ways(script, 3)
    return script.outcome()


def test_the_underlay_address_and_the_peers_limit_are_left_to_python(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    on, off = compare(worlds, tmp_path, underlay_script, client_allows="127.0.0.0/8",
                      least=4, hands_back=("client",), ciphers=CHACHA)
    same(on, off)
    assert on["client_interface"]["drops"].get("recursive") == 1, on["client_interface"]
    assert on["client_interface"]["icmp_too_big_sent"] == 1
    assert on["client_interface"]["fragmented"] == 1


def rebinding_script(script: Script) -> dict[str, Any]:
    """The client's packets start to arrive from a new source port (a NAT rebinding):
    the server's armed flow no longer matches the source, C hands the datagrams back,
    Python follows the connection ID to the new address (RFC 9146), and the flow is
    armed again for it."""
    lone_both_ways(script, 3)
    script.tap.rebind()
    script.send(script.client, [udp("100.64.0.2", "100.64.0.1", seq=900, size=300)])
    script.world.settle(0.1)
    lone_both_ways(script, 4)
    out = script.outcome()
    out["moved"] = script.server.peer()["endpoint"] == f"{LOCAL}:{script.tap.up.getsockname()[1]}"
    return out


def test_a_nat_rebinding_disarms_and_rearms_the_servers_flow(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    on, off = compare(worlds, tmp_path, rebinding_script, least=5, hands_back=("server",),
                      ciphers=GCM, connection_id=True)
    same(on, off)
    assert on["moved"]
    assert on["lane"]["server"]["armings"] >= 2, on["lane"]


def wake_script(script: Script) -> dict[str, Any]:
    """The peer's ``on_send`` hook set (as the TCP fallback's checker sets it when it
    goes to sleep after an idle spell): the next packet calls it once, and the hook
    sees the peer's counters from before that packet, in C as in Python.  The hook
    here also sends a heartbeat at once (the checker's UDP probe may): the data record
    after it must take the next sequence number, in C as in Python, never the same."""
    client = script.client
    lone_both_ways(script, 2)
    peer = client.datapath.client_peer
    assert peer is not None
    seen: list[tuple[int, int, int]] = []

    def hook(now: float) -> None:
        peer.on_send = None
        assert abs(now - time.monotonic()) < 1.0, now
        assoc = current(client)
        seen.append((peer.tx_packets, peer.tx_bytes, assoc.stats.tx_records))
        assert client.conn.probe_liveness(now)
        service = client.datapath.service
        assert service is not None
        service(now, client.loop.wall)

    peer.on_send = hook  # (between two polls: the lane arms the flow with it)
    client.loop.run_once(max_wait=0)
    before = lane_counts(client)
    # a datagram for the client waiting on its socket when packet 950 is read, so that
    # one poll opens it in C before the hook runs (written back first, not lost)
    def downs() -> int:
        return sum(d == "down" for d, _ in script.tap.wire)

    down = downs()
    script.server.tun.inject([udp("100.64.0.1", "100.64.0.2", seq=949, size=300)])
    limit = time.monotonic() + 3.0
    while downs() == down:  # (the server alone: the client must not read it yet)
        assert time.monotonic() < limit, "the server sent nothing"
        script.server.loop.run_once(max_wait=0)
        script.tap.pump()
    time.sleep(0.005)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=950, size=500)])
    after = lane_counts(client)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=951, size=500)])
    lone_both_ways(script, 2)
    out = script.outcome()
    out["hook"] = seen
    # (not handed_back: the heartbeat's response is a datagram C leaves to Python)
    out["in_c"] = None if before is None or after is None else {
        k: after[k] - before[k] for k in ("tx_packets", "armings")}
    return out


def test_the_on_send_hook_is_called_from_c_as_from_python(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    on, off = compare(worlds, tmp_path, wake_script, least=4, hands_back=(),
                      ciphers=GCM)
    # packet 950 sealed in C; the flow (armed with the hook) armed again without it
    assert on.pop("in_c") == {"tx_packets": 1, "armings": 1}
    assert off.pop("in_c") is None
    same(on, off)
    assert len(on["hook"]) == 1, on["hook"]


def changing_hook_script(script: Script) -> dict[str, Any]:
    """The hook itself changes what the flow was armed from: here the peer's limit
    falls below the packet that woke it (as a PMTU drop found by the association's
    service inside the hook would set it).  C must not seal that packet with the state
    it armed from: the packet goes back to Python, which sends ICMP "too big" (DF), as
    it does when it calls the hook itself."""
    client = script.client
    lone_both_ways(script, 2)
    peer = client.datapath.client_peer
    assert peer is not None
    calls: list[float] = []

    def hook(now: float) -> None:
        peer.on_send = None
        calls.append(now)
        peer.limit = 1000

    peer.on_send = hook
    client.loop.run_once(max_wait=0)  # (the lane arms the flow with the hook)
    before = lane_counts(client)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=970, size=1200)], arrives=0)
    after = lane_counts(client)
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=971, size=900)])
    peer.limit = 0
    lone_both_ways(script, 2)
    out = script.outcome()
    out["hook_calls"] = len(calls)
    out["in_c"] = None if before is None or after is None else {
        k: after[k] - before[k] for k in ("tx_packets", "handed_back")}
    return out


def test_a_hook_that_changes_the_flow_hands_its_packet_back(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    on, off = compare(worlds, tmp_path, changing_hook_script, least=4,
                      hands_back=("client",), ciphers=GCM)
    assert on.pop("in_c") == {"tx_packets": 0, "handed_back": 1}
    assert off.pop("in_c") is None
    same(on, off)
    assert on["hook_calls"] == off["hook_calls"] == 1
    assert on["client_interface"]["icmp_too_big_sent"] == 1, on["client_interface"]


def test_the_tcp_checkers_first_send_after_a_silence_stays_in_c(
        worlds: list[LoopbackWorld], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """``Transport = auto``: after IDLE_AFTER without a send the client's TCP fallback
    checker sleeps and waits for the next send (``Peer.on_send``).  That send, the
    first after a silence, is sealed in C, wakes the checker (its next look within
    CHECK_EVERY) and leaves the flow armed."""
    monkeypatch.setattr(tcpclient, "IDLE_AFTER", 0.3)
    world, server, client = start(worlds, tmp_path / "auto", compiled=True,
                                  transport="auto", ciphers=GCM)
    script = Script(world, server, client)
    lone_both_ways(script, 2)
    peer = client.datapath.client_peer
    assert peer is not None
    assert world.run_until(lambda: peer.on_send is not None, within=5.0)
    world.settle(0.05)  # (the next poll arms the flow with the hook)
    checker = peer.on_send.__self__  # type: ignore[attr-defined]
    assert isinstance(checker, tcpclient.ClientTcp)
    assert checker._check.when is not None
    assert checker._check.when > client.loop.now + 10 * tcpclient.CHECK_EVERY
    before = lane_counts(client)
    assert before is not None and before["flows"] == 1, before
    script.send(client, [udp("100.64.0.2", "100.64.0.1", seq=960, size=300)])
    after = lane_counts(client)
    assert after is not None
    assert peer.on_send is None
    assert checker._check.when <= client.loop.now + tcpclient.CHECK_EVERY
    assert after["tx_packets"] == before["tx_packets"] + 1, (before, after)
    assert after["handed_back"] == before["handed_back"], (before, after)
    assert after["flows"] == 1 and after["armings"] == before["armings"] + 1, after  # (no hook)
    assert seq_of(script.got["server"][-1]) == 960


def test_a_read_that_cannot_be_cut_stops_tso_with_the_lane(
        worlds: list[LoopbackWorld], tmp_path: Path) -> None:
    """A super-packet ``segment`` cannot cut (here a TSO header on a packet too short to
    be TCP), read by C or by Python: dropped and counted; the Tun then stops TSO, so the
    fake kernel finishes what it hands over next, and traffic goes on through the lane."""
    world, server, client = start(worlds, tmp_path / "cut", compiled=True)
    script = Script(world, server, client)
    lone_both_ways(script, 2)
    assert client.tun.tso and client.tun.tso_offered
    bad = header(F_NEEDS_CSUM, GSO_TCPV4, 52, 1000, 20, 16) + bytes(30)
    client.tun.far.send(bad)
    assert world.run_until(lambda: client.tun.offloads == [0], within=3.0), (
        client.snapshot()["interface"]["tun_tso_malformed"])
    assert client.snapshot()["interface"]["tun_tso_malformed"] == 1
    run = [tcp("100.64.0.2", "100.64.0.1", 1000 + 900 * i, bytes([i]) * 900, ident=i)
           for i in range(3)]
    script.send(client, run, frames=coalesce(run))  # finished by the fake kernel now
    assert script.got["server"][-3:] == run
    lone_both_ways(script, 2)
    assert client.snapshot()["interface"]["tun_tso_reads"] == 0


def test_a_255_byte_connection_id_both_ways_through_c(
        worlds: list[LoopbackWorld], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9146 lets a peer ask for a CID of up to 255 bytes, and what we send carries
    the one it asked for; the additional data then holds all 255 bytes (C's buffer for it
    was 64 bytes until 2026-12-04, so a peer asking for more than 41 overran it).  Our
    client asks for 255 here: the server seals with that CID in C, the client opens with
    it in C, and lone packets pass both ways."""
    monkeypatch.setattr(DtlsConfig, "own_cid_length",
                        property(lambda self: 255 if self.is_client else 8))
    world, server, client = start(worlds, tmp_path / "cid255", compiled=True,
                                  connection_id=True)
    script = Script(world, server, client)
    lone_both_ways(script, 4)
    down = [data for d, data in script.tap.wire if d == "down" and data[0] == CT_CID]
    assert down and all(data[11:11 + 255] == current(client).fast_open.cid for data in down)
    for node in (server, client):
        counts = lane_counts(node)
        assert counts is not None and counts["tx_packets"] >= 3 and counts["rx_packets"] >= 3, (
            counts)
