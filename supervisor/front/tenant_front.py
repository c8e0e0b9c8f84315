"""The front end with ``--tenants``: one HTTP front, one router, and for each
tenant its own generations of runners (``supervisor/pool/generations.py``).

A reload (SIGHUP) reads the tenants file again and touches only what changed:
a new tenant is started, a removed one stops taking requests and finishes
those it has, and a tenant whose entry, derived configuration or project
files changed gets a new generation beside its current one (its old one
finishes its requests). Every other tenant keeps its generation, its runners
and its requests. A tenant that cannot load or start fails alone: at startup
it answers 503 with the reason in the log; at a reload its current
generation keeps serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import trio

from supervisor.config import ServerConfig
from supervisor.front.asgi import WorkerApp
from supervisor.front.frontend import ReloadSource, _hypercorn_config
from supervisor.front.http_front import HttpFront, Shutdown
from supervisor.front.kv import KvUnavailable, open_kv
from supervisor.front.signals import watch_signals
from supervisor.front.tenant_router import TenantEntry, TenantRouter
from supervisor.ops import metrics
from supervisor.ops.notify import Notifier
from supervisor.ops.runner_state import StatePublisher
from supervisor.pool.cgroups import TenantCgroups
from supervisor.pool.compiling import compile_project
from supervisor.pool.generations import Generation, Switch
from supervisor.pool.members import RunnerFactory
from supervisor.pool.pool import Pool, RunnerBootError
from supervisor.pool.runners import start_runner
from supervisor.pool.scratch import make_scratch
from supervisor.project.project import Project, StartupError
from supervisor.project.tenant_project import (
    TenantKv,
    fingerprint,
    kv_limits,
    load_tenant_project,
    tenant_config,
)
from supervisor.project.tenants import Tenant, TenantsError, load_tenants

log = logging.getLogger(__name__)

Json = dict[str, object]


@dataclasses.dataclass
class Prepared:
    """A tenant's project loaded and compiled (or the reason it could not be)."""

    tenant: Tenant
    derived: ServerConfig  # from the server's configuration, before memory planning
    files: tuple[tuple[str, int, int], ...]
    project: Project | None = None
    config: ServerConfig | None = None
    broken: set[str] = dataclasses.field(default_factory=set)
    error: str = ""


async def prepare_tenant(base: ServerConfig, tenant: Tenant, out: TextIO) -> Prepared:
    """Load and compile one tenant's project, off the request path."""
    derived = tenant_config(base, tenant)
    prepared = Prepared(tenant, derived, fingerprint(tenant.root))
    try:
        try:
            derived.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot use the cache folder {derived.cache_dir}: {exc.strerror}") from None
        project, config = load_tenant_project(derived, tenant, out)
        prepared.broken = await compile_project(config, project, str(tenant.root), out)
        prepared.project, prepared.config = project, config
    except StartupError as exc:
        prepared.error = str(exc)
    return prepared


@dataclasses.dataclass(eq=False)
class _Running:
    prepared: Prepared
    kv: TenantKv
    switch: Switch | None = None


