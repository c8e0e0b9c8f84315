"""serverless-wasm's configuration (``[[applications]]`` tables), checked into
typed entries.

Differences from serverless-wasm (see the README): ``file_path`` is relative
to the file; ``listen_address`` is ignored (``--host``/``--port`` decide);
two applications on the same method and path are an error, not "the last one
wins"; ``tcp_allowed`` (ours) lists the ``host:port`` targets an application
may connect to, none by default.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from supervisor.project.config_file import ConfigFileError, Entries, module_path

_KEYS = {"file_path", "method", "url_path", "function", "env", "tcp_allowed"}
_TARGET = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):(\d{1,5})$")


@dataclasses.dataclass(frozen=True, slots=True)
class Application:
    index: int
    where: str  # "file:line" of its [[applications]] header
    module: Path
    shown: str  # file_path as written
    method: str
    url_path: str
    function: str
    env: dict[str, str]  # read by db_get
    tcp_allowed: tuple[str, ...]


def load_serverless(path: Path, text: str, document: dict[str, Any]) -> tuple[list[Application], list[str]]:
    """The applications of a serverless-wasm config, in file order, and warnings.

    Raises:
        ConfigFileError: a missing or mistyped key, a path not starting with
            ``/``, a module that does not exist, a duplicate route, or a
            ``tcp_allowed`` entry that is not ``host:port``.
    """
    entries = Entries(path, text, "applications")
    raw = document.get("applications")
    if not isinstance(raw, list) or not raw or not all(isinstance(entry, dict) for entry in raw):
        raise ConfigFileError(f"{path}: [[applications]] must be a non-empty array of tables")
    warnings = [
        f"{path}: unknown top-level key {key} (ignored)"
        for key in sorted(set(document) - {"applications", "listen_address"})
    ]
    if "listen_address" in document:
        warnings.append(f"{path}: listen_address is ignored; --host and --port decide where to listen")
    applications: list[Application] = []
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(raw):
        warnings += entries.unknown_keys(entry, index, _KEYS)
        reference = entries.string(entry, index, "file_path") or ""
        method = entries.string(entry, index, "method") or ""
        url_path = entries.string(entry, index, "url_path") or ""
        function = entries.string(entry, index, "function") or ""
        if not url_path.startswith("/"):
            raise entries.fail(index, "url_path", f"url_path {url_path!r} must start with /")
        if (method, url_path) in seen:
            first = entries.where(seen[(method, url_path)])
            raise entries.fail(
                index, "url_path", f"{method} {url_path} is already served by the entry at {first}"
            )
        seen[(method, url_path)] = index
        targets = entries.strings(entry, index, "tcp_allowed")
        for target in targets:
            found = _TARGET.match(target)
            if found is None or not 0 < int(found.group(2)) < 65536:
                raise entries.fail(index, "tcp_allowed", f"tcp_allowed entry {target!r} is not host:port")
        applications.append(
            Application(
                index=index,
                where=entries.where(index),
                module=module_path(entries, index, "file_path", reference, path.parent),
                shown=reference,
                method=method,
                url_path=url_path,
                function=function,
                env=entries.table(entry, index, "env"),
                tcp_allowed=tuple(targets),
            )
        )
    return applications, warnings
