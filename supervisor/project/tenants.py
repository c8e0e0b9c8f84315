"""``--tenants FILE``: several projects served by one daemon, each a tenant.

The file is TOML, one ``[[tenant]]`` table per tenant::

    [[tenant]]
    name = "alice"                  # letters, digits, - and _; names its KV prefix, cache and cgroup
    root = "sites/alice"            # a project folder or a WAGI/serverless config file,
                                    # relative to this file's folder
    hosts = ["alice.example", "*.alice.example"]  # Host names it answers, exact or *.suffix
    prefix = "/app"                 # optional: only paths under it (the routes are mounted there)
    default = true                  # optional: answers Hosts no tenant names (at most one)

    [tenant.limits]                 # all optional
    workers = 2                     # its own runner processes (default 1)
    max_concurrency = 8             # its requests in flight (default: no limit)
    queue_size = 32                 # its requests waiting beyond that, then 503
    requests_per_second = 50        # beyond it and burst: 429 with Retry-After
    burst = 100
    fuel = 500000000                # defaults for its workers; a worker's TOML may lower
    memory_mb = 64                  # them, never raise them
    timeout_ms = 2000
    kv_max_keys = 1000              # per KV namespace of the tenant
    kv_max_bytes = 1048576
    allowed_hosts = ["api.example"] # outbound hosts its workers may ever reach
    cpu_weight = 100                # cgroup v2 (when delegated): cpu.weight of its runners
    cpu_max = 0.5                   # cores: cpu.max of its runners
    memory_max_mb = 512             # memory.max of its runners together

A broken file is one :class:`TenantsError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supervisor.project.routes import format_prefix

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_WIRE_MAX = 2**63 - 1
_TENANT_KEYS = {"name", "root", "hosts", "prefix", "default", "limits"}
_INT_LIMITS = (
    "workers",
    "max_concurrency",
    "queue_size",
    "burst",
    "fuel",
    "memory_mb",
    "timeout_ms",
    "kv_max_keys",
    "kv_max_bytes",
    "cpu_weight",
    "memory_max_mb",
)
_LIMIT_KEYS = {*_INT_LIMITS, "requests_per_second", "allowed_hosts", "cpu_max"}


class TenantsError(Exception):
    """The tenants file cannot be used; one line naming the file and line."""


@dataclasses.dataclass(frozen=True, slots=True)
class TenantLimits:
    workers: int = 1
    max_concurrency: int | None = None
    queue_size: int | None = None
    requests_per_second: float | None = None
    burst: int | None = None
    fuel: int | None = None
    memory_mb: int | None = None
    timeout_ms: int | None = None
    kv_max_keys: int | None = None
    kv_max_bytes: int | None = None
    # None: no ceiling (each worker's own policy); (): no outbound HTTP at all.
    allowed_hosts: tuple[str, ...] | None = None
    cpu_weight: int | None = None
    cpu_max: float | None = None
    memory_max_mb: int | None = None

    @property
    def bucket_size(self) -> int:
        """Requests a client may send at once before the rate applies."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.requests_per_second or 1))


@dataclasses.dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    root: Path
    hosts: tuple[str, ...]
    prefix: str = ""
    default: bool = False
    limits: TenantLimits = dataclasses.field(default_factory=TenantLimits)

    def answers(self, host: str) -> int:
        """How well this tenant's hosts match ``host`` (lower case, no port):
        2 exact, 1 wildcard, 0 not at all."""
        best = 0
        for pattern in self.hosts:
            if pattern == host:
                return 2
            if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                best = 1
        return best

    def covers(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")


def host_of(value: str) -> str:
    """The Host header's name, lower case, without port or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[1 : value.find("]")] if "]" in value else value
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".")


def pick(tenants: Sequence[Tenant], host: str, path: str) -> Tenant | None:
    """The tenant for a request: the best host match (exact over wildcard,
    then the longest prefix covering ``path``), else the default tenant if it
    covers ``path``, else None."""
    best: tuple[int, int] | None = None
    chosen: Tenant | None = None
    for tenant in tenants:
        score = tenant.answers(host)
        if score and tenant.covers(path):
            rank = (score, len(tenant.prefix))
            if best is None or rank > best:
                best, chosen = rank, tenant
    if chosen is not None:
        return chosen
    for tenant in tenants:
        if tenant.default and tenant.covers(path):
            return tenant
    return None


class _Reader:
    """Finds the line of a key inside the Nth ``[[tenant]]`` block."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.starts = [i for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*tenant\s*\]\]", line)]

    def line_of(self, index: int, key: str | None) -> int | None:
        if index >= len(self.starts):
            return None
        start = self.starts[index]
        end = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.lines)
        if key is None:
            return start + 1
        for number in range(start, end):
            if re.match(rf'^\s*"?{re.escape(key)}"?\s*=', self.lines[number]):
                return number + 1
        return start + 1

    def fail(self, index: int, key: str | None, problem: str) -> TenantsError:
        line = self.line_of(index, key)
        return TenantsError(f"{self.path}:{line}: {problem}" if line else f"{self.path}: {problem}")


