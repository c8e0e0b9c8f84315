"""One tenant's project: its configuration derived from the server's, its
workers' limits capped by the tenant's, and its KV store under its own prefix.

What a tenant gets of its own (so a runner, a cache entry or a key of one
tenant is never another's):

* runners: its own pool (``workers`` processes) holding only its workers;
* module cache: ``<cache-dir>/tenants/<name>``; scratch: a folder per tenant;
* KV: every namespace is stored as ``<name>/<namespace>``, with the tenant's
  ``kv_max_keys`` and ``kv_max_bytes`` per namespace;
* limits: the tenant's ``fuel``/``memory_mb``/``timeout_ms`` (else the
  server's flags) are its workers' defaults *and* ceilings: a worker's TOML
  may lower them, never raise them; its outbound hosts are cut down to the
  tenant's ``allowed_hosts`` when that is given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ipc.messages import HttpPolicy
from supervisor.config import Limits, ServerConfig
from supervisor.front.kv import Expected, KvLimitError, KvLimits, KvStore
from supervisor.project.project import Project, load_project
from supervisor.project.tenants import Tenant

log = logging.getLogger(__name__)

# A runner's own baseline RSS (the interpreter and wasmtime): a recycling
# ceiling below it would recycle every runner all the time.
_MIN_RUNNER_RSS_MB = 96


def tenant_config(base: ServerConfig, tenant: Tenant) -> ServerConfig:
    """The server's configuration as this tenant's project sees it."""
    limits = tenant.limits
    pool = dataclasses.replace(
        base.pool,
        workers=limits.workers,
        queue_size=limits.queue_size or base.pool.queue_size,
    )
    if limits.memory_max_mb is not None:
        # Without a cgroup this is what holds the tenant's memory: each
        # runner is recycled past its share.
        share = max(_MIN_RUNNER_RSS_MB, limits.memory_max_mb // limits.workers)
        pool = dataclasses.replace(pool, max_runner_rss_mb=min(pool.max_runner_rss_mb, share))
    return dataclasses.replace(
        base,
        project=tenant.root,
        prefix=tenant.prefix,
        limits=Limits(
            fuel=limits.fuel or base.limits.fuel,
            memory_mb=limits.memory_mb or base.limits.memory_mb,
            timeout_ms=limits.timeout_ms or base.limits.timeout_ms,
        ),
        pool=pool,
        cache_dir=base.cache_dir / "tenants" / tenant.name,
        watch=False,
        tenants=None,
    )


def load_tenant_project(config: ServerConfig, tenant: Tenant, out: TextIO) -> tuple[Project, ServerConfig]:
    """Load the tenant's project (``config`` from :func:`tenant_config`) and
    cap its workers' limits and outbound hosts by the tenant's.

    Raises:
        StartupError: as :func:`supervisor.project.project.load_project`.
    """
    project, config = load_project(config, str(tenant.root), out)
    return cap_project(project, config.limits, tenant), config


def cap_project(project: Project, ceiling: Limits, tenant: Tenant) -> Project:
    settings = {}
    for worker_id, worker in project.settings.items():
        limits = Limits(
            fuel=min(worker.limits.fuel, ceiling.fuel),
            memory_mb=min(worker.limits.memory_mb, ceiling.memory_mb),
            timeout_ms=min(worker.limits.timeout_ms, ceiling.timeout_ms),
        )
        if limits != worker.limits:
            log.warning(
                "tenant %s: %s asks for more than the tenant allows; capped at fuel %d, memory %d MiB, %d ms",
                tenant.name,
                worker_id,
                limits.fuel,
                limits.memory_mb,
                limits.timeout_ms,
            )
        http = worker.http_requests
        if tenant.limits.allowed_hosts is not None:
            kept = tuple(h for h in http.allowed_hosts if covered(h, tenant.limits.allowed_hosts))
            for dropped in sorted(set(http.allowed_hosts) - set(kept)):
                log.warning(
                    "tenant %s: %s may not reach %s (not in the tenant's allowed_hosts)",
                    tenant.name,
                    worker_id,
                    dropped,
                )
            http = dataclasses.replace(http, allowed_hosts=kept)
        settings[worker_id] = dataclasses.replace(worker, limits=limits, http_requests=http)
    specs = []
    for spec in project.specs:
        rules = settings[spec.worker_id].http_requests if spec.worker_id in settings else None
        if rules is not None:
            policy = HttpPolicy(list(rules.allowed_hosts), list(rules.allowed_methods), rules.allow_http)
            spec = dataclasses.replace(spec, http=policy)
        specs.append(spec)
    return dataclasses.replace(project, settings=settings, specs=specs)


def covered(pattern: str, ceiling: Sequence[str]) -> bool:
    """Whether every host ``pattern`` allows is allowed by ``ceiling``."""
    pattern = pattern.lower()
    for allowed in ceiling:
        if allowed == pattern:
            return True
        # "*.example.com" covers a.example.com and *.a.example.com.
        if allowed.startswith("*.") and pattern.endswith(allowed[1:]) and len(pattern) > len(allowed) - 1:
            return True
    return False


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Every file under ``root`` (or ``root`` itself) with its size and
    modification time: a reload rebuilds a tenant only when this changed."""
    if root.is_file():
        paths = [root]
    else:
        paths = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths += [Path(folder) / name for name in sorted(files)]
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def kv_limits(tenant: Tenant) -> KvLimits:
    defaults = KvLimits()
    max_bytes = tenant.limits.kv_max_bytes
    return dataclasses.replace(
        defaults,
        max_keys=tenant.limits.kv_max_keys or defaults.max_keys,
        # Reads are allowed up to the larger of the two, so a namespace that a
        # race took a little past the quota can still be read (and shrunk).
        max_snapshot_bytes=max(defaults.max_snapshot_bytes, 2 * (max_bytes or 0)),
    )


class TenantKv:
    """A tenant's view of the shared store: its namespaces as ``<name>/<namespace>``.

    ``kv_max_bytes`` is checked at commit against the namespace as it is
    just before (one more read); two requests committing at the same moment
    can pass it together by one request's changes.
    """

    def __init__(self, inner: KvStore, tenant: str, max_bytes: int | None) -> None:
        self._inner = inner
        self._tenant = tenant
        self.max_bytes = max_bytes

    @property
    def limits(self) -> KvLimits:
        return self._inner.limits

    @limits.setter
    def limits(self, value: KvLimits) -> None:
        self._inner.limits = value

    def _name(self, namespace: str) -> str:
        return f"{self._tenant}/{namespace}"

    async def snapshot(self, namespace: str) -> dict[str, str]:
        return await self._inner.snapshot(self._name(namespace))

    async def apply(
        self,
        namespace: str,
        changed: dict[str, str],
        deleted: Sequence[str],
        expected: Expected | None = None,
    ) -> None:
        if self.max_bytes is not None and changed:
            current = await self._inner.snapshot(self._name(namespace))
            for key in deleted:
                current.pop(key, None)
            current.update(changed)
            size = sum(len(k.encode()) + len(v.encode()) for k, v in current.items())
            if size > self.max_bytes:
                raise KvLimitError(
                    f"namespace {namespace!r} would hold {size} bytes, over the tenant's "
                    f"{self.max_bytes}-byte kv_max_bytes"
                )
        await self._inner.apply(self._name(namespace), changed, deleted, expected)

    def close(self) -> None:
        self._inner.close()
