"""The status snapshot: what ``dtlsvpn status`` shows, built from the peer table and the
data path's counters.

The field names and their order are part of the interface (the status socket's JSON,
the ``key=value`` text, the Prometheus metrics of ``status.py``, and the tests that read
them); add fields at the end of a section, never rename one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dtlsvpn.config import Config
from dtlsvpn.daemon.datapath import Datapath
from dtlsvpn.daemon.fleet import fleet_status
from dtlsvpn.daemon.peers import Peer
from dtlsvpn.daemon.role import display
from dtlsvpn.dtls.endpoint import ServerEndpoint

# Stats counters of the DTLS core that count dropped records (the rest count traffic).
DTLS_DROP_REASONS = frozenset({
    "malformed", "bad_mac", "bad_cid", "replay", "unknown_epoch", "early_data", "unexpected",
    "buffer_full", "stale_handshake", "after_close", "heartbeat_dropped",
    "heartbeat_malformed", "heartbeat_unexpected"})


def _ago(wall: float, then: float | None) -> float | None:
    return round(wall - then, 1) if then else None


def _drops(peer: Peer, dp: Datapath | None) -> dict[str, int]:
    drops: dict[str, int] = dict(peer.drops)
    if dp is not None:
        rs = dp.router.peer_stats.get(peer)
        if rs is not None:
            drops.update({k: v for k, v in rs.as_dict().items() if v})
    if peer.assoc is not None:  # record-layer drops of the current association
        drops.update({k: v for k, v in peer.assoc.stats.as_dict().items()
                      if v and k in DTLS_DROP_REASONS})
    return drops


def _state(peer: Peer) -> str:
    assoc = peer.assoc
    if peer.established or (peer.stream is not None and peer.stream.ready):  # (TCP fallback)
        return "established"
    return "connecting" if assoc is not None and not assoc.is_closed else "down"


def peer_status(peer: Peer, dp: Datapath | None, wall: float, rekeying: bool) -> dict[str, Any]:
    assoc = peer.assoc
    endpoint = display(peer.addr)
    if endpoint is None and peer.config.endpoint is not None:
        endpoint = display(peer.config.endpoint)
    if endpoint is None and peer.stream is not None:  # a server's peer over TCP only
        endpoint = peer.stream.name
    return {
        "name": peer.name,
        "endpoint": endpoint,
        "state": _state(peer),
        "transport": peer.transport,  # udp | tcp (daemon/transport.py)
        "transport_since": peer.transport_wall,
        "suite": peer.suite,
        "last_handshake": peer.handshake_wall,
        "last_handshake_ago": _ago(wall, peer.handshake_wall),
        "resumed": peer.resumed,
        "handshakes": peer.handshakes,
        "roams": peer.roams,  # (roam: the client's moves to a new local address)
        "rekey_generation": peer.generation,
        "rekeys": peer.rekeys,
        "last_rekey": peer.rekey_wall,
        "last_rekey_ago": _ago(wall, peer.rekey_wall),
        "rekeying": rekeying,
        "heartbeat_rtt_ms": round(peer.rtt * 1000, 2) if peer.rtt is not None else None,
        "plpmtu": peer.plpmtu,
        "record_overhead": assoc.record_overhead if assoc is not None else None,
        "inner_mtu": peer.inner_mtu,
        "mtu_limit": peer.limit or None,
        "allowed_ips": [str(n) for n in peer.config.allowed_prefixes],
        "rx_bytes": peer.rx_bytes,
        "rx_packets": peer.rx_packets,
        "tx_bytes": peer.tx_bytes,
        "tx_packets": peer.tx_packets,
        "retransmissions": assoc.stats.retransmissions if assoc else 0,
        "last_error": peer.last_error,
        "drops": _drops(peer, dp),
        "dtls": ({k: v for k, v in assoc.stats.as_dict().items() if v}
                 if assoc is not None else {}),
    }


def _counters(dp: Datapath | None) -> tuple[dict[str, Any], dict[str, int]]:
    counters: dict[str, Any] = {}
    drops = dict(dp.drops) if dp is not None else {}
    if dp is not None:
        drops.update({k: v for k, v in dp.router.stats.as_dict().items() if v})
        counters["mss_clamp"] = {"ipv4": dp.mss4, "ipv6": dp.mss6} if dp.mss4 else None
        counters["mss_clamped"] = dp.mss_clamped
        counters["fragmented"] = dp.fragmented
        if dp.too_big is not None:
            counters["icmp_too_big_sent"] = dp.too_big.sent
            counters["icmp_too_big_rate_limited"] = dp.too_big.rate_limited
        counters.update(dp.udp.as_dict())  # UDP GSO/GRO (udp.UdpCounters)
        if dp.endpoint is not None:  # server: what happened before any association
            counters["endpoint"] = endpoint_counters(dp.endpoint)
        counters["tun_offload"] = "on" if dp.tun.vnet else "off"
        counters["tun_tso"] = "on" if dp.tun.tso_offered else "off"  # TSO on read now
        # the compiled lone-packet lane (daemon/lane.py): None when off
        counters["compiled_lane"] = dp.lane_counters() if dp.lane_counters else None
        counters.update(dp.tun.counters.as_dict())  # coalesced writes (tun.TunCounters)
    return counters, drops


def endpoint_counters(endpoint: ServerEndpoint) -> dict[str, int]:
    """The server endpoint's own counters: cookies, admission limits, table, CIDs."""
    stats = endpoint.stats
    admission = endpoint.admission
    return {
        "hello_verify_sent": stats.hello_verify_sent,
        "cookie_accepted": stats.cookie_accepted,
        "hello_replayed": stats.hello_replayed,
        "hvr_rate_limited": admission.hvr_rate_limited,
        "source_limited": admission.source_limited,
        "association_rate_limited": admission.association_rate_limited,
        "table_full": stats.table_full,
        "not_client_hello": stats.not_client_hello,
        "replaced": stats.replaced,
        "unknown_cid": stats.unknown_cid,
        "address_changes": stats.address_changes,
        "path_challenges": stats.path_challenges,
    }


def snapshot(cfg: Config, peers: list[Peer], dp: Datapath | None, *, device: str,
             listen: str | None, mtu: int, mtu_policy: str, started_wall: float,
             wall: float, rekeying: Callable[[Peer], bool],
             handshake_failures: dict[str, int] | None = None,
             tcp_closes: dict[str, int] | None = None,
             untrusted_closes: int = 0) -> dict[str, Any]:
    iface = cfg.interface
    counters, drops = _counters(dp)
    return {
        "interface": {
            "name": cfg.name,
            "device": device,
            "role": iface.role,
            "listen": listen,
            "addresses": [str(a) for a in iface.addresses],
            "mtu": mtu,
            "mtu_policy": mtu_policy,
            "rekey_interval": iface.rekey_interval,
            "pid": os.getpid(),
            "uptime": round(wall - started_wall, 1) if started_wall else 0,
            "config": cfg.path,
            **counters,
            # refused (server) or failed (client) handshakes by reason (refusals.py)
            "handshake_failures": handshake_failures or {},
            "drops": drops,
            # established TLS/TCP links closed, by cause (daemon/transport.py)
            "tcp_closes": dict(sorted((tcp_closes or {}).items())),
            # associations and TLS links ended by a reload of the trust (daemon/trust.py)
            "untrusted_closes": untrusted_closes,
            **fleet_status(cfg, dp.endpoint if dp is not None else None),  # issue 15
        },
        "peers": [peer_status(p, dp, wall, rekeying(p)) for p in peers],
    }
