"""dtlsvpn.daemon.ticketkeys: the ticket key file (mode, atomic replace, reload on change)."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from dtlsvpn.crypto.tickets import TicketKey, TicketKeyRing, TicketState
from dtlsvpn.daemon.ticketkeys import TicketKeyFile
from dtlsvpn.errors import ConfigError

T0 = 1_700_000_000  # a wall-clock second


def seeded(seed: int = 1) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def state(issued_at: int = T0, identity: bytes = b"peer") -> TicketState:
    return TicketState(0xFEFD, 0xC02B, bytes(range(48)), True, identity, issued_at, 3600)


def saved_ring(path: Path, seed: int = 1, **kw: int) -> TicketKeyRing:
    ring = TicketKeyRing(seeded(seed), **kw)
    ring.maintain(T0)
    TicketKeyFile(path).save(ring)
    return ring


def test_two_rings_from_one_file_open_each_others_tickets(tmp_path: Path) -> None:
    path = tmp_path / "ticket.keys"
    writer = saved_ring(path)
    a = TicketKeyFile(path).load(seeded(2), rotate_every=0)
    b = TicketKeyFile(path).load(seeded(3), rotate_every=0)
    assert a.keys == b.keys == writer.keys
    s = state(identity=b"psk:laptop")
    assert b.open(a.seal(s, T0), T0) == s
    assert a.open(b.seal(s, T0), T0) == s
    assert a.open(writer.seal(s, T0), T0) == s
    assert writer.open(b.seal(s, T0), T0) == s


def test_reload_if_changed_follows_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "ticket.keys"
    writer_file, reader_file = TicketKeyFile(path), TicketKeyFile(path)
    writer = TicketKeyRing(seeded(1), rotate_every=100)
    writer.maintain(T0)
    writer_file.save(writer)
    reader = reader_file.load(seeded(2), rotate_every=0)
    assert reader_file.reload_if_changed(reader) is False
    assert writer.maintain(T0 + 101) is True
    writer_file.save(writer)
    assert writer_file.reload_if_changed(writer) is False  # its own save is no change
    assert reader_file.reload_if_changed(reader) is True
    assert reader.keys == writer.keys
    s = state(issued_at=T0 + 101)
    assert reader.open(writer.seal(s, T0 + 101), T0 + 101) == s
    assert reader_file.reload_if_changed(reader) is False


def test_a_new_file_object_reloads_only_other_keys(tmp_path: Path) -> None:
    """A TicketKeyFile that has not loaded or saved compares the file's keys with the ring's."""
    path = tmp_path / "ticket.keys"
    ring = saved_ring(path)
    assert TicketKeyFile(path).reload_if_changed(ring) is False
    other = TicketKeyRing(seeded(5))
    assert TicketKeyFile(path).reload_if_changed(other) is True
    assert other.keys == ring.keys


def test_file_format(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    name, secret = bytes(range(16)), bytes(range(32, 64))
    path.write_text(
        "# a comment\n\n"
        f"{name.hex()} 1700000000 {secret.hex()}\n"
        f"  {'ab' * 16}\t1700003600 {'CD' * 32}  \n"
    )
    path.chmod(0o600)
    ring = TicketKeyFile(path).load(seeded())
    assert ring.keys == (
        TicketKey(name, secret, 1_700_000_000),
        TicketKey(b"\xab" * 16, b"\xcd" * 32, 1_700_003_600),
    )
    TicketKeyFile(path).save(ring)
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == [f"{name.hex()} 1700000000 {secret.hex()}",
                     f"{'ab' * 16} 1700003600 {'cd' * 32}"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("00" * 16 + " 1 " + "00" * 31 + "\n", 1,
         "expected '<32 hex key name> <created> <64 hex secret>'"),  # short secret
        ("# c\n" + "00" * 15 + " 1 " + "00" * 32 + "\n", 2,
         "expected '<32 hex key name> <created> <64 hex secret>'"),  # short name
        ("00" * 16 + " x " + "00" * 32 + "\n", 1,
         "expected '<32 hex key name> <created> <64 hex secret>'"),  # bad time
        ("00" * 16 + " 1 " + "00" * 32 + " extra\n", 1,
         "expected '<32 hex key name> <created> <64 hex secret>'"),
        ("00" * 16 + " 99999999999999999999 " + "00" * 32 + "\n", 1,
         "creation time out of range"),
        (("00" * 16 + " 1 " + "11" * 32 + "\n") * 2, 2, "duplicate key name"),
        ("# only a comment\n", None, "ticket key file holds no keys"),
        ("", None, "ticket key file holds no keys"),
        ("\xe9\n", None, "ticket key file is not ASCII text"),
    ],
)
def test_bad_key_files(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        TicketKeyFile(path).load(seeded())
    assert exc.value.path == str(path)
    assert exc.value.line == line
    where = str(path) if line is None else f"{path}:{line}"
    assert str(exc.value) == f"{where}: {message}"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o666])
def test_load_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys"
    ring = saved_ring(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="group or others") as exc:
        TicketKeyFile(path).load(seeded())
    assert exc.value.path == str(path) and exc.value.line is None
    assert str(exc.value) == (f"{path}: ticket key file has mode {mode:04o}: it must not be "
                              "readable or writable by group or others (chmod 600)")
    # reload_if_changed checks the mode too, and keeps the keys it had.
    reader = TicketKeyRing(seeded(), keys=ring.keys)
    with pytest.raises(ConfigError):
        TicketKeyFile(path).reload_if_changed(reader)
    assert reader.keys == ring.keys
    path.chmod(0o400)  # read-only for the owner is fine
    assert TicketKeyFile(path).load(seeded()).keys == ring.keys


def test_failed_reload_keeps_keys_and_retries(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    writer = saved_ring(path, rotate_every=10)
    reader_file = TicketKeyFile(path)
    reader = reader_file.load(seeded(2), rotate_every=0)
    path.write_text("garbage\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="expected '<32 hex key name>"):
        reader_file.reload_if_changed(reader)
    assert reader.keys == writer.keys
    writer.maintain(T0 + 11)
    TicketKeyFile(path).save(writer)
    assert reader_file.reload_if_changed(reader) is True
    assert reader.keys == writer.keys


def test_load_missing_file_and_symlink(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open ticket key file"):
        TicketKeyFile(tmp_path / "absent").load(seeded())
    with pytest.raises(ConfigError, match="cannot stat ticket key file"):
        TicketKeyFile(tmp_path / "absent").reload_if_changed(TicketKeyRing(seeded()))
    saved_ring(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError):
        TicketKeyFile(tmp_path / "link").load(seeded())


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_load_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ticket.keys"
    if kind == "directory":
        path.mkdir(mode=0o700)
    else:
        os.mkfifo(path, 0o600)  # must not block the open
    with pytest.raises(ConfigError) as exc:
        TicketKeyFile(path).load(seeded())
    assert str(exc.value) == f"{path}: ticket key file is not a regular file"


def test_save_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "ticket.keys"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        ring = TicketKeyRing(seeded(), rotate_every=10)
        ring.maintain(T0)
        TicketKeyFile(path).save(ring)
        first_inode = path.stat().st_ino
        ring.maintain(T0 + 11)
        TicketKeyFile(str(path)).save(ring)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != first_inode  # replaced by rename, not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ticket.keys"]
    assert TicketKeyFile(path).load(seeded()).keys == ring.keys


def test_failed_save_leaves_no_temp_file(tmp_path: Path) -> None:
    ring = TicketKeyRing(seeded())
    ring.maintain(T0)
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    with pytest.raises(OSError):
        TicketKeyFile(target).save(ring)  # rename onto a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]
