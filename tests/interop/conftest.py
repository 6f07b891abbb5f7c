"""Fixtures for the interop matrix (tests/conftest.py supplies `pki`, `procs` and `root`).

Peer programs that are missing make a test skip with the reason; the suite-wide conftest
turns such skips into failures under CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.peers import PSK_HEX, PSK_IDENTITY
from tests.util import PrivateNetns, ProcessGroup, require_tools


@pytest.fixture
def openssl() -> None:
    require_tools("openssl")


@pytest.fixture
def gnutls() -> None:
    require_tools("gnutls-serv", "gnutls-cli")


@pytest.fixture
def netns(root: None, procs: ProcessGroup) -> Iterator[PrivateNetns]:
    """A private namespace with only loopback, for gnutls-serv (which binds every address)."""
    require_tools("unshare", "nsenter", "ip")
    yield procs.private_netns(timeout=120)


@pytest.fixture
def pskpasswd(tmp_path: Path) -> Path:
    """A gnutls-serv --pskpasswd file with our identity and key."""
    path = tmp_path / "psk.passwd"
    path.write_text(f"{PSK_IDENTITY}:{PSK_HEX}\n")
    return path
