"""What each front end serves, published for the admin listener.

The admin listener runs in the top process, but the runners belong to the
front ends (with ``--frontends 1``, to the same process). So each front end
publishes a small JSON file in the server's metrics folder,
``frontend-<index>.json``: its pid, whether it is draining, and for each
generation it still runs (during a reload, the old one finishes beside the
new one) the workers it serves and the state of every runner slot.

The file is rewritten atomically (a temporary file, then a rename) when
something in it changed, checked twice a second, and at least every few
seconds (so RSS figures stay fresh). A file whose front end is gone (it
crashed; its replacement will overwrite it) is ignored by the reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import trio

from supervisor.front.http_front import Shutdown
from supervisor.ops import metrics
from supervisor.pool.pool import Pool
from supervisor.project.project import Project

log = logging.getLogger(__name__)

_CHECK_EVERY_S = 0.5
_REFRESH_EVERY_S = 5.0
_PREFIX = "frontend-"

Json = dict[str, Any]


@dataclasses.dataclass(eq=False)
class _Watched:
    pool: Pool
    workers: list[Json]
    tenant: str = ""  # with --tenants: whose pool it is


def describe_workers(project: Project, broken: set[str]) -> list[Json]:
    """One entry per route: what ``/api/v1/workers`` says about it."""
    entries = []
    for route in project.routes.routes:
        worker_id = route.worker.relative
        settings = project.settings.get(worker_id)
        limits = settings.limits if settings is not None else None
        entries.append(
            {
                "route": route.path,
                "file": worker_id,
                "kind": route.worker.kind,
                "limits": None
                if limits is None
                else {"fuel": limits.fuel, "memory_mb": limits.memory_mb, "timeout_ms": limits.timeout_ms},
                "max_concurrency": settings.max_concurrency if settings is not None else None,
                "kv_namespace": settings.kv_namespace if settings is not None else None,
                # The reasons are in the log, written when the worker failed to compile.
                "load_error": "could not be loaded (see the log)" if worker_id in broken else None,
            }
        )
    return entries


class StatePublisher:
    """A front end's publisher. Without the admin listener (no metrics
    folder) every method is cheap and :meth:`run` returns at once."""

    def __init__(self, shutdown: Shutdown) -> None:
        self._folder = metrics.folder()
        self._frontend = metrics.frontend_index()
        self._watched: list[_Watched] = []
        self._draining = False
        self._stopped = False
        self._wake = trio.Event()
        shutdown.on_deadline(self._drain)
        # With --tenants: what /api/v1/tenants shows (supervisor/front/tenant_front.py).
        self.tenants: Callable[[], list[Json]] | None = None

    def watch(self, pool: Pool, project: Project, broken: set[str], tenant: str = "") -> None:
        """Publish ``pool`` (its ``generation``) and the workers it serves;
        the newest pool watched is the current generation. A pool is dropped
        once it is closed and its runners are gone."""
        if self._folder is not None:
            self._watched.append(_Watched(pool, describe_workers(project, broken), tenant))
            self._wake.set()

    def stop(self) -> None:
        """The front end is stopping: remove the file and end :meth:`run`."""
        self._stopped = True
        self._wake.set()

    def _drain(self, _deadline: float) -> None:
        self._draining = True
        self._wake.set()

    async def run(self) -> None:
        if self._folder is None:
            return
        path = self._folder / f"{_PREFIX}{self._frontend}.json"
        last: Json | None = None
        last_written = -_REFRESH_EVERY_S
        try:
            while not self._stopped:
                state = self._state()
                now = trio.current_time()
                if state != last or now - last_written >= _REFRESH_EVERY_S:
                    last, last_written = state, now
                    _write(path, self._with_rss(state))
                with trio.move_on_after(_CHECK_EVERY_S):
                    await self._wake.wait()
                self._wake = trio.Event()
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _state(self) -> Json:
        self._watched = [w for w in self._watched if not (w.pool.closed and not w.pool.members)]
        generations = []
        newest = {watched.tenant: index for index, watched in enumerate(self._watched)}
        for index, watched in enumerate(self._watched):
            pool = watched.pool
            runners = []
            for slot in range(pool.settings.workers):
                member = pool.members.get(slot)
                if member is None:
                    if not pool.closed:
                        runners.append(_runner(slot, None, "starting", 0))
                    continue
                state = "busy" if member.busy else "idle"
                if member.reason is not None:
                    state = "stopping"
                runners.append(_runner(slot, member.runner.pid, state, member.runner.requests_served))
            generations.append(
                {
                    "generation": pool.generation,
                    "current": index == newest[watched.tenant],
                    "tenant": watched.tenant,
                    "closed": pool.closed,
                    "restarts": pool.restarts,
                    "in_flight": pool.in_flight,
                    "workers": watched.workers,
                    "runners": runners,
                }
            )
        return {
            "frontend": self._frontend,
            "pid": os.getpid(),
            "draining": self._draining,
            "generations": generations,
            "recent_failures": metrics.recent_failures(),
            "tenants": self.tenants() if self.tenants is not None else None,
        }

    def _with_rss(self, state: Json) -> Json:
        # RSS is read only for the file actually written: a /proc read per runner.
        for generation in state["generations"]:
            for runner in generation["runners"]:
                if runner["pid"] is not None:
                    runner["rss_bytes"] = _rss(runner["pid"])
                    if generation["current"]:
                        metrics.runner_rss(runner["slot"], runner["rss_bytes"], generation["tenant"])
        return {**state, "time": time.time()}


def _runner(slot: int, pid: int | None, state: str, served: int) -> Json:
    return {"slot": slot, "pid": pid, "state": state, "requests_served": served, "rss_bytes": 0}


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def _write(path: Path, state: Json) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(state))
        os.replace(temporary, path)
    except OSError as exc:  # a full tmpfs must not stop the front end
        log.warning("cannot publish the runner state to %s: %s", path, exc)


def read_states(folder: Path) -> list[Json]:
    """Every live front end's published state, by front-end index."""
    states = []
    for path in sorted(folder.glob(f"{_PREFIX}*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or never finished
        pid = state.get("pid") if isinstance(state, dict) else None
        if isinstance(pid, int) and pid > 0 and psutil.pid_exists(pid):
            states.append(state)
    return sorted(states, key=lambda state: int(state.get("frontend", 0)))
