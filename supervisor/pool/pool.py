"""The runner pool: N slots, each keeping one runner process alive.

* A slot starts its runner (through the factory it was given, so the pool can
  be tested with fake runners), handshakes, and puts it in the idle queue. The
  process belongs to the slot's nursery, so it is always reaped.
* A request leases an idle runner (waiting in FIFO order, bounded in number
  and in time: 503 beyond either), talks to it directly, and hands it back, or
  retires it. No extra task sits between a request and its runner.
* Who pays for a lost runner decides what happens next. A runner killed at a
  request's deadline, or dying during a request, is that request's fault: the
  request gets a typed failure and the slot starts a replacement at once. A
  runner that fails to boot, or dies on its own while idle, counts towards
  an exponential backoff, so a broken setup does not become a fork storm; the
  backoff stays short while no other runner is alive, so the server is never
  left without runners for long.
* If no runner has ever booted and every slot has failed to boot several times
  in a row, the pool halts with the runner's own error (:class:`RunnerBootError`).
* A runner is recycled between requests once it has served its request quota
  (with jitter, so runners do not all restart at once) or its RSS passes the
  ceiling.
* A request that has used ``demote_after_ms`` of CPU runs at the lowest CPU
  priority from then on (``supervisor/pool/demotion.py``); its runner is replaced
  afterwards when its priority cannot be raised back.
* :meth:`close` stops leasing; :meth:`hurry` cuts every in-flight request short
  (their runners are killed and the requests answered), so shutdown is bounded.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import trio

from ipc.messages import (
    PROTOCOL_VERSION,
    RUNNER_EXIT_PROTOCOL_ERROR,
    Configure,
    Failure,
    FailureKind,
    Invoke,
    Ready,
    Reply,
    WorkerSpec,
)
from supervisor.config import PoolSettings
from supervisor.ops import metrics
from supervisor.pool.backoff import HALT_AFTER_BOOT_FAILURES, STABLE_AFTER_S, backoff_delay
from supervisor.pool.demotion import Demoter
from supervisor.pool.exit_status import describe_exit
from supervisor.pool.members import REAP_WAIT_S, Member, Retired, Runner, RunnerFactory
from supervisor.pool.runners import RunnerLost, start_runner

log = logging.getLogger(__name__)

_RSS_CHECK_EVERY = 16


class Overloaded(Exception):
    """No runner could take the request in time (or too many are waiting)."""


class RunnerBootError(Exception):
    """No runner could ever boot; the message is the runner's own error."""