def load_tenants(path: Path) -> list[Tenant]:
    """Read and check the tenants file.

    Raises:
        TenantsError: unreadable file, invalid TOML, an unknown key, a value
            of the wrong type, a duplicate name or host, a root that does not
            exist, or more than one default tenant.
    """
    try:
        text = path.read_text()
        document = tomllib.loads(text)
    except OSError as exc:
        raise TenantsError(f"cannot read the tenants file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TenantsError(f"{path}: the tenants file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        raise TenantsError(f"{path}{':' + found.group(1) if found else ''}: invalid TOML: {exc}") from None
    reader = _Reader(path, text)
    for key in sorted(set(document) - {"tenant"}):
        raise TenantsError(f"{path}: unknown key {key!r} (the file holds [[tenant]] tables)")
    tables = document.get("tenant", [])
    if not isinstance(tables, list) or not tables:
        raise TenantsError(f"{path}: no [[tenant]] table")
    tenants = [_tenant(reader, index, table, path.parent) for index, table in enumerate(tables)]
    _check_unique(reader, tenants)
    return tenants


def _tenant(reader: _Reader, index: int, table: Any, base: Path) -> Tenant:
    if not isinstance(table, dict):
        raise reader.fail(index, None, "each [[tenant]] must be a table")
    for key in sorted(set(table) - _TENANT_KEYS):
        raise reader.fail(
            index, key, f"unknown key {key!r} in [[tenant]] (known: {', '.join(sorted(_TENANT_KEYS))})"
        )
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise reader.fail(
            index, "name", "name must be 1-63 letters, digits, - or _ (starting with a letter or digit)"
        )
    root = table.get("root")
    if not isinstance(root, str) or not root:
        raise reader.fail(index, "root", f"tenant {name}: root must be a project folder or config file")
    resolved = (base / root).resolve()
    if not resolved.exists():
        raise reader.fail(index, "root", f"tenant {name}: there is nothing at {resolved}")
    hosts = table.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise reader.fail(index, "hosts", f"tenant {name}: hosts must be a list of strings")
    hosts = [h.lower().rstrip(".") for h in hosts]
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise reader.fail(index, "hosts", f"tenant {name}: {host!r} is not a host name or *.suffix")
    default = table.get("default", False)
    if not isinstance(default, bool):
        raise reader.fail(index, "default", f"tenant {name}: default must be true or false")
    if not hosts and not default:
        raise reader.fail(index, "hosts", f"tenant {name}: give it hosts, or make it the default tenant")
    prefix = table.get("prefix", "")
    if not isinstance(prefix, str) or any(c in prefix for c in "?#% "):
        raise reader.fail(index, "prefix", f"tenant {name}: prefix must be a path such as /app")
    limits = _limits(reader, index, name, table.get("limits", {}))
    return Tenant(name, resolved, tuple(hosts), format_prefix(prefix), default, limits)


def _limits(reader: _Reader, index: int, name: str, table: Any) -> TenantLimits:
    if not isinstance(table, dict):
        raise reader.fail(index, "limits", f"tenant {name}: [tenant.limits] must be a table")
    for key in sorted(set(table) - _LIMIT_KEYS):
        raise reader.fail(
            index, key, f"tenant {name}: unknown limit {key!r} (known: {', '.join(sorted(_LIMIT_KEYS))})"
        )
    values: dict[str, Any] = {}
    for key in _INT_LIMITS:
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value > _WIRE_MAX:
            raise reader.fail(
                index, key, f"tenant {name}: limits.{key} must be a whole number greater than 0"
            )
        values[key] = value
    if values.get("cpu_weight", 1) > 10_000:
        raise reader.fail(
            index, "cpu_weight", f"tenant {name}: limits.cpu_weight must be 1-10000 (cgroup v2)"
        )
    if values.get("memory_mb", 1) > _WIRE_MAX >> 20:
        raise reader.fail(index, "memory_mb", f"tenant {name}: limits.memory_mb is too large")
    for key in ("requests_per_second", "cpu_max"):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
            raise reader.fail(index, key, f"tenant {name}: limits.{key} must be a number greater than 0")
        values[key] = float(value)
    hosts = table.get("allowed_hosts")
    if hosts is not None:
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise reader.fail(
                index, "allowed_hosts", f"tenant {name}: limits.allowed_hosts must be a list of strings"
            )
        values["allowed_hosts"] = tuple(h.lower() for h in hosts)
    return TenantLimits(**values)


def _check_unique(reader: _Reader, tenants: list[Tenant]) -> None:
    names: set[str] = set()
    routes: dict[tuple[str, str], str] = {}
    default: str | None = None
    for index, tenant in enumerate(tenants):
        if tenant.name in names:
            raise reader.fail(index, "name", f"tenant name {tenant.name!r} is used twice")
        names.add(tenant.name)
        for host in tenant.hosts:
            other = routes.setdefault((host, tenant.prefix), tenant.name)
            if other != tenant.name:
                shown = f"{host}{tenant.prefix}"
                raise reader.fail(index, "hosts", f"tenants {other} and {tenant.name} both answer {shown}")
        if tenant.default:
            if default is not None:
                raise reader.fail(index, "default", f"tenants {default} and {tenant.name} are both default")
            default = tenant.name
