"""The interop matrix as data: cells, and the command lines of every peer for a cell.

A `Cell` names one cipher suite and one authentication mode, with what each
implementation calls that suite, so a test can assert the negotiated suite from
both sides. The builders return argv lists (without the `timeout` wrapper, which
`tests.util.ProcessGroup` adds) for:

- our tools: `python -m dtlsvpn dtls server|client` (their output contract is in
  `dtlsvpn/cli/dtls/output.py`);
- OpenSSL 3: `openssl s_server|s_client -dtls1_2` (`-mtu` is the IP MTU: UDP payload + 28);
- GnuTLS: `gnutls-serv|gnutls-cli -u` (`--mtu` is the UDP payload). `gnutls-serv` runs
  with `-d 4` because that is the only way it reports the suite it selected.

Facts about the peers come from the shared docs (peers.md, beside the repository).
"""

from __future__ import annotations

import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.pki import Pki

REPO = Path(__file__).resolve().parents[2]
OUR_ENV = {"PYTHONPATH": str(REPO)}

PSK_IDENTITY = "client1"
PSK_HEX = "00112233445566778899aabbccddeeff"
WRONG_PSK_HEX = "ffeeddccbbaa99887766554433221100"

IP_UDP_HEADERS = 28  # IPv4 (20) + UDP (8): OpenSSL's -mtu counts them, ours does not
GNUTLS_PORT = 5684  # fixed: gnutls-serv cannot report a port 0 choice; it runs in a private netns
GNUTLS_BASE_PRIORITY = "NORMAL:-VERS-ALL:+VERS-DTLS1.2"

HANDSHAKE_RE = re.compile(
    r"^handshake: DTLSv1\.2 (?P<suite>TLS_\w+) ems=(?P<ems>yes|no) resumed=(?P<resumed>yes|no)"
    r"(?: heartbeat=(?P<heartbeat>yes|no))?(?: cid=(?P<cid>no|[0-9a-f-]+/[0-9a-f-]+))?",
    re.M,
)
STATS_RE = re.compile(r"^stats: datagrams_sent=(\d+) max_datagram=(\d+)", re.M)
# The heartbeat counters of our stats line: requests we sent (keepalives, PMTU probes)
# and the peer's requests we answered.
HB_STATS_RE = re.compile(
    r"^stats: .*heartbeats_sent=(?P<sent>\d+) probes_sent=(?P<probes>\d+)"
    r" heartbeats_answered=(?P<answered>\d+)", re.M,
)
RTT_RE = re.compile(r"^heartbeat: rtt=(?P<ms>[\d.]+)ms(?: probe=(?P<probe>\d+))?", re.M)
PMTU_RE = re.compile(r"^pmtu: (?P<final>final )?plpmtu=(?P<plpmtu>\d+) inner_mtu=(?P<inner>\d+)",
                     re.M)


@dataclass(frozen=True)
class Cell:
    """One row of the matrix: a suite and an authentication mode."""

    id: str
    iana: str  # our --ciphers value and what our handshake line must show
    openssl: str  # OpenSSL's name (-cipher, "Cipher is", "CIPHER is")
    gnutls_suite: str  # what gnutls-serv -d 4 logs as "Selected cipher suite: ..."
    gnutls_kx: str  # GnuTLS priority key-exchange keyword
    gnutls_cipher: str  # GnuTLS priority cipher keyword, last field of "- Description:"
    auth: str  # "ecdsa" | "rsa" | "psk" | "mutual"

    @property
    def uses_psk(self) -> bool:
        return self.auth == "psk"

    @property
    def gnutls_priority(self) -> str:
        return f"{GNUTLS_BASE_PRIORITY}:-KX-ALL:+{self.gnutls_kx}:-CIPHER-ALL:+{self.gnutls_cipher}"

    def gnutls_description_re(self) -> re.Pattern[str]:
        """gnutls-cli's `- Description: (DTLS1.2-X.509)-(ECDHE-SECP256R1)-(...)-(AES-128-GCM)`."""
        kx = {"ecdsa": r"\(ECDHE-[^)]*\)-\(ECDSA-[^)]*\)", "mutual": r"\(ECDHE-[^)]*\)-\(ECDSA-[^)]*\)",
              "rsa": r"\(ECDHE-[^)]*\)-\(RSA[^)]*\)", "psk": r"\((?:ECDHE-)?PSK[^)]*\)"}[self.auth]
        return re.compile(
            r"^- Description: \(DTLS1\.2[^)]*\)-" + kx + r".*\(" + re.escape(self.gnutls_cipher)
            + r"\)$", re.M,
        )


