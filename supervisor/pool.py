"""The runner pool: N slots, each keeping one runner process alive, all pulling
requests from one bounded queue.

* A slot spawns its runner, handshakes, then serves jobs one at a time.
* A runner that dies, breaks the protocol or misses its deadline is killed,
  reaped and replaced; the request it held gets a typed failure.
* Repeated crashes back off exponentially (per slot), so a broken setup does
  not turn into a fork storm.
* A runner is recycled between requests once it has served its request quota
  (with jitter, so runners do not all restart at once) or its RSS passes the
  ceiling.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ipc.messages import PROTOCOL_VERSION, Configure, Failure, FailureKind, Invoke, Reply, WorkerSpec
from supervisor.config import PoolSettings
from supervisor.runners import RunnerHandle, RunnerLost, describe_exit, start_runner

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 10.0
_FIRST_BACKOFF_S = 0.05
_RSS_CHECK_EVERY = 16
# A runner that crashes sooner than this after its start counts towards the backoff.
_STABLE_AFTER_S = 10.0


@dataclasses.dataclass(eq=False)
class Job:
    invoke: Invoke
    deadline_s: float
    picked: trio.Event = dataclasses.field(default_factory=trio.Event)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    abandoned: bool = False
    retried: bool = False
    result: Reply | Failure | None = None
    runner_pid: int = 0


class Overloaded(Exception):
    """No runner could take the request in time (or the queue is full)."""


class Pool:
    def __init__(
        self, settings: PoolSettings, workers: list[WorkerSpec], cache_dir: Path, scratch_dir: Path
    ) -> None:
        self.settings = settings
        self._workers = workers
        self._cache_dir = cache_dir
        self._scratch_dir = scratch_dir
        self._send, self._receive = trio.open_memory_channel[Job](settings.queue_size)
        self._ids = itertools.count(1)
        self._ready_count = 0
        self._all_ready = trio.Event()
        self.restarts = 0
        self.live_pids: set[int] = set()

    def drop_workers(self, worker_ids: set[str]) -> None:
        """Leave these workers out of every runner (they failed to load)."""
        self._workers = [w for w in self._workers if w.worker_id not in worker_ids]

    def next_request_id(self) -> int:
        return next(self._ids)

    def _configure(self, prepare: bool) -> Configure:
        return Configure(
            request_id=0,
            protocol_version=PROTOCOL_VERSION,
            workers=self._workers,
            cache_dir=str(self._cache_dir),
            scratch_dir=str(self._scratch_dir),
            prepare=prepare,
            epoch_tick_ms=self.settings.epoch_tick_ms,
            max_output_bytes=self.settings.max_output_bytes,
        )

    async def prepare(self) -> dict[str, str]:
        """Compile every worker into the cache in a throwaway runner, so the
        pool's runners only deserialize. Returns worker_id -> load error."""
        async with trio.open_nursery() as nursery:
            handle = await start_runner(nursery)
            try:
                with trio.fail_after(max(self.settings.boot_timeout_s, 300)):
                    ready = await handle.handshake(self._configure(prepare=True))
            except (RunnerLost, trio.TooSlowError) as exc:
                handle.kill()
                raise RuntimeError(f"the compile step failed: {exc}") from None
            await handle.close()
        shutil.rmtree(self._scratch_dir / str(handle.pid), ignore_errors=True)
        return ready.load_errors

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the slots until :meth:`close`; reports started once every runner is ready."""
        async with trio.open_nursery() as nursery:
            for index in range(self.settings.workers):
                nursery.start_soon(self._slot, index)
            await self._all_ready.wait()
            task_status.started()

    def close(self) -> None:
        """Stop taking requests; runners exit once the queue is drained."""
        self._send.close()

    async def submit(
        self, invoke: Invoke, deadline_s: float, on_picked: Callable[[Job], None] | None = None
    ) -> Job:
        """Queue ``invoke`` and wait for its outcome.

        Raises:
            Overloaded: the queue is full, or no runner picked the job within
                the queue timeout.
        """
        job = Job(invoke, deadline_s)
        try:
            self._send.send_nowait(job)
        except (trio.WouldBlock, trio.ClosedResourceError):
            raise Overloaded("the request queue is full") from None
        try:
            with trio.move_on_after(self.settings.queue_timeout_s):
                await job.picked.wait()
        finally:
            # Timed out, or the client went away while queued: no runner
            # should spend time on it.
            job.abandoned = not job.picked.is_set()
        if job.abandoned:
            raise Overloaded("no runner became free in time")
        await job.done.wait()
        return job

    def _mark_ready(self) -> None:
        self._ready_count += 1
        if self._ready_count >= self.settings.workers:
            self._all_ready.set()

    async def _slot(self, index: int) -> None:
        failures = 0
        announced = False

        def announce_ready() -> None:
            # Counted once per slot, even when its first boot fails, so one
            # broken runner cannot hang startup (requests then queue or 503).
            nonlocal announced
            if not announced:
                announced = True
                self._mark_ready()

        carry: list[Job] = []
        while True:
            if failures:
                delay = min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2 ** (failures - 1))
                log.warning(
                    "runner slot %d: restarting in %.2f s after %d crash(es) in a row", index, delay, failures
                )
                await trio.sleep(delay)
            born = time.monotonic()
            outcome = await self._run_one_runner(index, announce_ready, carry)
            announce_ready()
            if outcome == "closed":
                return
            self.restarts += 1
            if outcome != "crashed":
                failures = 0
            elif time.monotonic() - born < _STABLE_AFTER_S:
                failures += 1
            else:
                # It ran fine for a while before dying: start a fresh count.
                failures = 1

    async def _run_one_runner(self, index: int, announce_ready: Callable[[], None], carry: list[Job]) -> str:
        """Boot one runner and serve with it. Returns the outcome, "closed"
        (pool shut down), "recycled" (planned restart, or killed for a missed
        deadline) or "crashed" (it died on its own or could not boot).
        ``carry`` holds a job the previous runner
        of this slot never received; it is served first."""
        handle: RunnerHandle | None = None
        try:
            async with trio.open_nursery() as nursery:
                handle = await start_runner(nursery)
                self.live_pids.add(handle.pid)
                try:
                    with trio.fail_after(self.settings.boot_timeout_s):
                        await handle.handshake(self._configure(prepare=False))
                except (RunnerLost, trio.TooSlowError) as exc:
                    handle.kill()
                    log.error("runner %d failed to boot: %s", handle.pid, exc or "timed out")
                    for job in carry:
                        job.result = Failure(
                            job.invoke.request_id,
                            FailureKind.RUNNER_DIED,
                            "no runner could be started",
                            0,
                            0,
                            b"",
                        )
                        job.done.set()
                    carry.clear()
                    return "crashed"
                log.debug("runner %d ready in slot %d", handle.pid, index)
                announce_ready()
                outcome = await self._serve(handle, carry)
                if outcome == "crashed":
                    handle.kill()
                else:
                    await handle.close()
                return outcome
        finally:
            if handle is not None:
                self.live_pids.discard(handle.pid)
                shutil.rmtree(self._scratch_dir / str(handle.pid), ignore_errors=True)

    async def _serve(self, handle: RunnerHandle, carry: list[Job]) -> str:
        # Up to 10% jitter, so runners started together do not all recycle together.
        jitter = min(self.settings.max_requests_jitter, self.settings.max_requests // 10)
        quota = self.settings.max_requests + random.randint(0, jitter)
        ceiling = self.settings.max_runner_rss_mb << 20
        while True:
            if carry:
                job = carry.pop()
            else:
                try:
                    job = await self._receive.receive()
                except trio.EndOfChannel:
                    return "closed"
                if job.abandoned:
                    continue
                job.picked.set()
            job.runner_pid = handle.pid
            log.debug("request %d dispatched to runner %d", job.invoke.request_id, handle.pid)
            started = time.monotonic()
            try:
                job.result = await handle.call(job.invoke, job.deadline_s)
            except RunnerLost as exc:
                if not exc.delivered and not job.retried:
                    # The runner died while idle; the request never reached it.
                    log.warning(
                        "runner %d had died while idle; its replacement takes request %d",
                        handle.pid,
                        job.invoke.request_id,
                    )
                    job.retried = True
                    carry.append(job)
                    return "crashed"
                await self._report_lost(handle, job, exc, time.monotonic() - started)
                job.done.set()
                # A runner we killed for a missed deadline did nothing wrong by
                # itself; only unexplained deaths count towards the backoff.
                return "recycled" if exc.kind is FailureKind.TIMEOUT else "crashed"
            except BaseException:
                # Cancelled (forced shutdown): the waiting request must not hang.
                job.result = Failure(
                    job.invoke.request_id, FailureKind.RUNNER_DIED, "shutting down", 0, 0, b""
                )
                job.done.set()
                raise
            job.done.set()
            if handle.requests_served >= quota:
                log.info("runner %d recycled after %d requests", handle.pid, handle.requests_served)
                return "recycled"
            # Reading RSS costs a /proc read; every few requests is often enough
            # to catch a runner that keeps growing.
            if handle.requests_served % _RSS_CHECK_EVERY != 1:
                continue  # checked after the 1st, 17th, 33rd... request
            rss = handle.rss_bytes()
            if rss > ceiling:
                log.warning(
                    "runner %d recycled: RSS %d MiB over the %d MiB ceiling",
                    handle.pid,
                    rss >> 20,
                    ceiling >> 20,
                )
                return "recycled"

    async def _report_lost(self, handle: RunnerHandle, job: Job, exc: RunnerLost, elapsed: float) -> None:
        with trio.move_on_after(2):
            await handle.process.wait()
        how = describe_exit(handle.process.returncode)
        elapsed_us = int(elapsed * 1e6)
        job.result = Failure(job.invoke.request_id, exc.kind, f"{exc.detail} ({how})", 0, elapsed_us, b"")
        log.error(
            "runner %d lost during request %d: %s (%s)", handle.pid, job.invoke.request_id, exc.detail, how
        )
