"""Daemon shell pieces that need no namespace: MTU policy, back-off, notify, status, tickets,
the UDP error queue."""

from __future__ import annotations

import dataclasses
import errno
import json
import random
import socket
import stat
import threading
from pathlib import Path

import pytest

from dtlsvpn.daemon.dialer import BACKOFF_CAP, backoff_delay
from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.status import StatusServer, format_text, query
from dtlsvpn.daemon.systemd import Notifier
from dtlsvpn.daemon.ticketstore import TicketStore, trust_digest
from dtlsvpn.daemon.tunmtu import MAX_AEAD_OVERHEAD, default_tun_mtu, tunnel_overhead
from dtlsvpn.daemon.udp import normalise, open_udp, read_errors
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.session import ClientSession
from tests.pki import Pki


def test_default_mtu_policy() -> None:
    assert MAX_AEAD_OVERHEAD == 24
    assert tunnel_overhead(socket.AF_INET) == 20 + 8 + 13 + 24
    assert default_tun_mtu(socket.AF_INET, None) == 1335
    assert default_tun_mtu(socket.AF_INET, 1500) == 1335  # never trust more than 1400
    assert default_tun_mtu(socket.AF_INET, 1360) == 1295
    assert default_tun_mtu(socket.AF_INET6, None) == 1315


def test_backoff_is_capped_jittered_and_grows() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, rng) for n in range(12)]
    assert all(0.5 * min(BACKOFF_CAP, 2**n) <= d <= min(BACKOFF_CAP, 2**n)
               for n, d in enumerate(delays))
    assert max(delays) <= BACKOFF_CAP
    assert backoff_delay(1000, rng) <= BACKOFF_CAP
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jittered, not a fixed cap


