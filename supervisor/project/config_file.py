"""Reading a configuration file served instead of a folder (a WAGI
``modules.toml`` or a serverless-wasm config), with errors that name the file
and the line, like the per-worker TOML's (``supervisor/project/worker_config.py``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any


class ConfigFileError(Exception):
    """The configuration cannot be served; one line naming file, line and problem."""


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed document and its text.

    Raises:
        ConfigFileError: unreadable, not UTF-8, or invalid TOML (with its line).
    """
    try:
        text = path.read_text()
        return tomllib.loads(text), text
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        line = f":{found.group(1)}" if found else ""
        raise ConfigFileError(f"{path}{line}: invalid TOML: {exc}") from None


def config_kind(document: dict[str, Any]) -> str | None:
    """ "wagi" for ``[[module]]`` tables, "serverless" for ``[[applications]]``."""
    if "module" in document:
        return "wagi"
    if "applications" in document:
        return "serverless"
    return None


class Entries:
    """Where the entries of one array of tables (``[[module]]``) and their keys
    are in the file, so an error can name the line of the entry it is about."""

    def __init__(self, path: Path, text: str, table: str) -> None:
        self.path = path
        self._lines = text.splitlines()
        header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        self._starts = [number for number, line in enumerate(self._lines, 1) if header.match(line)]

    def line(self, index: int, key: str | None = None) -> int | None:
        if index >= len(self._starts):
            return None
        start = self._starts[index]
        if key is None:
            return start
        end = self._starts[index + 1] if index + 1 < len(self._starts) else len(self._lines) + 1
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(start, end):
            if pattern.match(self._lines[number - 1]):
                return number
        return start

    def where(self, index: int, key: str | None = None) -> str:
        line = self.line(index, key)
        return f"{self.path}:{line}" if line else str(self.path)

    def fail(self, index: int, key: str | None, problem: str) -> ConfigFileError:
        return ConfigFileError(f"{self.where(index, key)}: {problem}")

    def string(self, entry: dict[str, Any], index: int, key: str, *, required: bool = True) -> str | None:
        """Raises:
        ConfigFileError: missing when required, or not a string."""
        value = entry.get(key)
        if value is None:
            if required:
                raise self.fail(index, None, f"this entry has no {key}")
            return None
        if not isinstance(value, str):
            raise self.fail(index, key, f"{key} must be a string")
        return value

    def strings(self, entry: dict[str, Any], index: int, key: str) -> list[str]:
        """Raises:
        ConfigFileError: not a list of strings."""
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(index, key, f"{key} must be a list of strings")
        return value

    def table(self, entry: dict[str, Any], index: int, key: str) -> dict[str, str]:
        """Raises:
        ConfigFileError: not a table of strings."""
        value = entry.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.fail(index, key, f"{key} must be a table of strings")
        return value

    def unknown_keys(self, entry: dict[str, Any], index: int, known: set[str]) -> list[str]:
        return [
            f"{self.where(index, key)}: unknown key {key} (ignored)" for key in sorted(set(entry) - known)
        ]


def module_path(entries: Entries, index: int, key: str, reference: str, base: Path) -> Path:
    """The module file ``reference`` names, relative to the config's folder.

    Raises:
        ConfigFileError: a remote reference (bindle:, oci:, http:), or no file there.
    """
    if reference.startswith("file://"):
        reference = reference.removeprefix("file://")
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", reference):
        scheme = reference.split(":", 1)[0]
        raise entries.fail(
            index, key, f"{key} {reference!r}: {scheme}: references are not supported, use a file"
        )
    path = (base / reference).resolve()
    if not path.is_file():
        raise entries.fail(index, key, f"the module {reference!r} does not exist (looked for {path})")
    return path
