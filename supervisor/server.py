"""``wws-supervisor``: load and check the project, bind the port, compile every
worker once, then serve: in this process (``--frontends 1``), or through the
arbiter and several front-end processes (``supervisor/arbiter/arbiter.py``), which
this process becomes by replacing itself with the lean arbiter program
(``supervisor/arbiter/handover.py``).

Whatever stops startup is a :class:`StartupError`: one line, exit status 1,
nothing left running.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import NoReturn, TextIO

import trio

from supervisor.arbiter.handover import AdminOrder, ArbiterOrder, hand_over
from supervisor.config import ServerConfig
from supervisor.front.frontend import FrontEnd, ReloadSource
from supervisor.front.kv import KvUnavailable, open_kv
from supervisor.ops import metrics
from supervisor.ops.admin import AdminListener, open_admin
from supervisor.ops.notify import Notifier
from supervisor.pool.compiling import compile_project
from supervisor.pool.scratch import remove_stale_scratch
from supervisor.project.project import Project, StartupError, load_project

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
        count = max(1, min(config.frontends, runners))
        if count > 1 and runners < 2 * count:
            # One runner per front end: a request stuck in it makes that
            # front end answer 503 to its other clients until the deadline.
            log.warning(
                "%d front ends share %d runners: some have only one, so one slow request there holds up "
                "the others (give -w %d for two each)",
                count,
                runners,
                2 * count,
            )
        return count
    if project.uses_kv() and not shared_kv:
        return 1
    return max(1, min(os.cpu_count() or 1, _MAX_AUTO_FRONTENDS, runners // 2))


async def serve(
    config: ServerConfig, project_arg: str, out: TextIO, argv: list[str], reload_source: ReloadSource
) -> None:
    """Run the server until a signal stops it; SIGHUP reloads it.

    Args:
        argv: the command line as given; front-end processes parse it again.
        reload_source: reads the configuration again (command line over
            ``--config`` file) for a reload.

    Raises:
        StartupError: a missing project, an unusable port or cache folder, a
            broken worker configuration, an unreachable KV store, a compiled
            worker that cannot be loaded, or runners that cannot start.
    """
    if config.tenants is not None:  # several projects, one per tenant
        from supervisor.tenant_server import serve_tenants

        await serve_tenants(config, out, reload_source)
        return
    started = time.monotonic()  # system-wide: the arbiter program reads it after the handover
    project, config = load_project(config, project_arg, out)
    _check_cache_dir(config.cache_dir)
    frontends = frontend_count(config, project)
    with contextlib.ExitStack() as stack:
        sockets = bind_sockets(config.host, config.port, frontends)
        for sock in sockets:
            stack.callback(sock.close)
        port = sockets[0].getsockname()[1]
        remove_stale_scratch()
        # Before any front end starts: they count into the admin's metrics folder.
        admin = stack.enter_context(open_admin(config, frontends))
        try:
            open_kv(config.kv_url).close()  # reachable? (each front end opens its own)
        except KvUnavailable as exc:
            raise StartupError(str(exc)) from None
        print(f"⏳ Loading workers from {len(project.routes.routes)} routes...", file=out)
        broken = await compile_project(config, project, project_arg, out)
        scheme = "https" if config.certfile is not None else "http"
        base_url = f"{scheme}://{_url_host(config.host)}:{port}"
        lines = _serving_lines(project, project_arg, base_url, frontends, config.pool.workers, admin)
        status = f"serving {len(project.routes.routes)} routes at {base_url}"
        if frontends > 1:
            out.flush()
            _become_arbiter(config, argv, sockets, broken, started, lines, status, admin)

        def ready() -> None:
            print(f"✅ Workers loaded in {time.monotonic() - started:.3f}s.", file=out)
            for line in lines:
                print(line, file=out)
            out.flush()
            notifier.ready(status)

        notifier = Notifier()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(notifier.watchdog)
                if admin is not None:
                    await nursery.start(admin.serve)
                front = FrontEnd(config, project_arg, notifier, reload_source)
                await front.serve(project, broken, sockets[0], ready)
                nursery.cancel_scope.cancel()  # the watchdog: we are done
        finally:
            notifier.close()


def _serving_lines(
    project: Project,
    project_arg: str,
    base_url: str,
    frontends: int,
    runners: int,
    admin: AdminListener | None,
) -> list[str]:
    """What is printed once every front end is ready, after "Workers loaded in"."""
    lines = []
    # A config file's workers are named relative to its folder.
    shown = os.path.dirname(project_arg) if os.path.isfile(project_arg) else project_arg
    for route in project.routes.routes:
        lines.append(f"    - {base_url}{route.path}")
        lines.append(f"      => {os.path.join(shown, route.worker.relative)}")
    if frontends > 1:
        lines.append(f"🧩 {frontends} front ends, {runners} runners in all")
    if admin is not None:
        lines.append(f"📊 {admin.banner}")
    lines.append(f"🚀 Start serving requests at {base_url}\n")
    return lines


def _become_arbiter(
    config: ServerConfig,
    argv: list[str],
    sockets: list[socket.socket],
    broken: set[str],
    started: float,
    lines: list[str],
    status: str,
    admin: AdminListener | None,
) -> NoReturn:
    """Replace this process (same pid) with the lean arbiter program, which
    starts the front ends on ``sockets`` and prints ``lines`` once they are
    all ready.

    Raises:
        StartupError: the exec failed (this process is unchanged).
    """
    admin_order = None
    if admin is not None:
        folder = metrics.folder()
        assert folder is not None  # open_admin set it up
        admin_order = AdminOrder(
            admin.fileno(), str(folder), len(sockets), config.admin_token, admin.panel_default
        )
    order = ArbiterOrder(
        argv=argv,
        socket_fds=[sock.fileno() for sock in sockets],
        broken=sorted(broken),
        workers=config.pool.workers,
        max_connections=config.max_connections,
        graceful_timeout_s=config.graceful_timeout_s,
        log_level=config.log_level,
        log_format=config.log_format,
        started=started,
        ready_lines=lines,
        ready_status=status,
        admin=admin_order,
    )
    try:
        hand_over(order)
    except OSError as exc:
        raise StartupError(f"cannot start the arbiter program: {exc.strerror or exc}") from None


def run(
    config: ServerConfig, project_arg: str, out: TextIO, argv: list[str], reload_source: ReloadSource
) -> None:
    trio.run(functools.partial(serve, config, project_arg, out, argv, reload_source))
