"""The DTLS core's settings from a loaded configuration, and which ``[Peer]`` authenticated.

The configuration package knows nothing of ``dtls/`` (arrows one way, see the README's
layout); this module is where the shell turns a :class:`~dtlsvpn.config.Config` into a
:class:`~dtlsvpn.dtls.config.DtlsConfig` and names the peer of a completed handshake.

Authentication model (security.md): the core accepts any client that passes the
server-wide check (the CA, or the union of pins when every certificate peer is pinned,
or a known PSK identity); :func:`match_peer` then names the ``[Peer]``, and the daemon
MUST close an association for which it returns None.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from cryptography.x509.oid import NameOID

from dtlsvpn.config.schema import Config, PeerConfig
from dtlsvpn.config.schema import load_config as _load_config
from dtlsvpn.crypto.certs import spki_sha256
from dtlsvpn.crypto.tickets import TicketKeyRing
from dtlsvpn.daemon import compiled
from dtlsvpn.daemon.fleet import cid_layout
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.events import HandshakeCompleted
from dtlsvpn.dtls.heartbeat import HeartbeatSettings
from dtlsvpn.errors import ConfigError


def load_config(path: str | Path, *, name: str | None = None,
                now: datetime.datetime | None = None,
                errors: list[ConfigError] | None = None) -> Config:
    """:func:`dtlsvpn.config.load_config`, plus the check that the credentials leave the
    DTLS core a usable cipher suite (a ConfigError naming ``Ciphers`` otherwise).
    ``errors``: collect every mistake found (check-config; see the loader)."""
    return _load_config(path, name=name, now=now, check=dtls_config, errors=errors)


def dtls_config(cfg: Config, peer: PeerConfig | None = None) -> DtlsConfig:
    """The DTLS core's settings for this configuration.

    Client: the single ``[Peer]`` (or ``peer``) is the server: CA + ServerName,
    pins and PSK as configured; our certificate when we have one; ``RekeyInterval``
    as ``rekey_interval`` (the client renews, the server accepts renewals).
    Server: ``peer=None`` accepts every configured peer (a PSK lookup over all
    PSK peers; the CA, or the union of pins when every certificate peer is
    pinned; a client certificate required when certificate peers exist);
    ``peer`` restricts all of that to one peer. Timers, MTU and the rest keep
    the DtlsConfig defaults (``RekeyInterval`` aside): use ``dataclasses.replace`` to
    change them.
    Raises UsageError when the credentials allow no cipher suite.
    """
    iface, creds = cfg.interface, cfg.credentials
    if iface.role == "client":
        server = peer if peer is not None else cfg.peers[0]
        return DtlsConfig(
            is_client=True,
            cipher_suites=iface.cipher_suites,
            certificate_chain=creds.certificate_chain,
            private_key=creds.private_key,
            ca_certs=creds.ca_certs,
            pinned_spki_sha256=server.pinned_spki_sha256,
            server_name=server.server_name,
            psk=server.psk,
            psk_identity=server.psk_identity if server.psk is not None else None,
            rekey_interval=iface.rekey_interval,
            connection_id=iface.connection_id,
        )
    peers = cfg.peers if peer is None else (peer,)
    table = {p.psk_identity: p.psk for p in peers
             if p.psk_identity is not None and p.psk is not None}
    cert_peers = [p for p in peers if p.uses_certificate]
    pins: frozenset[bytes] = frozenset()
    if cert_peers and all(p.pinned_spki_sha256 for p in cert_peers):
        pins = frozenset().union(*(p.pinned_spki_sha256 for p in cert_peers))

    def lookup(identity: bytes) -> bytes | None:
        return table.get(identity)

    return DtlsConfig(
        is_client=False,
        cipher_suites=iface.cipher_suites,
        certificate_chain=creds.certificate_chain if cert_peers else (),
        private_key=creds.private_key if cert_peers else None,
        ca_certs=creds.ca_certs if cert_peers else (),
        pinned_spki_sha256=pins,
        require_client_cert=bool(cert_peers),
        psk_lookup=lookup if table else None,
        rekey_interval=iface.rekey_interval,
        connection_id=iface.connection_id,
        cid_layout=cid_layout(iface.fleet),  # ServerId: CIDs that name this server
    )


def core_settings(cfg: Config, peer: PeerConfig | None = None, *,
                  ticket_keys: TicketKeyRing | None = None) -> DtlsConfig:
    """:func:`dtls_config` with what the daemon adds: the heartbeat settings of
    [Interface] (``HeartbeatInterval``, ``DeadPeerTimeout``), a server's ticket keys, and
    with ``CompiledLane`` the compiled batch sealer of data records (``compiled.py``)."""
    iface = cfg.interface
    heartbeats = HeartbeatSettings(interval=iface.heartbeat_interval,
                                   retransmit=min(1.0, iface.heartbeat_interval),
                                   timeout=iface.dead_peer_timeout)
    conf = dataclasses.replace(dtls_config(cfg, peer), heartbeat_settings=heartbeats,
                               record_sealer=compiled.sealer if iface.compiled_lane else None)
    if ticket_keys is None:
        return conf
    return dataclasses.replace(conf, ticket_keys=ticket_keys)


def match_peer(cfg: Config, event: HandshakeCompleted) -> PeerConfig | None:
    """The ``[Peer]`` that authenticated in ``event``, or None (then close the association).

    A PSK handshake matches the peer with that PSKIdentity. A certificate
    matches the first peer whose pins (if any) contain its SPKI SHA-256 and
    whose CommonName (if any) is a CN of its subject; the chain itself was
    already checked by the core. On a client the single peer is returned when
    the event's credential is one configured for it.
    """
    if event.psk_identity is not None:
        return next((p for p in cfg.peers
                     if p.psk is not None and p.psk_identity == event.psk_identity), None)
    cert = event.peer_certificate
    if cert is None:
        return None
    pin = spki_sha256(cert)
    if cfg.interface.role == "client":
        server = cfg.peers[0]
        if server.pinned_spki_sha256 and pin not in server.pinned_spki_sha256:
            return None
        if not (server.pinned_spki_sha256 or cfg.credentials.ca_certs):
            return None
        return server
    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    for p in cfg.peers:
        if not p.uses_certificate:
            continue
        if p.pinned_spki_sha256 and pin not in p.pinned_spki_sha256:
            continue
        if p.certificate_name is not None and p.certificate_name not in names:
            continue
        return p
    return None
