"""dtlsvpn.crypto.keylog: the NSS key log line format."""

from __future__ import annotations

import re

import pytest

from dtlsvpn.crypto.keylog import keylog_line
from dtlsvpn.errors import UsageError


def test_nss_format() -> None:
    line = keylog_line(bytes(range(32)), bytes(range(100, 148)))
    assert re.fullmatch(r"CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}", line)
    assert line.split()[1] == bytes(range(32)).hex()
    assert line.split()[2] == bytes(range(100, 148)).hex()
    assert "\n" not in line


def test_wrong_lengths() -> None:
    with pytest.raises(UsageError):
        keylog_line(bytes(31), bytes(48))
    with pytest.raises(UsageError):
        keylog_line(bytes(32), bytes(47))
