"""Regenerate the captured DTLS 1.2 ClientHello vectors.

Runs a real client (OpenSSL ``s_client`` and GnuTLS ``gnutls-cli``) against a
plain UDP socket on 127.0.0.1 with an OS-assigned port, keeps the first
datagram it sends (the cookie-less ClientHello), kills the client by its PID,
and writes ``openssl_clienthello.json`` / ``gnutls_clienthello.json`` next to
this file with the exact command in ``"how"``.

Usage: ``python tests/vectors/capture_clienthello.py [openssl|gnutls ...]``
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

COMMANDS: dict[str, list[str]] = {
    "openssl": ["timeout", "5", "openssl", "s_client", "-dtls1_2", "-connect", "127.0.0.1:{port}"],
    "gnutls": ["timeout", "5", "gnutls-cli", "-u", "-p", "{port}", "127.0.0.1", "--insecure",
               "--priority", "NORMAL:-VERS-ALL:+VERS-DTLS1.2"],
}
VERSION_COMMANDS: dict[str, list[str]] = {
    "openssl": ["openssl", "version"],
    "gnutls": ["gnutls-cli", "--version"],
}


def capture(tool: str) -> dict[str, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        port = sock.getsockname()[1]
        argv = [a.format(port=port) for a in COMMANDS[tool]]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            data, _ = sock.recvfrom(65535)
        finally:
            proc.kill()  # this PID only
            proc.wait()
    finally:
        sock.close()
    version = subprocess.run(VERSION_COMMANDS[tool], capture_output=True, text=True,
                             timeout=5).stdout.splitlines()[0].strip()
    how = " ".join(COMMANDS[tool]).replace("{port}", "PORT")
    return {
        "how": f"{how}  (PORT: a UDP socket on 127.0.0.1 bound to port 0 that keeps the first "
               "datagram; see tests/vectors/capture_clienthello.py)",
        "tool_version": version,
        "datagram_hex": data.hex(),
    }


def main(tools: list[str]) -> None:
    for tool in tools or list(COMMANDS):
        vector = capture(tool)
        path = HERE / f"{tool}_clienthello.json"
        path.write_text(json.dumps(vector, indent=2) + "\n")
        print(f"{path}: {len(vector['datagram_hex']) // 2} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
