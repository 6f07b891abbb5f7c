"""Certificate, PrivateKey and CA reloaded in place (SIGHUP), on fake devices.

One server trusting two CAs (``trust.pem``), two clients: ``laptop`` (CN client.test,
under the first CA) and ``laptop2`` (CN client2.test, under the second).  Each client
trusts the server's CA through its own file, so a test can change one side's trust.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtlsvpn.daemon.client import ClientRole
from dtlsvpn.daemon.server import ServerRole
from dtlsvpn.daemon.status import format_prometheus
from dtlsvpn.dtls.association import Association
from tests.fakes.packets import udp
from tests.fakes.world import Host, World
from tests.netns.harness import SERVER_TUNNEL
from tests.pki import Credential, issue, issue_ca
from tests.shell.conftest import SERVER, established
from tests.support.conf import TunnelConf, Value

CLIENTS = {"laptop": ("198.18.0.2", "100.64.0.2"), "laptop2": ("198.18.0.3", "100.64.0.3")}


@dataclass
class Setup:
    dir: Path
    ca: Credential
    ca2: Credential
    server_conf: Path
    client_confs: dict[str, Path]

    def trust(self, path: Path, *cas: Credential) -> None:
        path.write_bytes(b"".join(c.cert_pem for c in cas))


def _setup(tmp_path: Path, **interface: Value) -> Setup:
    d = tmp_path / "pki"
    d.mkdir()
    ca, ca2 = issue_ca(d, "ca", "dtlsvpn test CA"), issue_ca(d, "ca2", "dtlsvpn second CA")
    issue(d, "server", ca, server=True)
    certs = {"laptop": issue(d, "client", ca, server=False),
             "laptop2": issue(d, "client2", ca2, server=False, common_name="client2.test")}
    setup = Setup(d, ca, ca2, tmp_path / "server.conf", {})
    setup.trust(d / "trust.pem", ca, ca2)
    server = TunnelConf(
        role="server", listen_address=f"{SERVER}:4433", device="dvs0", address=SERVER_TUNNEL,
        certificate=d / "server.pem", private_key=d / "server.key", ca=d / "trust.pem",
        status_socket=tmp_path / "server.sock", ticket_store=tmp_path / "server-state",
        log_level="debug", **interface)
    for name, (_underlay, inner) in CLIENTS.items():
        cn = "client.test" if name == "laptop" else "client2.test"
        server.peer(name=name, common_name=cn, allowed_ips=f"{inner}/32")
        setup.trust(d / f"{name}-ca.pem", ca)
        setup.client_confs[name] = TunnelConf(
            role="client", device="dvc0", address=f"{inner}/24",
            certificate=certs[name].cert_path, private_key=certs[name].key_path,
            ca=d / f"{name}-ca.pem", status_socket=tmp_path / f"{name}.sock",
            ticket_store=tmp_path / f"{name}-tickets", log_level="debug", **interface,
        ).peer(name="hq", endpoint=f"{SERVER}:4433", server_name="server.test",
               allowed_ips="100.64.0.0/24").write(tmp_path / f"{name}.conf")
    server.write(setup.server_conf)
    return setup


def _start(world: World, setup: Setup, *names: str) -> tuple[Host, dict[str, Host]]:
    world.clock.epoch = time.time() - world.clock.now  # the test PKI is valid now
    server = world.start(setup.server_conf, SERVER)
    clients = {n: world.start(setup.client_confs[n], CLIENTS[n][0]) for n in names}
    assert world.run_until(lambda: all(established(c) for c in clients.values())
                           and all(server.peer(n)["state"] == "established" for n in names))
    return server, clients


def _server_assoc(host: Host, name: str) -> Association | None:
    return host.daemon.peers[name].assoc


def _client_assoc(host: Host) -> Association | None:
    role = host.daemon.role
    assert isinstance(role, ClientRole)
    return role.peer.assoc


def _server_serial(client: Host) -> int:
    """The serial of the certificate the client's current association was shown."""
    assoc = _client_assoc(client)
    assert assoc is not None and assoc.handshake_result is not None
    cert = assoc.handshake_result.peer_certificate
    assert cert is not None
    return int(cert.serial_number)


