"""Ticket keys across a fleet (daemon/fleet.py SharedTicketKeys): one writer rotates and
writes the file, readers follow it; a stale reader costs full handshakes, not failures."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from dtlsvpn.config.model import FleetConfig
from dtlsvpn.crypto.tickets import DEFAULT_ROTATE_EVERY, TicketState
from dtlsvpn.daemon.fleet import SharedTicketKeys

WALL = 1_800_000_000.0


class _Timer:
    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.when: float | None = None

    def schedule(self, when: float | None) -> None:
        self.when = when

    def cancel(self) -> None:
        self.when = None


class _Loop:
    def __init__(self) -> None:
        self.timers: list[_Timer] = []

    def timer(self, callback: Any) -> _Timer:
        self.timers.append(_Timer(callback))
        return self.timers[-1]


def _keys(tmp: Path, writer: bool) -> tuple[SharedTicketKeys, _Loop]:
    iface = types.SimpleNamespace(
        ticket_store=tmp / "unused",
        fleet=FleetConfig(server_id=1, cid_mode="plain", ticket_key_file=tmp / "shared.keys",
                          ticket_key_rotation=writer))
    loop = _Loop()
    return SharedTicketKeys(iface, loop), loop  # type: ignore[arg-type]


def _state(wall: float) -> TicketState:
    return TicketState(0xFEFD, 0xC02B, bytes(range(48)), True, b"psk:laptop", int(wall), 3600)


def test_the_writer_rotates_and_the_readers_follow(tmp_path: Path) -> None:
    writer, wloop = _keys(tmp_path, True)
    writer.start(0.0, WALL)  # first key, written at once
    assert (tmp_path / "shared.keys").stat().st_mode & 0o777 == 0o600
    reader, rloop = _keys(tmp_path, False)
    reader.start(0.0, WALL)
    assert reader.ring.keys == writer.ring.keys and len(reader.ring.keys) == 1

    # A ticket from either one opens on the other.
    assert reader.ring.open(writer.ring.seal(_state(WALL), WALL), WALL) is not None
    assert writer.ring.open(reader.ring.seal(_state(WALL), WALL), WALL) is not None

    # The writer rotates on its timer; the reader's timer picks the new file up.
    later = WALL + DEFAULT_ROTATE_EVERY + 1
    wloop.timers[0].callback(5.0, later)
    assert len(writer.ring.keys) == 2
    newest = writer.ring.seal(_state(later), later)
    assert reader.ring.open(newest, later) is None  # stale: a full handshake for this client
    stale_ticket = reader.ring.seal(_state(later), later)  # sealed with the previous key
    assert writer.ring.open(stale_ticket, later) is not None  # ...still good everywhere
    rloop.timers[0].callback(5.0, later)
    assert reader.reloads == 1 and reader.ring.keys == writer.ring.keys
    assert reader.ring.open(newest, later) is not None
    assert rloop.timers[0].when == 10.0  # it keeps looking


def test_a_reader_never_writes_and_survives_a_bad_file(tmp_path: Path) -> None:
    writer, _ = _keys(tmp_path, True)
    writer.maintain(WALL)
    reader, _ = _keys(tmp_path, False)
    before = (tmp_path / "shared.keys").read_bytes()
    reader.maintain(WALL + 10 * DEFAULT_ROTATE_EVERY)
    reader.ring.seal(_state(WALL), WALL)
    assert (tmp_path / "shared.keys").read_bytes() == before
    (tmp_path / "shared.keys").write_text("not a key file\n")
    assert reader.reload() is False and reader.reload_errors == 1
    assert reader.ring.keys == writer.ring.keys  # kept what it had


def test_a_reader_started_before_the_writer_adopts_the_file_later(tmp_path: Path) -> None:
    reader, _ = _keys(tmp_path, False)
    assert reader.ring.keys == ()
    writer, _ = _keys(tmp_path, True)
    writer.maintain(WALL)
    assert reader.reload() is True and reader.ring.keys == writer.ring.keys
