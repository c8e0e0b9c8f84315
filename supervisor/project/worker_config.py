"""Per-worker TOML (``counter.js`` <-> ``counter.toml``), wws's schema plus our ``[limits]``.

Unlike wws, a broken file is not silently ignored: loading fails with the
file, the line and the problem. Unknown keys are reported as warnings (a typo
should not go unnoticed, and a newer wws key should not stop the server).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from supervisor.config import Limits

_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
# Limits travel in every Invoke frame as signed 64-bit integers (msgpack).
_WIRE_MAX = 2**63 - 1


class WorkerConfigError(Exception):
    """The worker's TOML cannot be used; the message names file and line."""


@dataclasses.dataclass(frozen=True, slots=True)
class Folder:
    source: Path  # resolved host folder
    guest: str
    writable: bool


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequests:
    allowed_hosts: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    allow_http: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    name: str = "default"
    version: str = ""
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    kv_namespace: str | None = None
    folders: tuple[Folder, ...] = ()
    http_requests: HttpRequests = dataclasses.field(default_factory=HttpRequests)
    limits: Limits = dataclasses.field(default_factory=Limits)
    max_concurrency: int | None = None
    protocol: str = "wws"  # or "wagi" (supervisor/project/contract_project.py)
    warnings: tuple[str, ...] = ()


def config_path_for(worker: Path) -> Path:
    return worker.with_suffix(".toml")


class _Reader:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.warnings: list[str] = []

    def line_of(self, key: str) -> int | None:
        """The line of ``key = ...`` (its last dotted part), or of the
        ``[table]`` header named by the whole dotted key."""
        last = re.escape(key.split(".")[-1])
        patterns = (rf'^\s*"?{last}"?\s*=', rf"^\s*\[+\s*{re.escape(key)}\s*\]+")
        for pattern in patterns:
            match = re.search(pattern, self.text, re.M)
            if match:
                return self.text.count("\n", 0, match.start()) + 1
        return None

    def fail(self, key: str, problem: str) -> WorkerConfigError:
        line = self.line_of(key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return WorkerConfigError(f"{where}: {problem}")

    def table(self, parent: dict[str, Any], key: str, dotted: str, known: set[str]) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"[{dotted}] must be a table")
        for unknown in sorted(set(value) - known):
            line = self.line_of(unknown)
            self.warnings.append(
                f"{self.path}:{line or '?'}: unknown key {dotted + '.' if dotted else ''}{unknown} (ignored)"
            )
        return value

    def string(self, table: dict[str, Any], key: str, dotted: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, f"{dotted} must be a string")
        return value

    def positive(self, table: dict[str, Any], key: str, dotted: str, maximum: int = _WIRE_MAX) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.fail(key, f"{dotted} must be a whole number greater than 0")
        if value > maximum:
            raise self.fail(key, f"{dotted} must be at most {maximum}")
        return value

    def strings(self, table: dict[str, Any], key: str, dotted: str) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"{dotted} must be a list of strings")
        return tuple(value)


