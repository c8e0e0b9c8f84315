"""A front end: one trio program serving HTTP on a listening socket with its
own pool of runners. With ``--frontends 1`` it runs inside the
``wws-supervisor`` process; with more, each runs in a process of its own
(``python -m supervisor.frontend``) started by the arbiter, which compiled the
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
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from typing import TextIO

import hypercorn.config
import trio

from runner.lifeline import die_with_parent
from supervisor.asgi import WorkerApp
from supervisor.config import ServerConfig
from supervisor.http_front import HttpFront, Shutdown
from supervisor.kv import KvUnavailable, open_kv
from supervisor.pool import Pool, RunnerBootError
from supervisor.project import Project, StartupError, load_project
from supervisor.scratch import make_scratch

log = logging.getLogger("supervisor.frontend")  # also when run as __main__

# What a front-end process tells the arbiter on its stdout, one line each.
READY_LINE = b"ready\n"
ERROR_PREFIX = b"error: "


def _hypercorn_config(config: ServerConfig) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.include_server_header = False
    # One line per request, like wws's actix logger, when asked for.
    hc.accesslog = logging.getLogger("wws.access") if config.access_log else None
    hc.access_log_format = '%(h)s "%(R)s" %(s)s %(b)s %(L)ss'
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def serve_front(
    config: ServerConfig,
    project: Project,
    broken: set[str],
    sock: socket.socket,
    ready: Callable[[], None],
) -> None:
    """Serve ``project`` on ``sock`` with ``config.pool.workers`` runners until
    a signal stops it; ``ready`` is called once everything is up.

    Raises:
        StartupError: the KV store cannot be reached, or no runner can boot.
    """
    with contextlib.ExitStack() as stack:
        scratch = make_scratch()
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        try:
            kv = open_kv(config.kv_url)
        except KvUnavailable as exc:
            raise StartupError(str(exc)) from None
        stack.callback(kv.close)
        specs = [spec for spec in project.specs if spec.worker_id not in broken]
        pool = Pool(config.pool, specs, config.cache_dir, scratch)
        app = WorkerApp(config, project.routes, project.public, pool, project.settings, broken, kv)
        front = HttpFront(app, _hypercorn_config(config), sock, config.max_connections)
        shutdown = Shutdown()
        # Requests still running this long before the grace ends are cut
        # short, so they can still be answered before connections close.
        margin = min(0.5, config.graceful_timeout_s / 4)
        shutdown.on_deadline(lambda deadline: pool.hurry(deadline - margin))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                signals_scope = trio.CancelScope()
                nursery.start_soon(watch_signals, shutdown, signals_scope, config.graceful_timeout_s, margin)

                async def run_http(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    try:
                        await front.serve(shutdown, task_status=task_status)
                    finally:
                        pool.close()
                        signals_scope.cancel()

                await nursery.start(run_http)
                ready()
        except* RunnerBootError as group:
            raise StartupError(f"no runner can start: {group.exceptions[0]}") from None


async def watch_signals(shutdown: Shutdown, scope: trio.CancelScope, grace_s: float, hurry_s: float) -> None:
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


@dataclasses.dataclass(frozen=True)
class FrontendOrder:
    """What the arbiter tells a front-end process (as JSON on its stdin)."""

    argv: list[str]  # the wws-supervisor command line, as the user gave it
    index: int
    workers: int  # this front end's share of the runners
    max_connections: int
    broken: list[str]  # workers that failed to load at compile time
    socket_fd: int

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FrontendOrder:
        return cls(**json.loads(data))


def _report(line: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(1, line)


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
    await serve_front(config, project, set(order.broken), sock, lambda: _report(READY_LINE))


def main() -> int:
    """``python -m supervisor.frontend --parent PID``, started by the arbiter."""
    if not die_with_parent(sys.argv[1:]):
        return 0
    from supervisor.cli import build_parser, config_from_args

    order = FrontendOrder.from_json(sys.stdin.buffer.read())
    config = config_from_args(build_parser().parse_args(order.argv))
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s frontend-{order.index} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with open(os.devnull, "w") as quiet:
            trio.run(functools.partial(_serve_order, order, config, quiet))
    except StartupError as exc:
        _report(ERROR_PREFIX + str(exc).encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
