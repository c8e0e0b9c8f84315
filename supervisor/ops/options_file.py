"""``--config FILE``: every command-line option in a TOML file.

Keys are the long option names, with dashes or underscores
(``memory-mb = 64`` or ``memory_mb = 64``); the project path is ``path``.
Values are checked with the same rules as on the command line; a flag given
on the command line overrides the file. Unknown keys, wrong types and invalid
TOML are errors naming the file (and the line, for TOML syntax).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any


class OptionsFileError(Exception):
    """The file cannot be used; one line naming the file and the problem."""


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public way to list them
        for option in action.option_strings:
            if option.startswith("--"):
                found[option[2:].replace("-", "_")] = action
        if not action.option_strings and action.dest == "path":
            found["path"] = action
    for unsettable in ("config", "help", "version"):
        found.pop(unsettable, None)
    return found


def _convert(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise OptionsFileError(f"{where}: {key} must be true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_one(action, key, item, where) for item in items]
    return _one(action, key, value, where)


def _one(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    if isinstance(value, dict | list) or (isinstance(value, bool) and action.type is not None):
        raise OptionsFileError(f"{where}: {key} must be a single value")
    text = str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise OptionsFileError(f"{where}: {key} = {value!r}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise OptionsFileError(f"{where}: {key} must be one of {choices}")
    return converted


def read_options(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's options as argparse defaults (``dest -> value``).

    Raises:
        OptionsFileError: unreadable file, invalid TOML, unknown key or bad value.
    """
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise OptionsFileError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise OptionsFileError(f"{path}: the configuration file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionsFileError(f"{path}: invalid TOML: {exc}") from None
    actions = _actions_by_key(parser)
    defaults: dict[str, Any] = {}
    for raw_key, value in document.items():
        key = raw_key.replace("-", "_")
        action = actions.get(key)
        if action is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in actions))
            raise OptionsFileError(f"{path}: unknown option {raw_key!r} (known: {known})")
        defaults[action.dest] = _convert(action, raw_key, value, str(path))
    return defaults