CELLS: tuple[Cell, ...] = (
    Cell("ecdsa-aes128gcm", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
         "ECDHE-ECDSA-AES128-GCM-SHA256", "GNUTLS_ECDHE_ECDSA_AES_128_GCM_SHA256",
         "ECDHE-ECDSA", "AES-128-GCM", "ecdsa"),
    Cell("ecdsa-aes256gcm", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
         "ECDHE-ECDSA-AES256-GCM-SHA384", "GNUTLS_ECDHE_ECDSA_AES_256_GCM_SHA384",
         "ECDHE-ECDSA", "AES-256-GCM", "ecdsa"),
    Cell("ecdsa-chacha20", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
         "ECDHE-ECDSA-CHACHA20-POLY1305", "GNUTLS_ECDHE_ECDSA_CHACHA20_POLY1305",
         "ECDHE-ECDSA", "CHACHA20-POLY1305", "ecdsa"),
    Cell("rsa-aes128gcm", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
         "ECDHE-RSA-AES128-GCM-SHA256", "GNUTLS_ECDHE_RSA_AES_128_GCM_SHA256",
         "ECDHE-RSA", "AES-128-GCM", "rsa"),
    Cell("psk-aes128gcm", "TLS_PSK_WITH_AES_128_GCM_SHA256",
         "PSK-AES128-GCM-SHA256", "GNUTLS_PSK_AES_128_GCM_SHA256",
         "PSK", "AES-128-GCM", "psk"),
    Cell("ecdhepsk-chacha20", "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
         "ECDHE-PSK-CHACHA20-POLY1305", "GNUTLS_ECDHE_PSK_CHACHA20_POLY1305",
         "ECDHE-PSK", "CHACHA20-POLY1305", "psk"),
    Cell("mutual-ecdsa", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
         "ECDHE-ECDSA-AES128-GCM-SHA256", "GNUTLS_ECDHE_ECDSA_AES_128_GCM_SHA256",
         "ECDHE-ECDSA", "AES-128-GCM", "mutual"),
)
CELL_BY_ID = {cell.id: cell for cell in CELLS}
MTUS = (None, 300)  # None: every implementation's default


def line_buffered(argv: list[str]) -> list[str]:
    """Peers use stdio: without this their stdout reaches the log file only at exit."""
    return ["stdbuf", "-oL", "-eL", *argv]


def unique(tag: str) -> str:
    """A line nobody else could have produced."""
    return f"{tag}-{secrets.token_hex(6)}"


def _server_cred(cell: Cell, pki: Pki) -> tuple[Path, Path]:
    cred = pki.rsa_server if cell.auth == "rsa" else pki.server
    return cred.cert_path, cred.key_path


def _trust(cell: Cell, pki: Pki) -> Path:
    return pki.rsa_ca.cert_path if cell.auth == "rsa" else pki.ca.cert_path


# --- our tools ----------------------------------------------------------------


def ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "dtlsvpn", "dtls", *args]


def our_server(cell: Cell, pki: Pki, mtu: int | None, *extra: str,
               psk_hex: str = PSK_HEX) -> list[str]:
    argv = ["server", "--listen", "127.0.0.1:0", "--once", "--ciphers", cell.iana]
    if cell.uses_psk:
        argv += ["--psk-identity", PSK_IDENTITY, "--psk", psk_hex]
    else:
        cert, key = _server_cred(cell, pki)
        argv += ["--cert", str(cert), "--key", str(key)]
    if cell.auth == "mutual":
        argv += ["--ca", str(pki.ca.cert_path), "--require-client-cert"]
    if mtu is not None:
        argv += ["--mtu", str(mtu)]
    return ours(*argv, *extra)


def our_client(cell: Cell, pki: Pki, port: int, mtu: int | None, *extra: str,
               psk_hex: str = PSK_HEX, ca: Path | None = None) -> list[str]:
    argv = ["client", f"127.0.0.1:{port}", "--ciphers", cell.iana, "--timeout", "8",
            "--linger", "0.3"]
    if cell.uses_psk:
        argv += ["--psk-identity", PSK_IDENTITY, "--psk", psk_hex]
    else:
        argv += ["--ca", str(ca or _trust(cell, pki)), "--server-name", "server.test"]
    if cell.auth == "mutual":
        argv += ["--cert", str(pki.client.cert_path), "--key", str(pki.client.key_path)]
    if mtu is not None:
        argv += ["--mtu", str(mtu)]
    return ours(*argv, *extra)