def test_notifier(tmp_path: Path) -> None:
    assert not Notifier(environ={}).enabled
    Notifier(environ={}).ready("nothing happens")
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        n = Notifier(environ={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert n.watchdog_interval == 4.0
        n.ready("1/1 peers up")
        assert sock.recv(512).decode().splitlines() == ["READY=1", "STATUS=1/1 peers up"]
        n.status("same")
        n.status("same")  # unchanged status is not repeated
        n.watchdog()
        n.stopping()
        got = [sock.recv(512).decode() for _ in range(3)]
        assert got == ["STATUS=same", "WATCHDOG=1", "STOPPING=1"]
    other = Notifier(environ={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000",
                              "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is for another process


SNAP = {
    "interface": {"name": "office", "mtu": 1335, "drops": {"no_route": 2}},
    "peers": [{"name": "branch", "state": "established", "resumed": True,
               "allowed_ips": ["100.64.0.2/32", "fd00::2/128"], "plpmtu": None,
               "drops": {"spoofed_source": 1}}],
}


def test_format_text() -> None:
    assert format_text(SNAP).splitlines() == [
        "name=office", "mtu=1335", "drops_no_route=2",
        "peer=branch", "state=established", "resumed=yes",
        "allowed_ips=100.64.0.2/32,fd00::2/128", "plpmtu=", "drops_spoofed_source=1",
    ]


class _StopWhenAsked:
    """Checks every 50 ms (a loop Timer) whether the test asked the loop to stop."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.stop = threading.Event()
        self.timer = loop.timer(self._check)
        self.timer.schedule(loop.now)

    def _check(self, now: float, wall: float) -> None:
        if self.stop.is_set():
            self.loop.stop()
        else:
            self.timer.schedule(now + 0.05)


def test_status_socket_mode_and_protocol(tmp_path: Path) -> None:
    loop = Loop()
    path = tmp_path / "run" / "office.sock"
    server = StatusServer(path, lambda: SNAP, loop)
    owner = _StopWhenAsked(loop)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(query(path, as_json=True)) == SNAP
        assert "peer=branch" in query(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.sendall(b"bogus\n")
            assert s.recv(1024).startswith(b"error=")
    finally:
        owner.stop.set()
        thread.join(5)
        server.close()
        loop.close()
    assert not path.exists()


def test_ticket_store_round_trip_and_modes(tmp_path: Path) -> None:
    store = TicketStore(tmp_path / "tickets")
    session = ClientSession(ticket=b"t" * 40, suite=0xCCAC, master_secret=b"m" * 48, ems=True,
                            received_at=1000, lifetime_hint=3600)
    store.save("office-198.18.0.1-4433", session)
    (path,) = (tmp_path / "tickets").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tickets").stat().st_mode) == 0o700
    assert store.load("office-198.18.0.1-4433", wall=2000) == session
    assert store.load("office-198.18.0.1-4433", wall=1000 + 3601) is None  # expired → gone
    assert not path.exists()
    path.write_text("garbage")
    assert store.load("office-198.18.0.1-4433", wall=2000) is None
    assert not path.exists()


def test_a_ticket_is_offered_only_under_the_credentials_it_was_made_with(
        tmp_path: Path) -> None:
    store = TicketStore(tmp_path / "tickets")
    session = ClientSession(ticket=b"t" * 40, suite=0xCCAC, master_secret=b"m" * 48, ems=True,
                            received_at=1000, lifetime_hint=3600)
    store.save("office", session, "a" * 64)
    (path,) = (tmp_path / "tickets").iterdir()
    assert store.load("office", 2000, "a" * 64) == session
    assert store.load("office", 2000, "b" * 64) is None and not path.exists()  # deleted
    store.save("office", session)  # a file without the digest (an older daemon's)
    assert store.load("office", 2000, "a" * 64) is None and not path.exists()


def test_the_trust_digest_follows_every_credential(pki: Pki) -> None:
    base = DtlsConfig(is_client=True, ca_certs=(pki.ca.cert,), server_name="vpn.test",
                      certificate_chain=(pki.client.cert,), private_key=pki.client.key)
    same = DtlsConfig(is_client=True, ca_certs=(pki.ca.cert,), server_name="vpn.test",
                      certificate_chain=(pki.client.cert,), private_key=pki.client.key)
    assert trust_digest(base) == trust_digest(same)
    changed = [
        dataclasses.replace(base, ca_certs=(pki.evil_ca.cert,)),
        dataclasses.replace(base, ca_certs=(pki.ca.cert, pki.rsa_ca.cert)),
        dataclasses.replace(base, pinned_spki_sha256=frozenset({b"p" * 32})),
        dataclasses.replace(base, server_name="other.test"),
        dataclasses.replace(base, certificate_chain=(pki.evil_client.cert,),
                            private_key=pki.evil_client.key),
        dataclasses.replace(base, cipher_suites=base.suites[:1]),
    ]
    psk = DtlsConfig(is_client=True, psk=b"k" * 32, psk_identity=b"branch")
    changed += [psk, dataclasses.replace(psk, psk=b"j" * 32),
                dataclasses.replace(psk, psk_identity=b"other")]
    digests = [trust_digest(c) for c in [base, *changed]]
    assert len(set(digests)) == len(digests)


def test_error_queue_reports_icmp_unreachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = open_udp(socket.AF_INET, connect=("127.0.0.1", port))  # nobody listens there
    try:
        sock.send(b"x")
        hints = []
        for _ in range(100):
            try:
                sock.recv(10)
            except BlockingIOError:
                pass
            except OSError:
                pass
            hints += read_errors(sock)
            if hints:
                break
        assert hints, "no error queued"
        assert hints[0].errno == errno.ECONNREFUSED
        assert hints[0].destination == ("127.0.0.1", port)
        assert hints[0].mtu is None
    finally:
        sock.close()


@pytest.mark.parametrize(("raw", "want"), [
    (("::ffff:198.18.0.2", 4433, 0, 0), ("198.18.0.2", 4433)),
    (("2001:db8::1", 4433, 0, 0), ("2001:db8::1", 4433)),
    (("198.18.0.2", 1), ("198.18.0.2", 1)),
])
def test_normalise(raw: tuple, want: tuple) -> None:
    assert normalise(raw) == want
