"""Line-tracking parser for ``/etc/dtlsvpn/NAME.conf``.

Purpose: turn the text of a configuration file into sections of
``Key = value`` entries, each carrying the line it came from, so that every
later error can name the file, the line and the key.  This module knows the
*shape* of the format; :mod:`dtlsvpn.config.loader` gives it the vocabulary
(which sections and keys exist) and gives the values their meaning.

The format (WireGuard-like, see ``etc/dtlsvpn/*.conf``):

- ``[Interface]`` exactly once, ``[Peer]`` any number of times; section names
  and keys are case-insensitive and reported in their canonical CamelCase.
- ``Key = value`` lines; whitespace around the key and the value is ignored.
- ``#`` starts a comment at the beginning of a line, or after whitespace
  inside a line (``Key = value  # note``).
- Multi-valued keys may be repeated or comma-separated; this module only
  keeps the order, :func:`split_list` splits.

Invariants: the parser never guesses.  An unknown section or key, a line
without ``=``, an empty value or a key outside any section is a
:class:`~dtlsvpn.errors.ConfigError` naming the line, with a "did you mean"
suggestion (difflib) where one is close.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from dtlsvpn.errors import ConfigError

_SECTION_RE = re.compile(r"^\[\s*([^\]]*?)\s*\]$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_INLINE_COMMENT_RE = re.compile(r"\s#")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``Key = value`` line: canonical key, the value text, its line number."""

    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Section:
    """One ``[Name]`` block: canonical name, header line, entries in file order."""

    name: str
    line: int
    entries: tuple[Entry, ...]


Vocabulary = Mapping[str, Collection[str]]
"""Canonical section name → canonical key names allowed in it."""


def suggest(word: str, choices: Collection[str]) -> str | None:
    """The choice closest to ``word`` (case-insensitive), if any is close enough."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def parse(
    text: str,
    path: str,
    vocabulary: Vocabulary,
    hints: Mapping[str, str] | None = None,
    errors: list[ConfigError] | None = None,
) -> list[Section]:
    """Split ``text`` into sections; raise ConfigError on any malformed line.

    ``hints`` maps lower-case foreign keys (WireGuard's ``ListenPort`` …) to
    an explanation shown instead of a plain "unknown key".  With ``errors`` (check-config
    reports every mistake), a malformed entry line is appended there and skipped.
    """
    sections_by_lower = {name.lower(): name for name in vocabulary}
    keys_by_section = {
        name: {key.lower(): key for key in keys} for name, keys in vocabulary.items()
    }
    hints = hints or {}
    out: list[Section] = []
    current: tuple[str, int] | None = None
    entries: list[Entry] = []

    def flush() -> None:
        if current is not None:
            out.append(Section(current[0], current[1], tuple(entries)))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        header = _SECTION_RE.match(line)
        if header is not None:
            flush()
            current = (_section_name(header.group(1), path, number, sections_by_lower), number)
            entries = []
            continue
        if line.startswith("["):
            raise ConfigError(path, number, None,
                              f"expected a section header like [Peer], got {line!r}")
        section = current[0] if current is not None else None
        try:
            entries.append(_entry(line, path, number, section, keys_by_section, hints))
        except ConfigError as exc:
            if errors is None:
                raise
            errors.append(exc)
    flush()
    return out


def _strip_comment(raw: str) -> str:
    line = raw.strip()
    if line.startswith("#"):
        return ""
    m = _INLINE_COMMENT_RE.search(line)
    return line if m is None else line[: m.start()].rstrip()


def _section_name(name: str, path: str, number: int, sections_by_lower: Mapping[str, str]) -> str:
    canonical = sections_by_lower.get(name.lower())
    if canonical is None:
        sections = list(sections_by_lower.values())
        expected = " or ".join(f"[{s}]" for s in sections)
        close = suggest(name, sections)
        hint = f" (did you mean [{close}]?)" if close else ""
        raise ConfigError(path, number, f"[{name}]", f"unknown section; expected {expected}{hint}")
    return canonical


def _entry(
    line: str,
    path: str,
    number: int,
    section: str | None,
    keys_by_section: Mapping[str, Mapping[str, str]],
    hints: Mapping[str, str],
) -> Entry:
    key, sep, value = line.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ConfigError(path, number, None, f"expected 'Key = value', got {line!r}")
    if not _KEY_RE.match(key):
        raise ConfigError(path, number, key, "expected a key name made of letters")
    if section is None:
        first = " or ".join(f"[{s}]" for s in keys_by_section)
        raise ConfigError(path, number, key, f"key outside any section; start with {first}")
    canonical = keys_by_section[section].get(key.lower())
    if canonical is None:
        raise ConfigError(path, number, key, _unknown_key(key, section, keys_by_section, hints))
    if not value:
        raise ConfigError(path, number, canonical, "expected a value after '='")
    return Entry(canonical, value, number)


def _unknown_key(
    key: str,
    section: str,
    keys_by_section: Mapping[str, Mapping[str, str]],
    hints: Mapping[str, str],
) -> str:
    message = f"unknown key in [{section}]"
    for other, keys in keys_by_section.items():
        if other != section and key.lower() in keys:
            return f"{message}; {keys[key.lower()]} belongs in [{other}]"
    hint = hints.get(key.lower())
    if hint is not None:
        return f"{message}; {hint}"
    close = suggest(key, list(keys_by_section[section].values()))
    return f"{message} (did you mean {close}?)" if close else message


def split_list(value: str) -> list[str]:
    """The items of a comma-separated value, stripped; ValueError on an empty item."""
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ValueError(f"expected a comma-separated list without empty items, got {value!r}")
    return items