def _flows(world: World, server: Host, client: Host, name: str, n: int = 5) -> bool:
    """``n`` packets each way through the tunnel, all delivered."""
    inner = CLIENTS[name][1]
    client.tun.inject([udp(inner, "100.64.0.1", seq=i) for i in range(n)])
    server.tun.inject([udp("100.64.0.1", inner, seq=i) for i in range(n)])
    world.settle()
    got = len(server.tun.drain()), len(client.tun.drain())
    return got == (n, n)


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_server_certificate_renewed_in_place(world: World, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The cron job rewrites server.pem/.key (same paths, new key) and reloads: the log
    says what changed; the connected client keeps its association and traffic; a new
    client's handshake is shown the new certificate; the client's renewal too."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, clients = _start(world, setup, "laptop")
    laptop = clients["laptop"]
    old_serial = _server_serial(laptop)
    before = _server_assoc(server, "laptop"), _client_assoc(laptop)
    renewed = issue(setup.dir, "server", setup.ca, server=True)
    server.daemon.on_reload(world.clock.now)
    (line,) = _messages(caplog, "credentials changed")
    assert f"serial {renewed.cert.serial_number:x}" in line and "new key" in line, line
    assert "CN=server.test" in line and "expires" in line, line
    assert (_server_assoc(server, "laptop"), _client_assoc(laptop)) == before
    assert _flows(world, server, laptop, "laptop")
    assert _server_serial(laptop) == old_serial != renewed.cert.serial_number
    laptop2 = world.start(setup.client_confs["laptop2"], CLIENTS["laptop2"][0])
    assert world.run_until(lambda: established(laptop2))
    assert _server_serial(laptop2) == renewed.cert.serial_number
    assert _server_assoc(server, "laptop") is before[0] and _flows(world, server, laptop,
                                                                   "laptop")
    print(f"\n{line}")


def test_a_client_renewal_uses_the_reloaded_certificate(world: World, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """The client's own certificate is renewed in place and reloaded: its next key
    renewal (RekeyInterval) presents the new one (the server sees its serial)."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    text = setup.client_confs["laptop"].read_text()
    setup.client_confs["laptop"].write_text(text.replace("[Interface]\n",
                                                         "[Interface]\nRekeyInterval = 60\n"))
    server, clients = _start(world, setup, "laptop")
    laptop = clients["laptop"]
    renewed = issue(setup.dir, "client", setup.ca, server=False)
    laptop.daemon.on_reload(world.clock.now)
    assert _messages(caplog, "credentials changed")
    assert world.run_until(lambda: laptop.peer()["rekeys"] >= 1, within=90)
    assoc = _server_assoc(server, "laptop")
    assert assoc is not None and assoc.handshake_result is not None
    cert = assoc.handshake_result.peer_certificate
    assert cert is not None and cert.serial_number == renewed.cert.serial_number
    assert _flows(world, server, laptop, "laptop")


def test_a_ca_change_closes_only_the_client_it_no_longer_trusts(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """trust.pem loses the second CA: laptop2's association ends at once (a fatal
    alert, counted, logged), its redial is refused; laptop is untouched."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, clients = _start(world, setup, "laptop", "laptop2")
    kept = _server_assoc(server, "laptop")
    setup.trust(setup.dir / "trust.pem", setup.ca)
    server.daemon.on_reload(world.clock.now)
    assert _messages(caplog, "CA: 1 certificate")
    (line,) = _messages(caplog, "no longer validates")
    assert "laptop2" in line and "not a configured CA" in line, line
    assert server.peer("laptop2")["state"] == "down"
    assert server.snapshot()["interface"]["untrusted_closes"] == 1
    assert _server_assoc(server, "laptop") is kept and server.peer("laptop")["state"] == (
        "established")
    assert _flows(world, server, clients["laptop"], "laptop")
    # laptop2 heard the alert, redials, and is refused under the new trust
    assert world.run_until(lambda: server.snapshot()["interface"]["handshake_failures"]
                           .get("unknown_ca", 0) >= 1, within=10)
    assert not established(clients["laptop2"])
    assert _server_assoc(server, "laptop") is kept
    print(f"\n{line}")


def test_a_bad_key_fails_the_reload_and_keeps_the_credentials(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A good renewal, then a reload whose key is not the certificate's: that reload
    fails as a whole (file and key named) and the renewed credentials stay in use."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, clients = _start(world, setup, "laptop")
    renewed = issue(setup.dir, "server", setup.ca, server=True)
    server.daemon.on_reload(world.clock.now)
    assert _messages(caplog, "credentials changed")
    running = server.daemon.cfg.credentials
    other = issue(setup.dir, "other", setup.ca, server=True)
    (setup.dir / "server.key").write_bytes(other.key_pem)
    server.daemon.on_reload(world.clock.now)
    (line,) = _messages(caplog, "reload failed")
    assert "PrivateKey" in line and str(setup.dir / "server.key") in line, line
    assert "server.conf:" in line, line  # the file and its line
    assert server.daemon.cfg.credentials is running
    assert len(_messages(caplog, "credentials changed")) == 1
    laptop2 = world.start(setup.client_confs["laptop2"], CLIENTS["laptop2"][0])
    assert world.run_until(lambda: established(laptop2))
    assert _server_serial(laptop2) == renewed.cert.serial_number
    assert _flows(world, server, clients["laptop"], "laptop")
    print(f"\n{line}")


def test_a_client_whose_server_is_no_longer_trusted(world: World, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The client's CA file names only the second CA now: the association ends at the
    reload (the server hears an alert), and the redial fails under the new trust, said in
    the log, with the usual back-off."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, clients = _start(world, setup, "laptop")
    laptop = clients["laptop"]
    setup.trust(setup.dir / "laptop-ca.pem", setup.ca2)
    laptop.daemon.on_reload(world.clock.now)
    (line,) = _messages(caplog, "no longer validates")
    assert "hq" in line and "not a configured CA" in line, line
    assert laptop.snapshot()["interface"]["untrusted_closes"] == 1
    world.settle()
    assert server.peer("laptop")["state"] == "down"
    assert world.run_until(lambda: laptop.snapshot()["interface"]["handshake_failures"]
                           .get("unknown_ca", 0) >= 2, within=30)
    refused = _messages(caplog, "server certificate not signed by our CA")
    assert refused, [r.getMessage() for r in caplog.records]
    assert _messages(caplog, "redialling in")
    assert not established(laptop)
    print(f"\n{line}\n{refused[0]}")


def test_tickets_from_before_a_ca_change_do_not_resume(world: World, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """Both sides' CA files gain the second CA (every peer still validates, nothing
    closes); the client's ticket from before is not offered, and the next dial is a
    full handshake."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, clients = _start(world, setup, "laptop")
    laptop = clients["laptop"]
    assert world.run_until(lambda: any((tmp_path / "laptop-tickets").glob("*.ticket")))
    kept = _client_assoc(laptop)
    setup.trust(setup.dir / "laptop-ca.pem", setup.ca, setup.ca2)
    laptop.daemon.on_reload(world.clock.now)
    assert _messages(caplog, "CA: 2 certificates")
    assert _client_assoc(laptop) is kept and not _messages(caplog, "no longer validates")
    role = laptop.daemon.role
    assert isinstance(role, ClientRole)
    role._redial_now(role.peer, world.clock.now, "test")
    assert world.run_until(lambda: laptop.peer()["handshakes"] >= 2
                           and server.peer("laptop")["state"] == "established")
    assert _messages(caplog, "was made under other credentials")
    assert laptop.peer()["resumed"] is False
    assert _flows(world, server, laptop, "laptop")


def test_server_tickets_from_before_a_ca_change_do_not_resume(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server's CA file changes (laptop still validates: untouched); the client's
    ticket, issued under the old CA set, is offered and not accepted: a full handshake."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, clients = _start(world, setup, "laptop")
    laptop = clients["laptop"]
    assert world.run_until(lambda: any((tmp_path / "laptop-tickets").glob("*.ticket")))
    kept = _server_assoc(server, "laptop")
    setup.trust(setup.dir / "trust.pem", setup.ca)
    server.daemon.on_reload(world.clock.now)
    assert _messages(caplog, "CA: 1 certificate")
    assert _server_assoc(server, "laptop") is kept
    role = laptop.daemon.role
    assert isinstance(role, ClientRole) and isinstance(server.daemon.role, ServerRole)
    role._redial_now(role.peer, world.clock.now, "test")
    assert world.run_until(lambda: laptop.peer()["handshakes"] >= 2
                           and server.peer("laptop")["handshakes"] >= 2)
    assert role.offered_ticket  # offered (the client's trust did not change) ...
    assert laptop.peer()["resumed"] is False  # ... and refused by the server
    assert server.peer("laptop")["resumed"] is False
    assert _flows(world, server, laptop, "laptop")


def test_a_handshake_in_flight_at_the_reload_is_judged_by_the_new_trust(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """laptop2's handshake began under the old trust (its association exists on the
    server, not complete) when trust.pem loses its CA: it does not come up."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path)
    server, _clients = _start(world, setup, "laptop")
    laptop2 = world.start(setup.client_confs["laptop2"], CLIENTS["laptop2"][0])
    role = server.daemon.role
    assert isinstance(role, ServerRole) and role.endpoint is not None
    endpoint = role.endpoint

    def half_open() -> bool:
        return any(not a.is_established for a in endpoint.associations.values())

    for _ in range(50):
        if half_open():
            break
        world.step()
    assert half_open()
    setup.trust(setup.dir / "trust.pem", setup.ca)
    server.daemon.on_reload(world.clock.now)
    world.run_for(3.0)
    assert server.peer("laptop2")["state"] != "established"
    assert server.snapshot()["interface"]["untrusted_closes"] == 1
    (line,) = _messages(caplog, "handshake begun before the reload")
    assert "not a configured CA" in line, line
    assert server.peer("laptop")["state"] == "established" and not established(laptop2)


def test_a_ca_change_closes_an_untrusted_tls_link(world: World, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Transport = tcp: the same over the TCP fallback (``tcp_closes``: ``untrusted``)."""
    caplog.set_level(logging.INFO, logger="dtlsvpn")
    setup = _setup(tmp_path, transport="tcp")
    server, clients = _start(world, setup, "laptop", "laptop2")
    assert server.peer("laptop2")["transport"] == "tcp"
    setup.trust(setup.dir / "trust.pem", setup.ca)
    server.daemon.on_reload(world.clock.now)
    world.settle()
    (line,) = _messages(caplog, "no longer validates")
    assert "laptop2" in line, line
    snap = server.snapshot()["interface"]
    assert snap["tcp_closes"].get("untrusted") == 1 and snap["untrusted_closes"] == 1
    assert server.peer("laptop2")["state"] != "established"
    assert server.peer("laptop")["state"] == "established"
    assert _flows(world, server, clients["laptop"], "laptop")


def test_the_untrusted_count_is_a_metric(world: World, tmp_path: Path) -> None:
    """``untrusted_closes`` in the status and ``dtlsvpn_untrusted_closes_total``."""
    setup = _setup(tmp_path)
    server, _clients = _start(world, setup, "laptop", "laptop2")
    setup.trust(setup.dir / "trust.pem", setup.ca)
    server.daemon.on_reload(world.clock.now)
    prom = format_prometheus([server.snapshot()])
    assert 'dtlsvpn_untrusted_closes_total{instance="server"} 1' in prom, prom
