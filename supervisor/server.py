"""The supervisor's trio program: bind, compile, start the pool, serve HTTP
through embedded hypercorn, and shut down in order on SIGTERM/SIGINT.

Everything lives in one nursery tree: the signal watcher, the pool (which owns
every runner process) and hypercorn. Shutdown: stop accepting, let in-flight
requests finish within the grace period, then stop the runners.
"""

from __future__ import annotations

import contextlib
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
import hypercorn.trio
import trio

from ipc.messages import HttpPolicy, Mount, WorkerSpec
from supervisor.asgi import WorkerApp
from supervisor.config import ServerConfig
from supervisor.discovery import WorkerFile, discover
from supervisor.kv import KvUnavailable, open_kv
from supervisor.pool import Pool
from supervisor.routes import RouteTable
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


def _scratch_root() -> str:
    # Guest stdout/stderr files live here; tmpfs keeps them off the disk.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="wws-supervisor-", dir=base)


def _hypercorn_config(config: ServerConfig, fd: int) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.bind = [f"fd://{fd}"]
    hc.graceful_timeout = config.graceful_timeout_s
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
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(bind_socket(config.host, config.port))
        port = sock.getsockname()[1]
        scratch = Path(_scratch_root())
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        try:
            kv = open_kv(config.kv_url)
        except KvUnavailable as exc:
            raise StartupError(str(exc)) from None
        stack.callback(kv.close)
        print(f"⏳ Loading workers from {len(routes.routes)} routes...", file=out)
        specs = [_spec(w, settings[w.relative]) for w in workers]
        pool = Pool(config.pool, specs, config.cache_dir, scratch)
        broken = await _compile(pool, workers, project_arg, out)
        public_dir = project / "public"
        public = PublicFolder(public_dir) if public_dir.is_dir() else None
        app = WorkerApp(config, routes, public, pool, settings, broken, kv)
        base_url = f"http://{_url_host(config.host)}:{port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            print(f"✅ Workers loaded in {time.perf_counter() - started:.3f}s.", file=out)
            for route in routes.routes:
                print(f"    - {base_url}{route.path}", file=out)
                print(f"      => {os.path.join(project_arg, route.worker.relative)}", file=out)
            stop = trio.Event()
            signals_scope = trio.CancelScope()
            nursery.start_soon(_watch_signals, stop, signals_scope, nursery.cancel_scope)

            async def run_http(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await hypercorn.trio.serve(
                        app,  # type: ignore[arg-type]
                        _hypercorn_config(config, sock.detach()),
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                finally:
                    pool.close()
                    signals_scope.cancel()

            await nursery.start(run_http)
            print(f"🚀 Start serving requests at {base_url}\n", file=out, flush=True)


async def _compile(pool: Pool, workers: list[WorkerFile], project_arg: str, out: TextIO) -> set[str]:
    """Compile every worker once; returns the scripts that failed to load.

    Raises:
        StartupError: a compiled worker cannot be loaded.
    """
    try:
        errors = await pool.prepare()
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
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


async def _watch_signals(stop: trio.Event, scope: trio.CancelScope, everything: trio.CancelScope) -> None:
    with scope, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.info(
                    "%s received: finishing in-flight requests, then stopping", signal.Signals(signum).name
                )
                stop.set()
            else:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                everything.cancel()


def run(config: ServerConfig, project_arg: str, out: TextIO) -> None:
    trio.run(functools.partial(serve, config, project_arg, out))
