"""One section's entries by key, with conversion and error reporting that names file,
line and key (used by ``loader.py`` and the key blocks ``fleet_keys.py``, ``roaming_keys.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dtlsvpn.config.model import (
    MULTI_VALUED,
)
from dtlsvpn.config.parser import Entry, Section, split_list
from dtlsvpn.errors import ConfigError

T = TypeVar("T")


class Fields:
    """The entries of one section by key, with conversion and error reporting."""

    def __init__(self, path: str, section: Section,
                 errors: list[ConfigError] | None = None) -> None:
        self.path = path
        self.section = section
        self.errors = errors  # collect bad values here instead of raising (check-config)
        self.by_key: dict[str, list[Entry]] = {}
        for entry in section.entries:
            self.by_key.setdefault(entry.key, []).append(entry)
        for key, entries in self.by_key.items():
            if key not in MULTI_VALUED and len(entries) > 1:
                raise ConfigError(path, entries[1].line, key,
                                  f"set twice (first at line {entries[0].line}); "
                                  f"expected one value")

    def has(self, key: str) -> bool:
        return key in self.by_key

    def line(self, key: str) -> int:
        """The line of ``key``, or of the section header when it is absent."""
        entries = self.by_key.get(key)
        return entries[0].line if entries else self.section.line

    def error(self, key: str | None, message: str, line: int | None = None) -> ConfigError:
        where = line if line is not None else (self.line(key) if key else self.section.line)
        return ConfigError(self.path, where, key, message)

    def reported(self, key: str) -> bool:
        """A bad value of ``key`` was collected already: check-config goes on past it (a
        placeholder stands in; that Config is never used)."""
        return self.errors is not None and any(
            e.key == key and e.path == self.path and e.line == self.line(key)
            for e in self.errors)

    def missing(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.path, self.section.line, key, f"missing; expected {expected}")

    def get(self, key: str, convert: Callable[[str], T], default: T) -> T:
        entries = self.by_key.get(key)
        if not entries:
            return default
        try:
            return convert(entries[0].value)
        except ValueError as exc:
            self._raise(ConfigError(self.path, entries[0].line, key, str(exc)))
            return default

    def _raise(self, exc: ConfigError) -> None:
        if self.errors is None:
            raise exc from None
        self.errors.append(exc)

    def many(self, key: str, convert: Callable[[str], T]) -> list[tuple[T, int]]:
        out: list[tuple[T, int]] = []
        for entry in self.by_key.get(key, []):
            try:
                for item in split_list(entry.value):
                    out.append((convert(item), entry.line))
            except ValueError as exc:
                self._raise(ConfigError(self.path, entry.line, key, str(exc)))
        return out

    def load(self, key: str, path: Path | None, loader: Callable[[Path], T]) -> T | None:
        if path is None:
            return None
        try:
            return loader(path)
        except ValueError as exc:
            self._raise(ConfigError(self.path, self.line(key), key, str(exc)))
            return None
