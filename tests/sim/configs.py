"""Client and server ``DtlsConfig`` pairs for the simulator, one per handshake mode.

Every mode of :data:`MODES` names the suite both sides offer and the credentials
they use (the session PKI of ``tests/pki.py``, or the fixed PSK).  Randomness is
seeded per side (``seeded_random``), so a run is reproducible from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.wire.constants import CipherSuite
from tests.pki import SERVER_NAME, Credential, Pki

PSK = bytes(range(32))
PSK_IDENTITY = b"client-1"


@dataclass(frozen=True)
class Mode:
    """A handshake mode: the suite both sides offer and the credentials they use."""

    name: str
    suite: CipherSuite
    server_cert: str | None = None  # "ecdsa" | "rsa"
    mutual: bool = False
    psk: bool = False


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("ecdhe-ecdsa-aes128", CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ecdsa"),
        Mode("ecdhe-ecdsa-aes256", CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "ecdsa"),
        Mode("ecdhe-ecdsa-chacha",
             CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "ecdsa"),
        Mode("ecdhe-rsa-aes128", CipherSuite.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "rsa"),
        Mode("mutual-ecdsa", CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ecdsa",
             mutual=True),
        Mode("psk-aes128", CipherSuite.TLS_PSK_WITH_AES_128_GCM_SHA256, psk=True),
        Mode("ecdhe-psk-chacha", CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
             psk=True),
    )
}


def server_credential(mode: Mode, pki: Pki) -> Credential:
    """The server certificate a certificate mode uses (ECDSA or RSA, both for server.test)."""
    return pki.server if mode.server_cert == "ecdsa" else pki.rsa_server


def seeded_random(seed: int, role: str) -> Callable[[int], bytes]:
    """A reproducible ``random_bytes`` for one side."""
    return random.Random(f"{seed}/{role}").randbytes


def configs_for(
    mode: Mode | str,
    pki: Pki,
    *,
    seed: int = 0,
    mtu: int = 1400,
    **overrides: Any,
) -> tuple[DtlsConfig, DtlsConfig]:
    """Client and server DtlsConfig for ``mode``; ``overrides`` apply to both sides.

    Path MTU discovery is off unless asked for (``pmtu=PmtuSettings(...)``): its
    probes are meant to exceed the path, which the handshake tests' size
    assertions forbid; tests/sim/test_pmtu.py exercises it on capped links.
    """
    m = MODES[mode] if isinstance(mode, str) else mode
    client: dict[str, Any] = dict(
        is_client=True, cipher_suites=(m.suite,), mtu=mtu,
        random_bytes=seeded_random(seed, "client"), pmtu=None,
    )
    server: dict[str, Any] = dict(
        is_client=False, cipher_suites=(m.suite,), mtu=mtu,
        random_bytes=seeded_random(seed, "server"), pmtu=None,
    )
    if m.psk:
        client.update(psk=PSK, psk_identity=PSK_IDENTITY)
        server.update(psk_lookup={PSK_IDENTITY: PSK}.get)
    else:
        creds = server_credential(m, pki)
        ca = pki.ca if m.server_cert == "ecdsa" else pki.rsa_ca
        client.update(ca_certs=(ca.cert,), server_name=SERVER_NAME)
        server.update(certificate_chain=(creds.cert,), private_key=creds.key)
        if m.mutual:
            client.update(certificate_chain=(pki.client.cert,), private_key=pki.client.key)
            server.update(ca_certs=(pki.ca.cert,), require_client_cert=True)
    client.update(overrides)
    server.update(overrides)
    return DtlsConfig(**client), DtlsConfig(**server)


def with_changes(config: DtlsConfig, **changes: Any) -> DtlsConfig:
    """A copy of a frozen config with some fields changed."""
    return replace(config, **changes)


def split_configs(mode: Mode | str, pki: Pki, seed: int, *,
                  client: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
                  **both: Any) -> tuple[DtlsConfig, DtlsConfig]:
    """``configs_for`` with ``both`` applied to each side, then the per-side changes."""
    c, s = configs_for(mode, pki, seed=seed, **both)
    return with_changes(c, **(client or {})), with_changes(s, **(server or {}))


def ticket_ring(label: str, seed: int = 0, **kw: Any) -> TicketKeyRing:
    """A ticket key ring whose keys are drawn from a seeded stream (``kw``: its settings)."""
    return TicketKeyRing(random.Random(f"{label}/{seed}").randbytes, **kw)
