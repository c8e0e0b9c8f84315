"""The runner pool: N slots, each keeping one runner process alive.

* A slot spawns its runner, handshakes, and puts it in the idle queue. The
  process belongs to the slot's nursery, so it is always reaped.
* A request leases an idle runner (waiting in FIFO order, bounded in number
  and in time: 503 beyond either), talks to it directly, and hands it back, or
  retires it. No extra task sits between a request and its runner.
* A runner that dies, breaks the protocol or misses its deadline is retired:
  its slot kills and reaps it and starts a replacement. The request gets a
  typed failure; a runner found dead before it received anything is retried
  once on another runner.
* Repeated crashes back off exponentially (per slot), so a broken setup does
  not turn into a fork storm.
* A runner is recycled between requests once it has served its request quota
  (with jitter, so runners do not all restart at once) or its RSS passes the
  ceiling.
"""

from __future__ import annotations

import itertools
import logging
import math
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


class Overloaded(Exception):
    """No runner could take the request in time (or too many are waiting)."""


class Pool:
    def __init__(
        self, settings: PoolSettings, workers: list[WorkerSpec], cache_dir: Path, scratch_dir: Path
    ) -> None:
        self.settings = settings
        self._workers = workers
        self._cache_dir = cache_dir
        self._scratch_dir = scratch_dir
        # Unbounded: a runner that died while queued stays in the buffer until a
        # lease skips it, so the buffer can briefly hold more than N handles.
        self._idle_send, self._idle = trio.open_memory_channel[RunnerHandle](math.inf)
        self._waiting = 0
        self._closing = False
        self._ids = itertools.count(1)
        self._ready_count = 0
        self._all_ready = trio.Event()
        self.restarts = 0

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
        """Stop leasing runners; idle ones are retired now, busy ones when their request ends."""
        self._closing = True
        while True:
            try:
                self._idle.receive_nowait().retire("closed")
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def submit(self, invoke: Invoke, deadline_s: float) -> Reply | Failure:
        """Run ``invoke`` on a leased runner; it is killed if it has not
        answered within ``deadline_s``.

        Raises:
            Overloaded: too many requests are already waiting for a runner, or
                none became free within the queue timeout.
        """
        for attempt in range(2):
            handle = await self._lease()
            log.debug("request %d dispatched to runner %d", invoke.request_id, handle.pid)
            started = time.monotonic()
            try:
                result = await handle.call(invoke, deadline_s)  # shielded inside
            except RunnerLost as exc:
                if not exc.delivered and attempt == 0:
                    log.warning(
                        "runner %d had died while idle; request %d goes to another runner",
                        handle.pid,
                        invoke.request_id,
                    )
                    handle.retire("crashed")
                    continue
                with trio.CancelScope(shield=True):
                    return await self._lost(handle, invoke, exc, time.monotonic() - started)
            self._give_back(handle)
            return result
        raise AssertionError("unreachable")

    async def _lease(self) -> RunnerHandle:
        if self._closing:
            raise Overloaded("the server is shutting down")
        if self._waiting >= self.settings.queue_size:
            raise Overloaded("the request queue is full")
        # Fast path: a runner is idle right now (no cancel scope, no wait).
        while True:
            try:
                handle = self._idle.receive_nowait()
            except trio.WouldBlock:
                break
            if not handle.is_retired:
                return handle
        self._waiting += 1
        try:
            with trio.move_on_after(self.settings.queue_timeout_s):
                while True:
                    handle = await self._idle.receive()
                    if not handle.is_retired:  # skip runners that died while queued
                        return handle
        finally:
            self._waiting -= 1
        raise Overloaded("no runner became free in time")

    def _give_back(self, handle: RunnerHandle) -> None:
        if self._closing:
            handle.retire("closed")
        elif handle.requests_served >= handle.quota:
            log.info("runner %d recycled after %d requests", handle.pid, handle.requests_served)
            handle.retire("recycled")
        elif handle.requests_served % _RSS_CHECK_EVERY == 1 and (rss := handle.rss_bytes()) > self._ceiling:
            # Reading RSS costs a /proc read, so it is sampled (1st, 17th, ... request).
            log.warning(
                "runner %d recycled: RSS %d MiB over the %d MiB ceiling",
                handle.pid,
                rss >> 20,
                self._ceiling >> 20,
            )
            handle.retire("recycled")
        else:
            self._idle_send.send_nowait(handle)

    @property
    def _ceiling(self) -> int:
        return self.settings.max_runner_rss_mb << 20

    async def _lost(self, handle: RunnerHandle, invoke: Invoke, exc: RunnerLost, elapsed: float) -> Failure:
        with trio.move_on_after(2):
            await handle.process.wait()
        how = describe_exit(handle.process.returncode)
        log.error("runner %d lost during request %d: %s (%s)", handle.pid, invoke.request_id, exc.detail, how)
        # A runner we killed for a missed deadline did nothing wrong by itself;
        # only unexplained deaths count towards the backoff.
        handle.retire("recycled" if exc.kind is FailureKind.TIMEOUT else "crashed")
        return Failure(invoke.request_id, exc.kind, f"{exc.detail} ({how})", 0, int(elapsed * 1e6), b"")

    async def _watch_exit(self, handle: RunnerHandle) -> None:
        # A runner that dies while idle (OOM killer, a stray signal) is noticed
        # and replaced at once, not when the next request trips over it.
        await handle.process.wait()
        if not handle.is_retired:
            log.warning(
                "runner %d exited while idle (%s)", handle.pid, describe_exit(handle.process.returncode)
            )
            handle.retire("crashed")

    def _mark_ready(self) -> None:
        self._ready_count += 1
        if self._ready_count >= self.settings.workers:
            self._all_ready.set()

    async def _slot(self, index: int) -> None:
        failures = 0
        announced = False

        def announce_ready() -> None:
            # Counted once per slot, even when its first boot fails, so one
            # broken runner cannot hang startup (requests then wait or 503).
            nonlocal announced
            if not announced:
                announced = True
                self._mark_ready()

        while not self._closing:
            if failures:
                delay = min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2 ** (failures - 1))
                log.warning(
                    "runner slot %d: restarting in %.2f s after %d crash(es) in a row", index, delay, failures
                )
                await trio.sleep(delay)
            born = time.monotonic()
            outcome = await self._run_one_runner(index, announce_ready)
            announce_ready()
            if outcome == "closed":
                return
            self.restarts += 1
            if outcome != "crashed":
                failures = 0
            elif time.monotonic() - born < _STABLE_AFTER_S:
                failures += 1
            else:
                failures = 1  # it ran fine for a while before dying: a fresh count

    async def _run_one_runner(self, index: int, announce_ready: Callable[[], None]) -> str:
        """Boot one runner, lend it out until it is retired, and dispose of
        it. Returns why it ended: "closed", "recycled" or "crashed"."""
        handle: RunnerHandle | None = None
        try:
            async with trio.open_nursery() as nursery:
                handle = await start_runner(nursery)
                try:
                    with trio.fail_after(self.settings.boot_timeout_s):
                        await handle.handshake(self._configure(prepare=False))
                except (RunnerLost, trio.TooSlowError) as exc:
                    handle.kill()
                    log.error("runner %d failed to boot: %s", handle.pid, exc or "timed out")
                    return "crashed"
                jitter = min(self.settings.max_requests_jitter, self.settings.max_requests // 10)
                handle.quota = self.settings.max_requests + random.randint(0, jitter)
                log.debug("runner %d ready in slot %d", handle.pid, index)
                announce_ready()
                if self._closing:
                    handle.retire("closed")
                else:
                    self._idle_send.send_nowait(handle)
                nursery.start_soon(self._watch_exit, handle)
                reason = await handle.retired()
                if reason == "crashed":
                    handle.kill()
                else:
                    await handle.close()
                return reason
        finally:
            if handle is not None:
                shutil.rmtree(self._scratch_dir / str(handle.pid), ignore_errors=True)