def load_worker_config(worker: Path, project: Path, defaults: Limits) -> WorkerConfig:
    """The configuration of ``worker``: its TOML if there is one, else defaults.

    Raises:
        WorkerConfigError: unreadable or invalid TOML, a value of the wrong
            type, or a mounted folder outside the project.
    """
    path = config_path_for(worker)
    if not path.exists():
        return WorkerConfig(limits=defaults)
    try:
        text = path.read_text()
        document = tomllib.loads(text)
    except OSError as exc:
        raise WorkerConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WorkerConfigError(f"{path}: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.14 adds lineno; before that the line is only in the message.
        found = re.search(r"at line (\d+)", str(exc))
        line = f":{found.group(1)}" if found else ""
        raise WorkerConfigError(f"{path}{line}: invalid TOML: {exc}") from None
    reader = _Reader(path, text)
    top = reader.table(
        {"": document},
        "",
        "",
        {"name", "version", "vars", "data", "folders", "features", "limits", "protocol"},
    )
    name = reader.string(top, "name", "name", "default") or "default"
    # Ours: "wagi" runs the module as a WAGI (CGI) module on its file route.
    protocol = reader.string(top, "protocol", "protocol", "wws") or "wws"
    if protocol not in ("wws", "wagi"):
        raise reader.fail("protocol", f'protocol must be "wws" or "wagi", not {protocol!r}')
    version = reader.string(top, "version", "version", "") or ""
    variables = _variables(
        reader,
        reader.table(
            top, "vars", "vars", set(top.get("vars", {})) if isinstance(top.get("vars"), dict) else set()
        ),
    )
    data = reader.table(top, "data", "data", {"kv"})
    kv = reader.table(data, "kv", "data.kv", {"namespace"})
    namespace = reader.string(kv, "namespace", "data.kv.namespace")
    if "kv" in data and not namespace:
        raise reader.fail("data.kv", "[data.kv] needs a namespace")
    folders = _folders(reader, top.get("folders", []), worker.parent, project)
    features = reader.table(top, "features", "features", {"http_requests", "wasi_nn"})
    http = reader.table(
        features,
        "http_requests",
        "features.http_requests",
        {"allowed_hosts", "allowed_methods", "allow_http"},
    )
    methods = reader.strings(http, "allowed_methods", "features.http_requests.allowed_methods")
    for method in methods or ():
        if method not in _HTTP_METHODS:
            raise reader.fail("allowed_methods", f"unknown HTTP method {method!r} in allowed_methods")
    allow_http = http.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise reader.fail("allow_http", "features.http_requests.allow_http must be true or false")
    limits_table = reader.table(
        top, "limits", "limits", {"fuel", "memory_mb", "timeout_ms", "max_concurrency"}
    )
    limits = Limits(
        fuel=reader.positive(limits_table, "fuel", "limits.fuel") or defaults.fuel,
        memory_mb=reader.positive(limits_table, "memory_mb", "limits.memory_mb", _WIRE_MAX >> 20)
        or defaults.memory_mb,
        timeout_ms=reader.positive(limits_table, "timeout_ms", "limits.timeout_ms") or defaults.timeout_ms,
    )
    return WorkerConfig(
        name=name,
        protocol=protocol,
        version=version,
        variables=variables,
        kv_namespace=namespace,
        folders=folders,
        http_requests=HttpRequests(
            allowed_hosts=reader.strings(http, "allowed_hosts", "features.http_requests.allowed_hosts") or (),
            allowed_methods=methods if methods is not None else HttpRequests().allowed_methods,
            allow_http=allow_http,
        ),
        limits=limits,
        max_concurrency=reader.positive(limits_table, "max_concurrency", "limits.max_concurrency"),
        warnings=tuple(reader.warnings),
    )


def _variables(reader: _Reader, table: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        if not _VAR_NAME.fullmatch(key):
            raise reader.fail(key, f"vars.{key} is not a valid variable name (letters, digits, _)")
        if not isinstance(value, str):
            raise reader.fail(key, f"vars.{key} must be a string")
        # wws: "$NAME" (no spaces) takes the host's variable, "" when unset.
        if value.startswith("$") and " " not in value and len(value) > 1:
            value = os.environ.get(value[1:], "")
        out[key] = value
    return out


def _folders(reader: _Reader, raw: Any, worker_dir: Path, project: Path) -> tuple[Folder, ...]:
    if not isinstance(raw, list):
        raise reader.fail("folders", "[[folders]] must be an array of tables")
    root = project.resolve()
    folders = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise reader.fail("folders", "each [[folders]] entry must be a table")
        for unknown in sorted(set(entry) - {"from", "to", "writable"}):
            reader.warnings.append(f"{reader.path}: unknown key folders.{unknown} (ignored)")
        source, guest = entry.get("from"), entry.get("to")
        if not isinstance(source, str) or not isinstance(guest, str) or not source or not guest:
            raise reader.fail("from", "each [[folders]] entry needs string values for from and to")
        writable = entry.get("writable", False)
        if not isinstance(writable, bool):
            raise reader.fail("writable", "folders.writable must be true or false")
        if "\x00" in source or "\x00" in guest:
            raise reader.fail("from", "folders.from and folders.to must not contain NUL characters")
        try:
            resolved = (worker_dir / source.replace("\\", "/")).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise reader.fail("from", f"folder {source!r} cannot be resolved: {exc}") from None
        if resolved != root and root not in resolved.parents:
            raise reader.fail("from", f"folder {source!r} is outside the project")
        if not resolved.is_dir():
            raise reader.fail("from", f"folder {source!r} does not exist")
        folders.append(Folder(resolved, guest, writable))
    return tuple(folders)