class TenantFrontEnd:
    def __init__(
        self,
        config: ServerConfig,
        notifier: Notifier,
        reload_source: ReloadSource,
        cgroups: TenantCgroups | None,
    ) -> None:
        self._config = config
        self._notifier = notifier
        self._reload_source = reload_source
        self._cgroups = cgroups
        self.router = TenantRouter()
        self._running: dict[str, _Running] = {}
        self._generations: list[Generation] = []
        self._numbers: dict[str, int] = {}
        self._reload_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._scratch: Path | None = None
        self.shutdown = Shutdown()
        self._publisher = StatePublisher(self.shutdown)
        self._publisher.tenants = self.describe

    def describe(self) -> list[Json]:
        """Each tenant for the admin API: hosts, limits, state and why."""
        entries = []
        for name, running in sorted(self._running.items()):
            tenant = running.prepared.tenant
            current = running.switch.current.number if running.switch is not None else None
            entries.append(
                {
                    "name": name,
                    "hosts": list(tenant.hosts),
                    "prefix": tenant.prefix,
                    "default": tenant.default,
                    "root": str(tenant.root),
                    "state": "serving" if running.switch is not None else "down",
                    "error": running.prepared.error or None,
                    "generation": current,
                    "limits": {k: v for k, v in dataclasses.asdict(tenant.limits).items() if v is not None},
                }
            )
        return entries

    async def serve(self, prepared: list[Prepared], sock: socket.socket, ready: Callable[[], None]) -> None:
        """Serve every tenant on ``sock`` until a signal stops it.

        Raises:
            StartupError: the KV store cannot be reached, or no tenant can start.
        """
        config = self._config
        with contextlib.ExitStack() as stack:
            self._scratch = make_scratch()
            stack.callback(shutil.rmtree, self._scratch, ignore_errors=True)
            stack.callback(self._close_kv)
            margin = min(0.5, config.graceful_timeout_s / 4)
            self.shutdown.on_deadline(self._hurry_all(margin))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for item in prepared:
                    await self._install(item)
                if all(running.switch is None for running in self._running.values()):
                    first = next(iter(self._running.values())).prepared
                    raise StartupError(f"no tenant can start; {first.tenant.name}: {first.error}")
                front = HttpFront(
                    metrics.instrument(self.router), _hypercorn_config(config), sock, config.max_connections
                )
                signals_scope = trio.CancelScope()
                nursery.start_soon(self._watch_signals, signals_scope, margin)
                nursery.start_soon(self._publisher.run)

                async def run_http(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    try:
                        await front.serve(self.shutdown, task_status=task_status)
                    finally:
                        for generation in self._generations:
                            generation.pool.close()
                        signals_scope.cancel()
                        self._publisher.stop()

                await nursery.start(run_http)
                ready()

    def _close_kv(self) -> None:
        for running in self._running.values():
            running.kv.close()

    def _hurry_all(self, margin: float) -> Callable[[float], None]:
        def hurry(deadline: float) -> None:
            for generation in self._generations:
                generation.pool.hurry(deadline - margin)

        return hurry

    async def _install(self, prepared: Prepared) -> None:
        """Start a prepared tenant (new, or replacing its current generation)
        and route to it; a failure leaves what was serving as it was."""
        tenant = prepared.tenant
        running = self._running.get(tenant.name)
        if running is None:
            try:
                store = open_kv(self._config.kv_url, kv_limits(tenant))
            except KvUnavailable as exc:
                raise StartupError(str(exc)) from None
            running = _Running(prepared, TenantKv(store, tenant.name, tenant.limits.kv_max_bytes))
            self._running[tenant.name] = running
        generation = None
        if not prepared.error:
            try:
                generation = await self._start_generation(prepared, running.kv)
            except StartupError as exc:
                prepared.error = str(exc)
        queue_timeout = self._config.pool.queue_timeout_s
        if generation is None:
            if running.switch is None:
                log.error("tenant %s cannot start (it answers 503): %s", tenant.name, prepared.error)
                running.prepared = prepared
                self.router.set(TenantEntry.make(tenant, None, queue_timeout, prepared.error))
            else:
                log.error(
                    "tenant %s: reload failed, generation %d keeps serving: %s",
                    tenant.name,
                    running.switch.current.number,
                    prepared.error,
                )
            return
        running.prepared = prepared
        running.kv.limits = kv_limits(tenant)
        running.kv.max_bytes = tenant.limits.kv_max_bytes
        old = running.switch.current if running.switch is not None else None
        if running.switch is None:
            running.switch = Switch(generation)
        else:
            running.switch.current = generation
        self.router.set(TenantEntry.make(tenant, running.switch, queue_timeout))
        if old is not None:
            log.info(
                "tenant %s: generation %d serves; generation %d finishes",
                tenant.name,
                generation.number,
                old.number,
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._retire, old)

    async def _retire(self, generation: Generation) -> None:
        await generation.retire()
        self._generations.remove(generation)

    async def _start_generation(self, prepared: Prepared, kv: TenantKv) -> Generation:
        assert self._nursery is not None and self._scratch is not None
        assert prepared.project is not None and prepared.config is not None
        tenant, project, config = prepared.tenant, prepared.project, prepared.config
        scratch = self._scratch / tenant.name
        scratch.mkdir(exist_ok=True)
        factory: RunnerFactory = start_runner
        if self._cgroups is not None:
            try:
                self._cgroups.configure(tenant.name, tenant.limits)
                factory = self._cgroups.runner_factory(tenant.name)
            except OSError as exc:
                log.warning("tenant %s: no cgroup of its own: %s", tenant.name, exc)
        number = self._numbers.get(tenant.name, 0) + 1
        self._numbers[tenant.name] = number
        specs = [spec for spec in project.specs if spec.worker_id not in prepared.broken]
        pool = Pool(config.pool, specs, config.cache_dir, scratch, factory)
        pool.generation = number
        app = WorkerApp(config, project.routes, project.public, pool, project.settings, prepared.broken, kv)
        try:
            await self._nursery.start(_run_pool, pool, tenant.name)
        except* RunnerBootError as group:
            raise StartupError(f"no runner can start: {group.exceptions[0]}") from None
        self._publisher.watch(pool, project, prepared.broken, tenant=tenant.name)
        generation = Generation(number, project, app, pool)
        self._generations.append(generation)
        return generation

    async def _watch_signals(self, scope: trio.CancelScope, hurry_s: float) -> None:
        assert self._nursery is not None
        nursery = self._nursery
        with scope:
            await watch_signals(
                self.shutdown,
                self._notifier,
                self._config.graceful_timeout_s,
                hurry_s,
                lambda: nursery.start_soon(self.reload),
            )

    async def reload(self) -> None:
        """Read the configuration and the tenants file again and apply what
        changed, tenant by tenant (see the module docstring)."""
        async with self._reload_lock:
            self._notifier.reloading()
            log.info("SIGHUP received: reloading the tenants")
            try:
                config = self._reload_source()
            except SystemExit as exc:  # argparse (a broken --config file) exits after printing why
                config = None
                problem = f"the configuration cannot be read ({exc})"
            if config is not None:
                config = self._keep_restart_only(config)
                try:
                    tenants = load_tenants(config.tenants or Path())
                except TenantsError as exc:
                    problem, config = str(exc), None
            if config is None:
                log.error("reload failed, every tenant keeps serving: %s", problem)
                self._notifier.ready(f"serving; the last reload failed: {problem}")
                return
            self._config = config
            names = {tenant.name for tenant in tenants}
            for name in sorted(set(self._running) - names):
                self._remove(name)
            changed = 0
            for tenant in tenants:
                running = self._running.get(tenant.name)
                if running is not None and running.switch is not None and not self._changed(running, tenant):
                    continue
                changed += 1
                await self._install(await prepare_tenant(config, tenant, io.StringIO()))
            log.info("reloaded: %d tenant(s) started or changed, the others untouched", changed)
            self._notifier.ready(f"serving {len(self._running)} tenants")

    def _keep_restart_only(self, config: ServerConfig) -> ServerConfig:
        current = self._config
        if (config.host, config.port, config.kv_url) != (current.host, current.port, current.kv_url):
            log.warning("the address and the KV store change only with a restart; keeping the current ones")
            config = dataclasses.replace(config, host=current.host, port=current.port, kv_url=current.kv_url)
        if config.tenants is None:
            config = dataclasses.replace(config, tenants=current.tenants)
        return config

    def _changed(self, running: _Running, tenant: Tenant) -> bool:
        before = running.prepared
        return (
            before.tenant != tenant
            or before.derived != tenant_config(self._config, tenant)
            or before.files != fingerprint(tenant.root)
        )

    def _remove(self, name: str) -> None:
        running = self._running.pop(name)
        self.router.remove(name)
        log.info("tenant %s removed: it finishes its requests, then its runners stop", name)
        assert self._nursery is not None
        if running.switch is not None:
            self._nursery.start_soon(self._retire_removed, name, running)

    async def _retire_removed(self, name: str, running: _Running) -> None:
        assert running.switch is not None
        await self._retire(running.switch.current)
        running.kv.close()
        if self._cgroups is not None:
            self._cgroups.remove(name)


class _Started:
    """A task status that remembers whether the task reported started."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._inner.started(value)


async def _run_pool(
    pool: Pool, tenant: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    # A pool that halts after it started must not stop the other tenants.
    status = _Started(task_status)
    try:
        await pool.run(task_status=status)
    except RunnerBootError as exc:
        if not status.done:
            raise
        log.error("tenant %s: its runners stopped: %s", tenant, exc)
