"""A front end: one trio program serving HTTP on a listening socket with its
own pool of runners. With ``--frontends 1`` it runs inside the
``wws-supervisor`` process; with more, each runs in a process of its own
(``python -m supervisor.front.frontend``) started by the arbiter, which compiled the
workers already and hands over the socket, the command line and the list of
workers that failed to load.

Shutdown: SIGTERM/SIGINT stop accepting, let in-flight requests finish
within the grace period (requests still running just before it ends are
answered 503 and their runners killed), then stop the runners. A second
signal cuts the grace short; the clean-up still runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import hypercorn.config
import trio

from runner.lifeline import die_with_parent
from supervisor.arbiter.frontend_order import DRAINING_LINE, ERROR_PREFIX, READY_LINE, FrontendOrder
from supervisor.config import ServerConfig
from supervisor.front.access_log import AccessLog
from supervisor.front.asgi import WorkerApp
from supervisor.front.http_front import HttpFront, Shutdown
from supervisor.front.kv import KvStore, KvUnavailable, open_kv
from supervisor.front.signals import watch_signals
from supervisor.ops import metrics
from supervisor.ops.logs import setup_logging
from supervisor.ops.notify import Notifier
from supervisor.ops.runner_state import StatePublisher
from supervisor.ops.watch import reload_on_change
from supervisor.pool.compiling import compile_project
from supervisor.pool.generations import Generation, Switch
from supervisor.pool.pool import Pool, RunnerBootError
from supervisor.pool.scratch import make_scratch
from supervisor.project.project import Project, StartupError, load_project

log = logging.getLogger("supervisor.front.frontend")  # also when run as __main__


def _hypercorn_config(config: ServerConfig) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.include_server_header = False
    # One line per request, like wws's actix logger, when asked for.
    access = logging.getLogger("wws.access")
    # hypercorn formats every access line before the logger's level is asked:
    # with --log-level warning (or --no-access-log) it is not built at all.
    hc.accesslog = access if config.access_log and access.isEnabledFor(logging.INFO) else None
    hc.access_log_format = '%(h)s "%(R)s" %(s)s %(b)s %(L)ss'
    hc.logger_class = AccessLog  # without hypercorn's false "no answer" lines
    hc.errorlog = logging.getLogger("hypercorn.error")
    if config.certfile is not None:
        hc.certfile = str(config.certfile)
        hc.keyfile = str(config.keyfile) if config.keyfile is not None else None
        hc.ca_certs = str(config.ca_certs) if config.ca_certs is not None else None
    return hc


ReloadSource = Callable[[], ServerConfig]


async def _until_cancelled(task: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    # Runs ``task`` inside ``scope``, which shutdown cancels.
    with scope:
        await task()


class FrontEnd:
    """One front end's program: the HTTP front, the current generation (and,
    during a reload, the one before it), the signal watcher."""

    def __init__(
        self,
        config: ServerConfig,
        project_arg: str,
        notifier: Notifier,
        reload_source: ReloadSource | None = None,
        stopped_accepting: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._stopped_accepting = stopped_accepting
        self._project_arg = project_arg
        self._notifier = notifier
        self._reload_source = reload_source
        self._generations: list[Generation] = []
        self._reload_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._kv: KvStore | None = None
        self._scratch: Path | None = None
        self.shutdown = Shutdown()
        self._publisher = StatePublisher(self.shutdown)  # for the admin listener, when there is one

    async def serve(
        self, project: Project, broken: set[str], sock: socket.socket, ready: Callable[[], None]
    ) -> None:
        """Serve ``project`` on ``sock`` until a signal stops it; ``ready`` is
        called once everything is up.

        Raises:
            StartupError: the KV store cannot be reached, or no runner can boot.
        """
        config = self._config
        with contextlib.ExitStack() as stack:
            self._scratch = make_scratch()
            stack.callback(shutil.rmtree, self._scratch, ignore_errors=True)
            try:
                self._kv = open_kv(config.kv_url)
            except KvUnavailable as exc:
                raise StartupError(str(exc)) from None
            stack.callback(self._kv.close)
            # Requests still running this long before the grace ends are cut
            # short, so they can still be answered before connections close.
            margin = min(0.5, config.graceful_timeout_s / 4)
            self.shutdown.on_deadline(self._hurry_all(margin))
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    switch = Switch(await self._start_generation(config, project, broken))
                    app = metrics.instrument(switch)  # counted when the admin listener is on
                    front = HttpFront(app, _hypercorn_config(config), sock, config.max_connections)
                    signals_scope, watch_scope = trio.CancelScope(), trio.CancelScope()
                    nursery.start_soon(self._watch_signals, switch, signals_scope, margin)
                    if config.watch and self._reload_source is not None:
                        watcher = functools.partial(
                            reload_on_change, config.project, functools.partial(self.reload, switch)
                        )
                        nursery.start_soon(_until_cancelled, watcher, watch_scope)
                    nursery.start_soon(self._publisher.run)

                    async def run_http(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                        try:
                            await front.serve(
                                self.shutdown,
                                stopped_accepting=self._stopped_accepting,
                                task_status=task_status,
                            )
                        finally:
                            for generation in self._generations:
                                generation.pool.close()
                            signals_scope.cancel()
                            watch_scope.cancel()
                            self._publisher.stop()

                    await nursery.start(run_http)
                    ready()
            except* RunnerBootError as group:
                raise StartupError(f"no runner can start: {group.exceptions[0]}") from None

    def _hurry_all(self, margin: float) -> Callable[[float], None]:
        def hurry(deadline: float) -> None:
            for generation in self._generations:
                generation.pool.hurry(deadline - margin)

        return hurry

    async def _start_generation(self, config: ServerConfig, project: Project, broken: set[str]) -> Generation:
        assert self._nursery is not None and self._kv is not None and self._scratch is not None
        number = self._generations[-1].number + 1 if self._generations else 1
        specs = [spec for spec in project.specs if spec.worker_id not in broken]
        pool = Pool(config.pool, specs, config.cache_dir, self._scratch)
        pool.generation = number
        app = WorkerApp(config, project.routes, project.public, pool, project.settings, broken, self._kv)
        await self._nursery.start(pool.run)
        self._publisher.watch(pool, project, broken)
        generation = Generation(number, project, app, pool)
        self._generations.append(generation)
        return generation

    async def _watch_signals(self, switch: Switch, scope: trio.CancelScope, hurry_s: float) -> None:
        assert self._nursery is not None
        nursery = self._nursery
        with scope:
            await watch_signals(
                self.shutdown,
                self._notifier,
                self._config.graceful_timeout_s,
                hurry_s,
                lambda: nursery.start_soon(self.reload, switch),
            )

    async def reload(self, switch: Switch) -> None:
        """Load the project and configuration again, compile what changed,
        start a new generation of runners and switch to it; the old one
        finishes its requests, then stops. Any failure keeps the old one."""
        if self._reload_source is None:
            log.warning("SIGHUP: this front end is reloaded by its arbiter; ignored")
            return
        async with self._reload_lock:
            self._notifier.reloading()
            old = switch.current
            log.info("SIGHUP received: reloading the project (generation %d serves meanwhile)", old.number)
            try:
                new = await self._prepare_generation()
            except StartupError as exc:
                log.error("reload failed, generation %d keeps serving: %s", old.number, exc)
                self._notifier.ready(f"serving generation {old.number}; the last reload failed: {exc}")
                return
            switch.current = new
            log.info(
                "reloaded: generation %d serves %d route(s); generation %d ends after %d request(s)",
                new.number,
                len(new.project.routes.routes),
                old.number,
                old.active,
            )
            self._notifier.ready(f"serving generation {new.number}")
            await old.retire()
            self._generations.remove(old)

    async def _prepare_generation(self) -> Generation:
        assert self._reload_source is not None
        try:
            config = self._reload_source()
        except SystemExit as exc:  # argparse (a broken --config file) exits after printing why
            raise StartupError(f"the configuration cannot be read ({exc})") from None
        current = self._config
        if (config.host, config.port, config.kv_url) != (current.host, current.port, current.kv_url):
            log.warning("the address and the KV store change only with a restart; keeping the current ones")
            config = dataclasses.replace(config, host=current.host, port=current.port, kv_url=current.kv_url)
        quiet = io.StringIO()  # startup lines are for the first start only
        project, config = load_project(config, self._project_arg, quiet)
        broken = await compile_project(config, project, self._project_arg, quiet)
        try:
            return await self._start_generation(config, project, broken)
        except RunnerBootError as exc:
            raise StartupError(f"the new runners cannot start: {exc}") from None


def _report(fd: int, line: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, line)


async def _serve_order(order: FrontendOrder, config: ServerConfig, out: TextIO) -> None:
    # The project is planned with the whole server's runner count, as the
    # arbiter planned it, so the engine profile (and the cache) match.
    project, config = load_project(config, str(config.project), out)
    config = dataclasses.replace(
        config,
        pool=dataclasses.replace(config.pool, workers=order.workers),
        max_connections=order.max_connections,
    )
    sock = socket.socket(fileno=order.socket_fd)
    draining = functools.partial(_report, order.status_fd, DRAINING_LINE)
    front = FrontEnd(config, str(config.project), Notifier({}), stopped_accepting=draining)
    await front.serve(project, set(order.broken), sock, lambda: _report(order.status_fd, READY_LINE))


def main() -> int:
    """``python -m supervisor.front.frontend --parent PID``, started by the arbiter."""
    if not die_with_parent(sys.argv[1:]):
        return 0
    from supervisor.cli import load_config

    order = FrontendOrder.from_json(sys.stdin.buffer.read())
    metrics.enable_inherited(order.index)  # before anything counts
    # The command line over its --config file, as the arbiter's startup read them.
    config = load_config(order.argv)[1]
    setup_logging(config.log_level, config.log_format, prefix=f"frontend-{order.index} ")
    try:
        with open(os.devnull, "w") as quiet:
            trio.run(functools.partial(_serve_order, order, config, quiet))
    except StartupError as exc:
        message = str(exc).encode("utf-8", "replace").replace(b"\n", b" ")
        _report(order.status_fd, ERROR_PREFIX + message + b"\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
