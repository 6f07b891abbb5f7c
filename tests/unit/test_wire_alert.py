"""dtlsvpn.wire.alert."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtlsvpn.errors import DecodeError
from dtlsvpn.wire.alert import decode_alert, encode_alert
from dtlsvpn.wire.constants import AlertDescription, AlertLevel


def test_known_answer() -> None:
    assert encode_alert(AlertLevel.fatal, AlertDescription.handshake_failure) == b"\x02\x28"
    assert decode_alert(b"\x01\x00") == (AlertLevel.warning, AlertDescription.close_notify)


@given(st.integers(0, 255), st.integers(0, 255))
def test_round_trip(level: int, desc: int) -> None:
    assert decode_alert(encode_alert(level, desc)) == (level, desc)


@given(st.binary(max_size=8))
def test_any_bytes(data: bytes) -> None:
    try:
        level, desc = decode_alert(data)
    except DecodeError:
        assert len(data) != 2
    else:
        assert encode_alert(level, desc) == data


@pytest.mark.parametrize("data", [b"", b"\x02", b"\x02\x28\x00"])
def test_wrong_length(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_alert(data)
