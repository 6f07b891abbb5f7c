"""Client ticket store: one file per server, mode 0600, replaced by atomic rename.

A ticket file holds a master secret (``ClientSession.encode``), so it is written to a
temporary file created with mode 0600 in the same directory, fsync'ed and renamed over
the old one: a reader sees the old file or the new one, never half of either.  A file
that does not decode, or a session the server refused, is deleted.

A ticket resumes the server's authentication and ours as they were in the full
handshake that made it, so a file also carries the digest of the credentials that
handshake used (:func:`trust_digest`: the CA certificates, the pins, the server name,
our own certificate chain, the PSK identity and key, the suites).  A ticket whose digest
differs from the current configuration's, as after the CA or a pin was replaced, is
deleted unused: the next handshake is a full one, judged by the new credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from pathlib import Path

from dtlsvpn.crypto.certs import certs_sha256
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.session import ClientSession
from dtlsvpn.errors import DecodeError
from dtlsvpn.fileutil import replace_private

log = logging.getLogger("dtlsvpn")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_TRUST = "trust "  # the digest's line in a ticket file (ClientSession.decode skips it)


def trust_digest(conf: DtlsConfig) -> str:
    """SHA-256 (hex) of the credentials a client's handshake is judged by and judged with."""
    h = hashlib.sha256()

    def part(label: str, value: bytes) -> None:
        h.update(label.encode() + len(value).to_bytes(4, "big") + value)

    part("ca", certs_sha256(conf.ca_certs))
    for pin in sorted(conf.pinned_spki_sha256):
        part("pin", pin)
    part("name", (conf.server_name or "").encode())
    part("verify", b"1" if conf.verify_peer else b"0")
    part("chain", certs_sha256(conf.certificate_chain))
    part("psk-identity", conf.psk_identity or b"")
    part("psk", hashlib.sha256(conf.psk).digest() if conf.psk is not None else b"")
    part("suites", b"".join(int(s).to_bytes(2, "big") for s in conf.suites))
    return h.hexdigest()


class TicketStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, server: str) -> Path:
        return self.directory / (_UNSAFE.sub("_", server) + ".ticket")

    def load(self, server: str, wall: float, trust: str = "") -> ClientSession | None:
        """The stored session for ``server`` if it is usable and was made under the
        credentials whose :func:`trust_digest` is ``trust``; else None (file deleted)."""
        path = self._path(server)
        try:
            if path.stat().st_mode & 0o077:
                # It holds a master secret: one others could read is no longer secret.
                self.forget(server)
                return None
            text = path.read_text()
            session = ClientSession.decode(text)
        except FileNotFoundError:
            return None
        except (OSError, DecodeError, ValueError):
            self.forget(server)
            return None
        if not session.usable(wall):
            self.forget(server)
            return None
        made_under = next((line[len(_TRUST):].strip() for line in text.splitlines()
                           if line.startswith(_TRUST)), "")
        if made_under != trust:
            log.info("stored ticket for %s was made under other credentials (CA, pins, "
                     "server name, own certificate or PSK changed): not offered", server)
            self.forget(server)
            return None
        return session

    def save(self, server: str, session: ClientSession, trust: str = "") -> None:
        """Store ``session`` with the :func:`trust_digest` of the credentials it was made
        under."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = session.encode() + (f"{_TRUST}{trust}\n" if trust else "")
        replace_private(self._path(server), text.encode())

    def forget(self, server: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(server).unlink()
