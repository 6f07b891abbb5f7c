"""The bench's parsers of iperf3 and ping output (bench/load.py), on output captured from
iperf 3.12 and iputils ping on this machine's Debian 12 (trimmed to the fields read)."""

from __future__ import annotations

import json

import pytest

from bench.load import Throughput, parse_iperf, parse_ping
from bench.procs import BenchError

IPERF_OK = json.dumps({
    "start": {"version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 1,
                                                      "duration": 1, "reverse": 0}},
    "end": {
        "sum_sent": {"start": 0, "end": 1.000149, "seconds": 1.000149, "bytes": 2734161920,
                     "bits_per_second": 21870036724.528046, "retransmits": 0, "sender": True},
        "sum_received": {"start": 0, "end": 1.000199, "seconds": 1.000199,
                         "bytes": 2728919040, "bits_per_second": 21827008745.259693,
                         "sender": True},
    },
})

IPERF_REFUSED = """{
	"start":	{
		"connected":	[],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44-fc-v857 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
	},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection refused"
}"""

PING_OK = """PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.
64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.012 ms
64 bytes from 127.0.0.1: icmp_seq=2 ttl=64 time=0.022 ms
64 bytes from 127.0.0.1: icmp_seq=3 ttl=64 time=0.053 ms

--- 127.0.0.1 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 406ms
rtt min/avg/max/mdev = 0.012/0.029/0.053/0.017 ms
"""

PING_LOST = """PING 100.64.9.9 (100.64.9.9) 56(84) bytes of data.

--- 100.64.9.9 ping statistics ---
2 packets transmitted, 0 received, 100% packet loss, time 1015ms
"""


def test_iperf_reads_the_receivers_sum() -> None:
    mbit, nbytes, retransmits = parse_iperf(IPERF_OK)
    assert mbit == pytest.approx(21827.008745, rel=1e-9)
    assert nbytes == 2728919040
    assert retransmits == 0


def test_iperf_error_is_reported_with_its_text() -> None:
    with pytest.raises(BenchError, match="Connection refused"):
        parse_iperf(IPERF_REFUSED)


@pytest.mark.parametrize("text", ["", "iperf3: error - the server is busy", "{}"])
def test_iperf_without_figures_is_an_error(text: str) -> None:
    with pytest.raises(BenchError):
        parse_iperf(text)


def test_ping_median_and_p90_of_the_replies() -> None:
    rtt = parse_ping(PING_OK)
    assert (rtt.median_ms, rtt.p90_ms, rtt.sent, rtt.received) == (0.022, 0.053, 3, 3)


def test_ping_with_no_reply_is_an_error() -> None:
    with pytest.raises(BenchError, match="no reply"):
        parse_ping(PING_LOST)


def test_cores_per_gbit_is_cpu_seconds_per_gigabit_carried() -> None:
    # 1.25e8 bytes = 1 Gbit carried with 1.5 CPU seconds: 1.5 cores per Gbit/s.
    assert Throughput(800.0, 125_000_000, 0, 1.5, 0.0).cores_per_gbit == pytest.approx(1.5)
    assert Throughput(800.0, 125_000_000, 0, 0.0, 0.0).cores_per_gbit is None
    assert Throughput(0.0, 0, 0, 1.0, 0.0).cores_per_gbit is None