# --- OpenSSL ------------------------------------------------------------------


def openssl_server(cell: Cell, pki: Pki, mtu: int | None, *, psk_hex: str = PSK_HEX,
                   cert: tuple[Path, Path] | None = None) -> list[str]:
    argv = ["openssl", "s_server", "-dtls1_2", "-accept", "127.0.0.1:0", "-naccept", "1",
            "-cipher", cell.openssl]
    if cell.uses_psk:
        argv += ["-nocert", "-psk", psk_hex, "-psk_identity", PSK_IDENTITY]
    else:
        cert_path, key_path = cert or _server_cred(cell, pki)
        argv += ["-cert", str(cert_path), "-key", str(key_path)]
    if cell.auth == "mutual":
        argv += ["-CAfile", str(pki.ca.cert_path), "-Verify", "1", "-verify_return_error"]
    if mtu is not None:
        argv += ["-mtu", str(mtu + IP_UDP_HEADERS)]
    return line_buffered(argv)


def openssl_client(cell: Cell, pki: Pki, port: int, mtu: int | None, *,
                   with_client_cert: bool = True) -> list[str]:
    argv = ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
            "-cipher", cell.openssl]
    if cell.uses_psk:
        argv += ["-psk", PSK_HEX, "-psk_identity", PSK_IDENTITY]
    else:
        argv += ["-CAfile", str(_trust(cell, pki)), "-verify_return_error"]
    if cell.auth == "mutual" and with_client_cert:
        argv += ["-cert", str(pki.client.cert_path), "-key", str(pki.client.key_path)]
    if mtu is not None:
        argv += ["-mtu", str(mtu + IP_UDP_HEADERS)]
    return line_buffered(argv)


# --- GnuTLS -------------------------------------------------------------------


def gnutls_server(cell: Cell, pki: Pki, mtu: int | None, pskpasswd: Path, *,
                  cert: tuple[Path, Path] | None = None) -> list[str]:
    """`pskpasswd` must hold `identity:hexkey` lines (written by the caller for PSK cells)."""
    argv = ["gnutls-serv", "-u", "-p", str(GNUTLS_PORT), "--echo", "-d", "4",
            "--priority", cell.gnutls_priority]
    if cell.uses_psk:
        argv += ["--pskpasswd", str(pskpasswd)]
    else:
        cert_path, key_path = cert or _server_cred(cell, pki)
        argv += ["--x509certfile", str(cert_path), "--x509keyfile", str(key_path)]
    if cell.auth == "mutual":
        argv += ["--x509cafile", str(pki.ca.cert_path), "--require-client-cert",
                 "--verify-client-cert"]
    if mtu is not None:
        argv += ["--mtu", str(mtu)]
    return line_buffered(argv)


def gnutls_client(cell: Cell, pki: Pki, port: int, mtu: int | None, *,
                  with_client_cert: bool = True) -> list[str]:
    argv = ["gnutls-cli", "-u", "-p", str(port), "--priority", cell.gnutls_priority]
    if cell.uses_psk:
        argv += ["--pskusername", PSK_IDENTITY, "--pskkey", PSK_HEX]
    else:
        argv += ["--x509cafile", str(_trust(cell, pki))]
    if cell.auth == "mutual" and with_client_cert:
        argv += ["--x509certfile", str(pki.client.cert_path),
                 "--x509keyfile", str(pki.client.key_path)]
    if mtu is not None:
        argv += ["--mtu", str(mtu)]
    return line_buffered([*argv, "127.0.0.1"])


# --- libgnutls through ctypes (tests/interop/gnutls_ctypes.py) ------------------


def gnutls_ctypes_client(pki: Pki, port: int, *args: str, host: str = "127.0.0.1") -> list[str]:
    """A libgnutls DTLS client that can ping on demand; run it with env=OUR_ENV."""
    return [sys.executable, "-m", "tests.interop.gnutls_ctypes", host, str(port),
            "--ca", str(pki.ca.cert_path), "--server-name", "server.test", *args]
