"""In-memory pairs of the sans-I/O core: a client Association against a ServerEndpoint.

No sockets and no simulated loss: every datagram one side emits is handed to the
other at once, until both sides are established and nothing is in flight.  The
server's share of the work is timed alone with ``time.thread_time`` (CPU of this
thread, so other processes on a shared machine do not count), which is what
"handshakes per second on one server core" needs.  Configurations follow the
daemon's defaults: ECDSA P-256 certificates from ``dtlsvpn gencert`` with
TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ECDHE-PSK for PSK peers, tickets from a
TicketKeyRing, connection IDs on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.dtls.admission import Admission, AdmissionLimits
from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint
from dtlsvpn.dtls.events import HandshakeCompleted, SessionTicketReceived
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.wire.constants import CipherSuite

PSK = bytes(range(32))
PSK_IDENTITY = b"bench-psk"
MAX_STEPS = 64


@dataclass(frozen=True)
class Credentials:
    ca: x509.Certificate
    server_chain: tuple[x509.Certificate, ...]
    server_key: object

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path) -> Credentials:
        return cls(x509.load_pem_x509_certificate(ca.read_bytes()),
                   tuple(x509.load_pem_x509_certificates(cert.read_bytes())),
                   load_pem_private_key(key.read_bytes(), None))


def configs(mode: str, creds: Credentials) -> tuple[DtlsConfig, DtlsConfig]:
    """(client, server) for ``ecdsa`` (also used resumed), ``psk`` or ``psk-plain``."""
    if mode == "ecdsa":
        suites = (CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,)
        client = DtlsConfig(is_client=True, cipher_suites=suites, ca_certs=(creds.ca,),
                            pmtu=None)
        server = DtlsConfig(is_client=False, cipher_suites=suites,
                            certificate_chain=creds.server_chain,
                            private_key=creds.server_key,  # type: ignore[arg-type]
                            pmtu=None, ticket_keys=TicketKeyRing(os.urandom))
        return client, server
    suites = ((CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,) if mode == "psk"
              else (CipherSuite.TLS_PSK_WITH_AES_128_GCM_SHA256,))
    client = DtlsConfig(is_client=True, cipher_suites=suites, psk=PSK,
                        psk_identity=PSK_IDENTITY, pmtu=None)
    server = DtlsConfig(is_client=False, cipher_suites=suites,
                        psk_lookup={PSK_IDENTITY: PSK}.get, pmtu=None)
    return client, server


@dataclass
class Handshake:
    client: Association
    server: Association
    server_seconds: float
    client_seconds: float
    session: ClientSession | None
    resumed: bool


class Pairing:
    """Runs handshakes of fresh clients against one ServerEndpoint, one address each."""

    def __init__(self, server_config: DtlsConfig, *, max_associations: int = 100_000) -> None:
        self.endpoint = ServerEndpoint(server_config, max_associations=max_associations)
        # The capacity of the core is measured, not the flood guard: the endpoint's
        # HelloVerifyRequest and new-association limits (2000/s in all, 20/s per source
        # host; README "Security") would cap the figure, so they are lifted here.
        unlimited = 1e12
        self.endpoint.admission = Admission(server_config.random_bytes, AdmissionLimits(
            global_rate=unlimited, global_burst=unlimited, per_source_rate=unlimited,
            per_source_burst=unlimited, max_half_open_per_source=1 << 30,
            new_per_source_rate=unlimited, new_per_source_burst=unlimited))
        self._port = 1024

    def handshake(self, client_config: DtlsConfig) -> Handshake:
        self._port = self._port + 1 if self._port < 65535 else 1025
        addr = ("198.18.0.2", self._port)
        tt, now = time.thread_time, time.monotonic()
        wall = time.time()
        t0 = tt()
        client = Association(client_config)
        client.connect(now, wall)
        to_server = client.datagrams_to_send(now)
        client_s, server_s = tt() - t0, 0.0
        server: Association | None = None
        for _ in range(MAX_STEPS):
            to_client: list[bytes] = []
            t0 = tt()
            for d in to_server:
                assoc, out = self.endpoint.receive(d, addr, now, wall)
                if assoc is None:
                    to_client += out
                else:
                    server = assoc
            if server is not None:
                to_client += server.datagrams_to_send(now)
            t1 = tt()
            server_s += t1 - t0
            for d in to_client:
                client.receive_datagram(d, now, wall)
            to_server = client.datagrams_to_send(now)
            client_s += tt() - t1
            if (not to_server and server is not None and server.is_established
                    and client.is_established):
                break
        else:
            raise RuntimeError("handshake did not complete in memory")
        assert server is not None
        events = client.pop_events()
        session = next((e.session for e in events if isinstance(e, SessionTicketReceived)), None)
        resumed = any(e.resumed for e in events if isinstance(e, HandshakeCompleted))
        server.pop_events()
        return Handshake(client, server, server_s, client_s, session, resumed)

    def drop(self, server: Association) -> None:
        """Close the server side silently and forget it (keeps the endpoint small)."""
        now = time.monotonic()
        server.close(now)
        server.datagrams_to_send(now)
        self.endpoint.remove_closed()


def resuming(client_config: DtlsConfig, session: ClientSession) -> DtlsConfig:
    return replace(client_config, resume_session=session)
