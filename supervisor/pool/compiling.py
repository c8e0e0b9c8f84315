"""The compile step: every worker compiled once into the module cache by a
throwaway runner, at startup and at each reload, off the request path (the
runner is a separate process; the event loop keeps serving meanwhile).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import TextIO

from supervisor.config import ServerConfig
from supervisor.ops.cache_admin import prune_after_start
from supervisor.pool.compile_progress import with_progress
from supervisor.pool.pool import Pool, RunnerBootError
from supervisor.pool.scratch import make_scratch
from supervisor.project.discovery import WorkerFile
from supervisor.project.project import Project, StartupError

log = logging.getLogger(__name__)


# Scripts: a load error is the script's (syntax, top level, a missing runtime).
_SCRIPTS = ("js", "py", "rb")


async def compile_project(config: ServerConfig, project: Project, project_arg: str, out: TextIO) -> set[str]:
    """Compile every worker of ``project`` into the cache in a throwaway
    runner (so serving runners only deserialize); returns the scripts that
    failed to load (their routes answer 500, the rest serves).

    Raises:
        StartupError: a compiled worker cannot be loaded, or no runner can start.
    """
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
    fatal = {worker_id: reason for worker_id, reason in errors.items() if kinds[worker_id] not in _SCRIPTS}
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
