"""WAGI's ``modules.toml`` (``[[module]]`` tables) and its ``--env`` /
``--env-file`` values, checked into typed entries.

Differences from WAGI 0.8.1 (see the README): paths (``module``, volume
folders) are relative to the file, not the current folder; a volume folder
that does not exist is a startup error, not a request without that mount;
remote module references (``bindle:``, ``oci:``) are refused; unknown keys are
warnings, not silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervisor.project.config_file import ConfigFileError, Entries, module_path

ALLOW_ALL = "insecure:allow-all"
_KEYS = {"route", "module", "entrypoint", "volumes", "allowed_hosts", "http_max_concurrency", "argv"}


@dataclasses.dataclass(frozen=True, slots=True)
class WagiModule:
    index: int  # position in the file, from 0
    where: str  # "file:line" of its [[module]] header, for messages
    route: str  # "/exact" or "/prefix/..."
    module: Path
    shown: str  # the module as written, for the worker's name
    entrypoint: str
    volumes: tuple[tuple[str, Path], ...]  # (guest path, host folder)
    allowed_hosts: tuple[str, ...]  # host names, or ALLOW_ALL
    max_outbound: int  # http_max_concurrency; 0 = no limit
    argv: str


def load_wagi(path: Path, text: str, document: dict[str, Any]) -> tuple[list[WagiModule], list[str]]:
    """The modules of a ``modules.toml``, in file order, and warnings.

    Raises:
        ConfigFileError: a missing or mistyped key, a route not starting with
            ``/``, a module or volume folder that does not exist.
    """
    entries = Entries(path, text, "module")
    raw = document.get("module")
    if not isinstance(raw, list) or not raw or not all(isinstance(entry, dict) for entry in raw):
        raise ConfigFileError(f"{path}: [[module]] must be a non-empty array of tables")
    warnings = [
        f"{path}: unknown top-level key {key} (ignored)" for key in sorted(set(document) - {"module"})
    ]
    modules = []
    base = path.parent
    for index, entry in enumerate(raw):
        warnings += entries.unknown_keys(entry, index, _KEYS)
        route = entries.string(entry, index, "route") or ""
        if not route.startswith("/"):
            raise entries.fail(index, "route", f"route {route!r} must start with /")
        reference = entries.string(entry, index, "module") or ""
        entrypoint = entries.string(entry, index, "entrypoint", required=False) or "_start"
        volumes = []
        for guest, host in entries.table(entry, index, "volumes").items():
            folder = (base / host).resolve()
            if not folder.is_dir():
                raise entries.fail(
                    index, "volumes", f"the volume folder {host!r} does not exist (looked for {folder})"
                )
            volumes.append((guest, folder))
        limit = entry.get("http_max_concurrency", 0)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise entries.fail(index, "http_max_concurrency", "http_max_concurrency must be a whole number")
        modules.append(
            WagiModule(
                index=index,
                where=entries.where(index),
                route=route,
                module=module_path(entries, index, "module", reference, base),
                shown=reference,
                entrypoint=entrypoint,
                volumes=tuple(volumes),
                allowed_hosts=_hosts(entries, index, entries.strings(entry, index, "allowed_hosts")),
                max_outbound=limit,
                argv=entries.string(entry, index, "argv", required=False) or "",
            )
        )
    return modules, warnings


def _hosts(entries: Entries, index: int, listed: list[str]) -> tuple[str, ...]:
    # WAGI compares only the host of each listed URL; a bare name counts too.
    hosts = []
    for item in listed:
        if item == ALLOW_ALL:
            hosts.append(ALLOW_ALL)
            continue
        try:
            host = urlsplit(item).hostname or urlsplit("//" + item).hostname
        except ValueError:
            host = None
        if not host:
            raise entries.fail(
                index, "allowed_hosts", f"allowed_hosts entry {item!r} is not a URL or host name"
            )
        hosts.append(host)
    return tuple(hosts)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_env(pairs: Sequence[str], files: Sequence[Path]) -> dict[str, str]:
    """WAGI's guest environment: ``--env-file`` files in order, then ``--env``
    pairs over them (NAME=VALUE, split at the first ``=``, one pair of matching
    quotes removed from the value).

    Raises:
        ConfigFileError: a pair or file line without a name, an unreadable file.
    """
    env: dict[str, str] = {}
    for file in files:
        try:
            lines = file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigFileError(f"{file}: cannot read the env file: {exc}") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, equals, value = line.removeprefix("export ").partition("=")
            name = name.strip()
            if not equals or not name or any(c.isspace() for c in name):
                raise ConfigFileError(f"{file}:{number}: expected NAME=VALUE")
            env[name] = _unquote(value.strip())
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ConfigFileError(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = _unquote(value)
    return env