class Pool:
    def __init__(
        self,
        settings: PoolSettings,
        workers: list[WorkerSpec],
        cache_dir: Path,
        scratch_dir: Path,
        runner_factory: RunnerFactory = start_runner,
    ) -> None:
        self.settings = settings
        self._workers = workers
        self._cache_dir = cache_dir
        self._scratch_dir = scratch_dir
        self._start_runner = runner_factory
        # Unbounded: a runner that died while queued stays in the buffer until a
        # lease skips it, so the buffer can briefly hold more than N members.
        self._idle_send, self._idle = trio.open_memory_channel[Member](math.inf)
        self._waiting = 0
        self._closing = trio.Event()
        self._hurry_at: float | None = None
        self._in_flight: set[trio.CancelScope] = set()
        self._ids = itertools.count(1)
        self._ready_count = 0
        self._all_ready = trio.Event()
        self._ever_ready = False
        self._boot_failures = [0] * settings.workers
        self._alive = 0
        # Which generation of the project these runners serve (set by reloads).
        self.generation = 0
        self._halted: str | None = None
        self._slots_scope = trio.CancelScope()
        self.restarts = 0
        # slot -> its booted runner, for the admin listener (supervisor/ops/runner_state.py).
        self.members: dict[int, Member] = {}
        self._demoter = Demoter(
            settings.demote_after_ms / 1000, on_demote=lambda _pid, worker: metrics.request_demoted(worker)
        )

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
            engine=self.settings.engine,
        )

    async def prepare(self) -> dict[str, str]:
        """Compile every worker into the cache in a throwaway runner, so the
        pool's runners only deserialize. Returns worker_id -> load error.

        Raises:
            RunnerBootError: the runner could not be started or did not answer.
        """
        ready: Ready | None = None
        try:
            async with trio.open_nursery() as nursery:
                runner = await self._start_runner(nursery)
                try:
                    with trio.fail_after(max(self.settings.boot_timeout_s, 300)):
                        ready = await runner.handshake(self._configure(prepare=True))
                except (RunnerLost, trio.TooSlowError):
                    runner.kill()
                runner.close_stdin()
        except OSError as exc:
            raise RunnerBootError(f"cannot start a runner process: {exc}") from None
        shutil.rmtree(self._scratch_dir / str(runner.pid), ignore_errors=True)
        if ready is None:
            # Raised out here, not in the nursery: callers get one plain error.
            raise RunnerBootError(f"the compile step failed: {runner.boot_error()}")
        return ready.load_errors

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the slots until :meth:`close`; reports started once every slot
        has booted a runner or failed to.

        Raises:
            RunnerBootError: no runner ever booted (see the module docstring).
        """
        async with trio.open_nursery() as nursery:
            self._slots_scope = nursery.cancel_scope
            async with trio.open_nursery() as slots:
                for index in range(self.settings.workers):
                    slots.start_soon(self._slot, index)
                nursery.start_soon(self._demoter.run)
                await self._all_ready.wait()
                task_status.started()
            nursery.cancel_scope.cancel()  # every slot has ended: the demoter too
        if self._halted is not None:
            # Raised out here, not from a slot: callers get one plain error.
            raise RunnerBootError(self._halted)

    def close(self) -> None:
        """Stop leasing runners; idle ones are retired now, busy ones when their request ends."""
        self._closing.set()
        while True:
            try:
                self._idle.receive_nowait().retire(Retired.CLOSED)
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    def hurry(self, deadline: float) -> None:
        """Every request still running at ``deadline`` (trio time) is cut
        short: its runner is killed and it is answered 503."""
        self._hurry_at = deadline if self._hurry_at is None else min(self._hurry_at, deadline)
        for scope in self._in_flight:
            scope.deadline = min(scope.deadline, deadline)

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def submit(self, invoke: Invoke, deadline_s: float) -> Reply | Failure:
        """Run ``invoke`` on a leased runner; it is killed if it has not
        answered within ``deadline_s``.

        Raises:
            Overloaded: too many requests are already waiting for a runner, or
                none became free within the queue timeout, or the pool is closing.
        """
        for attempt in range(2):
            member = await self._lease()
            runner = member.runner
            log.debug("request %d dispatched to runner %d", invoke.request_id, runner.pid)
            started = trio.current_time()
            deadline = started + deadline_s
            if self._hurry_at is not None:
                deadline = min(deadline, self._hurry_at)
            scope = trio.CancelScope(shield=True, deadline=deadline)
            member.busy = True
            self._in_flight.add(scope)
            self._demoter.started(scope, runner.pid, invoke.worker_id)
            metrics.running(1)
            try:
                result = await runner.call(invoke, scope)
                metrics.fuel_used(invoke.worker_id, result.fuel_used)
            except RunnerLost as exc:
                if attempt == 0 and (not exc.delivered or await self._refused_its_input(runner)):
                    log.warning(
                        "runner %d had died while idle; request %d goes to another runner",
                        runner.pid,
                        invoke.request_id,
                    )
                    member.retire(Retired.CRASHED)
                    continue
                # The request provoked this (or was cut short): never a crash.
                member.retire(Retired.REQUEST_FAULT)
                with trio.CancelScope(shield=True):
                    return await self._lost(member, invoke, exc, trio.current_time() - started)
            finally:
                self._in_flight.discard(scope)
                if self._demoter.finished(scope):
                    member.retire(Retired.DEMOTED)
                metrics.running(-1)
                member.busy = False
            self._give_back(member)
            return result
        raise AssertionError("unreachable")

    async def _lease(self) -> Member:
        if self._closing.is_set():
            raise Overloaded("the server is shutting down")
        if self._waiting >= self.settings.queue_size:
            raise Overloaded("the request queue is full")
        # Fast path: a runner is idle right now (no cancel scope, no wait).
        while True:
            try:
                member = self._idle.receive_nowait()
            except trio.WouldBlock:
                break
            if self._usable(member):
                return member
        self._waiting += 1
        metrics.queued(1)
        try:
            with trio.move_on_after(self.settings.queue_timeout_s):
                while True:
                    member = await self._idle.receive()
                    if self._usable(member):  # skip runners that died while queued
                        return member
        finally:
            self._waiting -= 1
            metrics.queued(-1)
        raise Overloaded("no runner became free in time")

    @staticmethod
    def _usable(member: Member) -> bool:
        if member.reason is not None:
            return False
        # A runner stopped by a signal (SIGSTOP, a debugger) looks idle but
        # would never answer: the request leased to it would wait for its
        # whole deadline. One waitid() per lease finds it first.
        if member.runner.stopped():
            log.warning("runner %d was stopped by a signal; replacing it", member.runner.pid)
            member.runner.kill()
            member.retire(Retired.CRASHED)
            return False
        return True

    def _give_back(self, member: Member) -> None:
        runner = member.runner
        if self._closing.is_set():
            member.retire(Retired.CLOSED)
        elif runner.requests_served >= member.quota:
            log.info("runner %d recycled after %d requests", runner.pid, runner.requests_served)
            member.retire(Retired.RECYCLED)
        elif runner.requests_served % _RSS_CHECK_EVERY == 1 and (rss := runner.rss_bytes()) > self._ceiling:
            # Reading RSS costs a /proc read, so it is sampled (1st, 17th, ... request).
            log.warning(
                "runner %d recycled: RSS %d MiB over the %d MiB ceiling",
                runner.pid,
                rss >> 20,
                self._ceiling >> 20,
            )
            member.retire(Retired.RECYCLED)
        elif member.reason is None:
            self._idle_send.send_nowait(member)

    @property
    def _ceiling(self) -> int:
        return self.settings.max_runner_rss_mb << 20

    @staticmethod
    async def _refused_its_input(runner: Runner) -> bool:
        """Whether a runner that died with our frame written had stopped at a
        frame it could not read (written into its pipe by someone else):
        then ours was never run, and may go to another runner."""
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_WAIT_S):
            await runner.wait_exit()
        return runner.returncode == RUNNER_EXIT_PROTOCOL_ERROR

    async def _lost(self, member: Member, invoke: Invoke, exc: RunnerLost, elapsed: float) -> Failure:
        runner = member.runner
        with trio.move_on_after(REAP_WAIT_S):
            await runner.wait_exit()
        how = describe_exit(runner.returncode)
        kind, detail = exc.kind, exc.detail
        if self._hurry_at is not None and trio.current_time() >= self._hurry_at:
            kind, detail = FailureKind.OVERLOADED, "the server is shutting down"
        log.error("runner %d lost during request %d: %s (%s)", runner.pid, invoke.request_id, detail, how)
        return Failure(invoke.request_id, kind, f"{detail} ({how})", 0, int(elapsed * 1e6), b"")

    async def _watch_exit(self, member: Member) -> None:
        # A runner that dies while idle (OOM killer, a stray signal) is noticed
        # and replaced at once. One that dies while busy is the request's to
        # report: its exit is not a crash of its own.
        await member.runner.wait_exit()
        if member.reason is None and not member.busy:
            log.warning(
                "runner %d exited while idle (%s)",
                member.runner.pid,
                describe_exit(member.runner.returncode),
            )
            member.retire(Retired.CRASHED)

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

        while not self._closing.is_set():
            if failures:
                delay = backoff_delay(failures, others_alive=self._alive > 0)
                log.warning(
                    "runner slot %d: restarting in %.2f s after %d failure(s) in a row",
                    index,
                    delay,
                    failures,
                )
                with trio.move_on_after(delay):
                    await self._closing.wait()  # shutdown never waits for a backoff
                if self._closing.is_set():
                    break
            born = trio.current_time()
            reason = await self._run_one_runner(index, announce_ready)
            if reason is Retired.BOOT_FAILED and not self._ever_ready:
                # Startup waits while no runner has ever booted: either one
                # does, or the pool halts with the runner's own words.
                if min(self._boot_failures) >= HALT_AFTER_BOOT_FAILURES:
                    self._halted = self._last_boot_error
                    self._slots_scope.cancel()
                    return
            else:
                announce_ready()
            if reason is Retired.CLOSED:
                break
            self.restarts += 1
            metrics.runner_restarted(reason.value)
            if reason is Retired.BOOT_FAILED:
                failures += 1
            elif reason is Retired.CRASHED:
                failures = failures + 1 if trio.current_time() - born < STABLE_AFTER_S else 1
            else:
                failures = 0  # planned, or the request's fault: start again at once

    _last_boot_error = "no runner could start"

    async def _boot(self, index: int, nursery: trio.Nursery) -> Runner | None:
        try:
            runner = await self._start_runner(nursery)
        except OSError as exc:  # out of descriptors or processes: keep serving, retry later
            self._boot_failed(index, f"cannot start a runner process: {exc}")
            return None
        try:
            with trio.fail_after(self.settings.boot_timeout_s):
                await runner.handshake(self._configure(prepare=False))
        except (RunnerLost, trio.TooSlowError) as exc:
            runner.kill()
            with trio.move_on_after(REAP_WAIT_S):
                await runner.wait_exit()
            why = runner.boot_error() if isinstance(exc, RunnerLost) else "no answer in time"
            self._boot_failed(index, f"runner {runner.pid} failed to boot: {why}")
            return None
        self._boot_failures[index] = 0
        self._ever_ready = True
        return runner

    def _boot_failed(self, index: int, message: str) -> None:
        log.error("%s", message)
        self._boot_failures[index] += 1
        self._last_boot_error = message

    async def _run_one_runner(self, index: int, announce_ready: Callable[[], None]) -> Retired:
        """Boot one runner, lend it out until it is retired, and dispose of it."""
        pid: int | None = None
        try:
            async with trio.open_nursery() as nursery:
                runner = await self._boot(index, nursery)
                if runner is None:
                    return Retired.BOOT_FAILED
                pid = runner.pid
                jitter = min(self.settings.max_requests_jitter, self.settings.max_requests // 10)
                member = Member(runner, self.settings.max_requests + random.randint(0, jitter))
                self.members[index] = member
                log.debug("runner %d ready in slot %d", runner.pid, index)
                announce_ready()
                self._alive += 1
                try:
                    if self._closing.is_set():
                        member.retire(Retired.CLOSED)
                    else:
                        self._idle_send.send_nowait(member)
                    nursery.start_soon(self._watch_exit, member)
                    await member.retired.wait()
                finally:
                    self._alive -= 1
                assert member.reason is not None
                if member.reason in (Retired.CRASHED, Retired.REQUEST_FAULT):
                    runner.kill()
                else:
                    runner.close_stdin()
                    with trio.move_on_after(REAP_WAIT_S):
                        await runner.wait_exit()
                    runner.kill()  # an idle runner that ignores EOF is not waited for
                return member.reason
        finally:
            self.members.pop(index, None)
            if pid is not None:
                shutil.rmtree(self._scratch_dir / str(pid), ignore_errors=True)
