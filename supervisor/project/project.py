"""What is being served: the project folder's workers, their routes and
settings, and the runners' memory plan. Loaded the same way by the
``wws-supervisor`` process and by every front-end process, so they agree.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TextIO

from ipc.messages import HttpPolicy, Mount, WorkerSpec
from runner.engines.engine import EngineDoesNotFit, plan_engine
from supervisor.config import ServerConfig
from supervisor.front.static import PublicFolder
from supervisor.project.config_file import ConfigFileError
from supervisor.project.contract_project import load_config_file, wagi_in_folder
from supervisor.project.discovery import WorkerFile, discover
from supervisor.project.routes import RouteTable
from supervisor.project.runtimes import with_runtimes
from supervisor.project.worker_config import WorkerConfig, WorkerConfigError, load_worker_config

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A problem the user must fix before the server can start; one line."""


@dataclasses.dataclass(frozen=True)
class Project:
    workers: list[WorkerFile]
    routes: RouteTable
    settings: dict[str, WorkerConfig]
    specs: list[WorkerSpec]
    public: PublicFolder | None

    def uses_kv(self) -> bool:
        return any(settings.kv_namespace for settings in self.settings.values())


def load_project(config: ServerConfig, project_arg: str, out: TextIO) -> tuple[Project, ServerConfig]:
    """Discover the workers, read their TOML files and plan the runners'
    memory; returns the project and the config with that plan in it.

    Raises:
        StartupError: a missing or unreadable project, a broken worker
            configuration, or no memory layout that fits.
    """
    print(f"⚙️  Preparing the project from: {project_arg}", file=out)
    folder = config.project
    if folder.is_file():  # a WAGI modules.toml or a serverless-wasm config
        print(f"⚙️  Loading routes from: {project_arg}", file=out)
        try:
            workers, routes, settings, specs = load_config_file(folder, config)
        except ConfigFileError as exc:
            raise StartupError(str(exc)) from None
        return Project(workers, routes, settings, specs, None), _plan_memory(config, settings, out)
    if not folder.is_dir():
        raise StartupError(f"there is no folder at {project_arg}; pass the folder that holds your workers")
    print(f"⚙️  Loading routes from: {project_arg}", file=out)
    try:
        workers = discover(folder, config.ignore)
    except OSError as exc:
        raise StartupError(f"cannot read the project folder: {exc}") from None
    routes = RouteTable(workers, config.prefix)
    settings = _worker_settings(workers, folder, config)
    try:  # protocol = "wagi" workers get WAGI routes
        workers, routes = wagi_in_folder(workers, routes, settings, config)
    except ConfigFileError as exc:
        raise StartupError(str(exc)) from None
    config = _plan_memory(config, settings, out)
    specs = [_spec(w, settings[w.relative]) for w in workers]
    specs = with_runtimes(specs, folder, config.runtimes_dir, out)  # .py and .rb workers
    public_dir = folder / "public"
    public = PublicFolder(public_dir) if public_dir.is_dir() else None
    return Project(workers, routes, settings, specs, public), config


def _plan_memory(config: ServerConfig, settings: dict[str, WorkerConfig], out: TextIO) -> ServerConfig:
    """Choose the runners' memory layout for the largest memory limit and
    say which one it is.

    Raises:
        StartupError: the address-space limit leaves no room for any layout.
    """
    largest = max([config.limits.memory_bytes, *(s.limits.memory_bytes for s in settings.values())])
    try:
        plan = plan_engine(largest, config.pool.workers)
    except EngineDoesNotFit as exc:
        raise StartupError(str(exc)) from None
    print(f"⚙️  Wasm memory: {plan.summary}", file=out)
    for warning in plan.warnings:
        log.warning("%s", warning)
    return dataclasses.replace(config, pool=dataclasses.replace(config.pool, engine=plan.settings))


def _spec(worker: WorkerFile, settings: WorkerConfig) -> WorkerSpec:
    mounts = [Mount(str(f.source), f.guest, f.writable) for f in settings.folders]
    rules = settings.http_requests
    policy = HttpPolicy(list(rules.allowed_hosts), list(rules.allowed_methods), rules.allow_http)
    return WorkerSpec(worker.relative, str(worker.absolute), worker.kind, settings.variables, mounts, policy)


def _worker_settings(
    workers: list[WorkerFile], project: Path, config: ServerConfig
) -> dict[str, WorkerConfig]:
    settings = {}
    for worker in workers:
        try:
            settings[worker.relative] = load_worker_config(worker.absolute, project, config.limits)
        except WorkerConfigError as exc:
            raise StartupError(str(exc)) from None
        for warning in settings[worker.relative].warnings:
            log.warning("%s", warning)
    return settings
