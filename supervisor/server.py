"""The supervisor's trio program: bind, compile, start the pool, serve HTTP
through hypercorn's connection handling, and shut down in order on SIGTERM/SIGINT.

Everything lives in one nursery tree: the signal watcher, the pool (which owns
every runner process) and the HTTP front. Shutdown: stop accepting, let
in-flight requests finish within the grace period (requests still running
just before it ends are answered 503 and their runners killed), then stop the
runners. A second signal cuts the grace short; the clean-up still runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TextIO

import hypercorn.config
import trio

from ipc.messages import HttpPolicy, Mount, WorkerSpec
from runner.engine import EngineDoesNotFit, plan_engine
from supervisor.asgi import WorkerApp
from supervisor.cache_admin import prune_after_start
from supervisor.compile_progress import with_progress
from supervisor.config import ServerConfig
from supervisor.discovery import WorkerFile, discover
from supervisor.http_front import HttpFront, Shutdown
from supervisor.kv import KvUnavailable, open_kv
from supervisor.pool import Pool, RunnerBootError
from supervisor.routes import RouteTable
from supervisor.scratch import make_scratch, remove_stale_scratch
from supervisor.static import PublicFolder
from supervisor.worker_config import WorkerConfig, WorkerConfigError, load_worker_config

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A problem the user must fix before the server can start; one line."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_cache_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise StartupError(
            f"cannot use the module cache folder {path}: {exc.strerror or exc}; "
            "pass --cache-dir with a folder this user can write"
        ) from None


def _hypercorn_config(config: ServerConfig) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.include_server_header = False
    # One line per request, like wws's actix logger, when asked for.
    hc.accesslog = logging.getLogger("wws.access") if config.access_log else None
    hc.access_log_format = '%(h)s "%(R)s" %(s)s %(b)s %(L)ss'
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def serve(config: ServerConfig, project_arg: str, out: TextIO) -> None:
    """Run the server until a signal stops it.

    Raises:
        StartupError: a missing project, an unusable port, a broken worker
            configuration, an unreachable KV store, or a compiled worker that
            cannot be loaded. Nothing is left running.
    """
    started = time.perf_counter()
    print(f"⚙️  Preparing the project from: {project_arg}", file=out)
    project = config.project
    if not project.is_dir():
        raise StartupError(f"there is no folder at {project_arg}; pass the folder that holds your workers")
    print(f"⚙️  Loading routes from: {project_arg}", file=out)
    try:
        workers = discover(project, config.ignore)
    except OSError as exc:
        raise StartupError(f"cannot read the project folder: {exc}") from None
    routes = RouteTable(workers, config.prefix)
    settings = _worker_settings(workers, project, config)
    config = _plan_memory(config, settings, out)
    _check_cache_dir(config.cache_dir)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(bind_socket(config.host, config.port))
        port = sock.getsockname()[1]
        remove_stale_scratch()
        scratch = make_scratch()
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        try:
            kv = open_kv(config.kv_url)
        except KvUnavailable as exc:
            raise StartupError(str(exc)) from None
        stack.callback(kv.close)
        print(f"⏳ Loading workers from {len(routes.routes)} routes...", file=out)
        specs = [_spec(w, settings[w.relative]) for w in workers]
        pool = Pool(config.pool, specs, config.cache_dir, scratch)
        broken = await _compile(pool, workers, project_arg, out, config)
        public_dir = project / "public"
        public = PublicFolder(public_dir) if public_dir.is_dir() else None
        app = WorkerApp(config, routes, public, pool, settings, broken, kv)
        front = HttpFront(app, _hypercorn_config(config), sock, config.max_connections)
        shutdown = Shutdown()
        # Requests still running this long before the grace ends are cut
        # short, so they can still be answered before connections close.
        margin = min(0.5, config.graceful_timeout_s / 4)
        shutdown.on_deadline(lambda deadline: pool.hurry(deadline - margin))
        base_url = f"http://{_url_host(config.host)}:{port}"
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                print(f"✅ Workers loaded in {time.perf_counter() - started:.3f}s.", file=out)
                for route in routes.routes:
                    print(f"    - {base_url}{route.path}", file=out)
                    print(f"      => {os.path.join(project_arg, route.worker.relative)}", file=out)
                signals_scope = trio.CancelScope()
                nursery.start_soon(_watch_signals, shutdown, signals_scope, config.graceful_timeout_s, margin)

                async def run_http(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    try:
                        await front.serve(shutdown, task_status=task_status)
                    finally:
                        pool.close()
                        signals_scope.cancel()

                await nursery.start(run_http)
                print(f"🚀 Start serving requests at {base_url}\n", file=out, flush=True)
        except* RunnerBootError as group:
            raise StartupError(f"no runner can start: {group.exceptions[0]}") from None


async def _compile(
    pool: Pool, workers: list[WorkerFile], project_arg: str, out: TextIO, config: ServerConfig
) -> set[str]:
    """Compile every worker once (with progress lines when that takes a
    while), then prune the cache; returns the scripts that failed to load.

    Raises:
        StartupError: a compiled worker cannot be loaded.
    """
    since = time.time()
    try:
        errors = await with_progress(pool.prepare, config.cache_dir, workers, out)
    except* RunnerBootError as group:
        raise StartupError(str(group.exceptions[0])) from None
    prune_after_start(config.cache_dir, config.cache_max_mb, since)
    kinds = {w.relative: w.kind for w in workers}
    fatal = {worker_id: reason for worker_id, reason in errors.items() if kinds[worker_id] != "js"}
    if fatal:
        worker_id, reason = next(iter(fatal.items()))
        more = f" (and {len(fatal) - 1} more)" if len(fatal) > 1 else ""
        raise StartupError(f"cannot load worker {worker_id}: {reason}{more}")
    # A broken script costs its own route only: it answers 500 and the rest of
    # the server runs.
    broken = set(errors)
    for worker_id in sorted(broken):
        print(f"❌ {os.path.join(project_arg, worker_id)}: {errors[worker_id]}", file=out)
        log.error("worker %s cannot be loaded; its route answers 500: %s", worker_id, errors[worker_id])
    pool.drop_workers(broken)
    return broken


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


async def _watch_signals(shutdown: Shutdown, scope: trio.CancelScope, grace_s: float, hurry_s: float) -> None:
    with scope, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not shutdown.requested.is_set():
                log.info(
                    "%s received: finishing in-flight requests (up to %.1f s), then stopping", name, grace_s
                )
                shutdown.begin(grace_s)
            else:
                # Cut the grace short, but still answer, stop the runners and clean up.
                log.warning("second %s: answering in-flight requests 503 and stopping now", name)
                shutdown.begin(hurry_s)


def run(config: ServerConfig, project_arg: str, out: TextIO) -> None:
    trio.run(functools.partial(serve, config, project_arg, out))
