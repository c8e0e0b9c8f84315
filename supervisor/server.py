"""``wws-supervisor``: load and check the project, bind the port, compile every
worker once, then serve: in this process (``--frontends 1``), or through the
arbiter and several front-end processes (``supervisor/arbiter.py``).

Whatever stops startup is a :class:`StartupError`: one line, exit status 1,
nothing left running.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TextIO

import trio

from supervisor.arbiter import run_arbiter
from supervisor.cache_admin import prune_after_start
from supervisor.compile_progress import with_progress
from supervisor.config import ServerConfig
from supervisor.discovery import WorkerFile
from supervisor.frontend import serve_front
from supervisor.kv import KvUnavailable, open_kv
from supervisor.pool import Pool, RunnerBootError
from supervisor.project import Project, StartupError, load_project
from supervisor.scratch import make_scratch, remove_stale_scratch

log = logging.getLogger(__name__)

# With --frontends auto: one per core, each with at least two runners, at most this many.
_MAX_AUTO_FRONTENDS = 4


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port; more than one share it with
    SO_REUSEPORT (the kernel spreads new connections across them), one per
    front end, each kept open here while its front end restarts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one picked
            sock.listen(1024)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


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


def frontend_count(config: ServerConfig, project: Project) -> int:
    """How many front-end processes to run.

    Raises:
        StartupError: several were asked for, but the KV store is in memory
            (each front end would have its own, and updates would be lost).
    """
    runners = config.pool.workers
    shared_kv = not config.kv_url.startswith("memory:")
    if config.frontends is not None:
        if config.frontends > 1 and project.uses_kv() and not shared_kv:
            raise StartupError(
                f"--frontends {config.frontends} needs a KV store the front ends share: "
                "pass --kv sqlite:///path/kv.db or --kv redis://host:port/db (or --frontends 1)"
            )
        return max(1, min(config.frontends, runners))
    if project.uses_kv() and not shared_kv:
        return 1
    return max(1, min(os.cpu_count() or 1, _MAX_AUTO_FRONTENDS, runners // 2))


async def serve(config: ServerConfig, project_arg: str, out: TextIO, argv: list[str]) -> None:
    """Run the server until a signal stops it.

    Args:
        argv: the command line as given; front-end processes parse it again.

    Raises:
        StartupError: a missing project, an unusable port or cache folder, a
            broken worker configuration, an unreachable KV store, a compiled
            worker that cannot be loaded, or runners that cannot start.
    """
    started = time.perf_counter()
    project, config = load_project(config, project_arg, out)
    _check_cache_dir(config.cache_dir)
    frontends = frontend_count(config, project)
    with contextlib.ExitStack() as stack:
        sockets = bind_sockets(config.host, config.port, frontends)
        for sock in sockets:
            stack.callback(sock.close)
        port = sockets[0].getsockname()[1]
        remove_stale_scratch()
        try:
            open_kv(config.kv_url).close()  # reachable? (each front end opens its own)
        except KvUnavailable as exc:
            raise StartupError(str(exc)) from None
        print(f"⏳ Loading workers from {len(project.routes.routes)} routes...", file=out)
        broken = await _compile(config, project, project_arg, out)
        base_url = f"http://{_url_host(config.host)}:{port}"

        def ready() -> None:
            print(f"✅ Workers loaded in {time.perf_counter() - started:.3f}s.", file=out)
            for route in project.routes.routes:
                print(f"    - {base_url}{route.path}", file=out)
                # A config file's workers are named relative to its folder.
                shown = os.path.dirname(project_arg) if os.path.isfile(project_arg) else project_arg
                print(f"      => {os.path.join(shown, route.worker.relative)}", file=out)
            if frontends > 1:
                print(f"🧩 {frontends} front ends, {config.pool.workers} runners in all", file=out)
            print(f"🚀 Start serving requests at {base_url}\n", file=out, flush=True)

        if frontends == 1:
            await serve_front(config, project, broken, sockets[0], ready)
        else:
            await run_arbiter(config, argv, sockets, broken, ready)


async def _compile(config: ServerConfig, project: Project, project_arg: str, out: TextIO) -> set[str]:
    scratch = make_scratch()
    try:
        pool = Pool(config.pool, project.specs, config.cache_dir, scratch)
        return await _compile_in(pool, project.workers, project_arg, out, config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def _compile_in(
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
    scripts = ("js", "py", "rb")  # a script that cannot load costs its own route only
    fatal = {worker_id: reason for worker_id, reason in errors.items() if kinds[worker_id] not in scripts}
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
    return broken


def run(config: ServerConfig, project_arg: str, out: TextIO, argv: list[str]) -> None:
    trio.run(functools.partial(serve, config, project_arg, out, argv))
