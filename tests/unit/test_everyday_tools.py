"""Man pages (rendered with ``man -l``, matching ``--help`` and the config keys), bash
completion (what the generator makes from the parser), ``make install-data DESTDIR=``
(an edited unit is kept), ``run --log-level`` and timestamps on stderr."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dtlsvpn.cli.completion import bash_completion, commands
from dtlsvpn.cli.main import build_parser
from dtlsvpn.config.model import VOCABULARY
from dtlsvpn.daemon.systemd import setup_logging

REPO = Path(__file__).resolve().parents[2]
MAN8 = REPO / "man" / "dtlsvpn.8"
MAN5 = REPO / "man" / "dtlsvpn.conf.5"


def _render(page: Path) -> str:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db)")
    res = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                         env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": ""},
                         timeout=60)
    assert res.returncode == 0 and "warning" not in res.stderr.lower(), res.stderr
    # man may overstrike for bold when it thinks it writes to a terminal: undo it
    return re.sub(r".\x08", "", res.stdout).replace("\u2010", "-")


def test_dtlsvpn_8_renders_and_matches_help() -> None:
    text = _render(MAN8)
    flat = re.sub(r"-\n\s*", "-", text)
    table = commands(build_parser())
    missing = []
    for command, words in table.items():
        if command and command.split()[-1] not in flat:
            missing.append(command)
        missing += [f"{command}: {w}" for w in words if w.startswith("--") and w != "--help"
                    and w != "--version" and w not in flat]
    print(f"dtlsvpn(8): {len(table)} commands, {len(text.splitlines())} lines")
    assert not missing, missing


def test_dtlsvpn_conf_5_renders_and_names_every_key() -> None:
    text = _render(MAN5)
    missing = [f"[{section}] {key}" for section, keys in VOCABULARY.items() for key in keys
               if not re.search(rf"\b{key}\b", text)]
    assert not missing, missing


def test_completion_file_is_generated_from_the_parser() -> None:
    shipped = (REPO / "completion" / "dtlsvpn.bash").read_text()
    assert shipped == bash_completion(build_parser()), (
        "completion/dtlsvpn.bash is stale: python -m dtlsvpn.cli.completion > "
        "completion/dtlsvpn.bash")


@pytest.mark.parametrize(("words", "expect"), [
    (["dtlsvpn", "st"], "status"),
    (["dtlsvpn", "run", "--l"], "--log-level"),
    (["dtlsvpn", "dtls", "cl"], "client"),
    (["dtlsvpn", "status", "--pro"], "--prometheus"),
])
def test_completion_completes(words: list[str], expect: str) -> None:
    script = (f"source {REPO / 'completion' / 'dtlsvpn.bash'}\n"
              f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
              "_dtlsvpn; echo \"${COMPREPLY[*]}\"\n")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert expect in res.stdout.split(), (res.stdout, res.stderr)


def test_install_data_destdir_keeps_an_edited_unit(tmp_path: Path) -> None:
    dest = tmp_path / "root"

    def install() -> str:
        res = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "install-data",
                              f"DESTDIR={dest}"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    install()
    unit = dest / "etc/systemd/system/dtlsvpn@.service"
    for path in (unit, dest / "usr/local/share/man/man8/dtlsvpn.8",
                 dest / "usr/local/share/man/man5/dtlsvpn.conf.5",
                 dest / "usr/share/bash-completion/completions/dtlsvpn",
                 dest / "usr/share/doc/dtlsvpn/README.md"):
        assert path.is_file(), path
    install()  # unchanged: replaced quietly
    assert not (unit.parent / "dtlsvpn@.service.new").exists()
    unit.write_text(unit.read_text() + "# local change\n")
    out = install()
    assert "was edited: kept" in out and unit.read_text().endswith("# local change\n")
    assert (unit.parent / "dtlsvpn@.service.new").is_file()


def test_run_log_level_option() -> None:
    args = build_parser().parse_args(["run", "office", "--log-level", "DEBUG"])
    assert args.log_level == "debug"


def test_stderr_lines_have_timestamps(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logger = setup_logging("info", name="dtlsvpn-test-stamps")
    logger.handlers[0].stream = __import__("sys").stderr  # type: ignore[attr-defined]
    logger.info("hello")
    line = capsys.readouterr().err.strip()
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} dtlsvpn-test-stamps: INFO: "
                    r"hello$", line), line
    logging.getLogger("dtlsvpn-test-stamps").handlers.clear()
