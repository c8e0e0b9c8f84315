"""The pool alone: fake runners and trio's autojump clock, so backoff,
recycling, overload, idle death, deadline kills, retry and shutdown are tested
in virtual time, without processes. (tests/test_supervision.py does the same
end to end with real runners.)"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from ipc.messages import PROTOCOL_VERSION, Configure, Failure, FailureKind, Invoke, Ready, Reply
from supervisor.config import PoolSettings
from supervisor.pool.backoff import HALT_AFTER_BOOT_FAILURES, backoff_delay
from supervisor.pool.pool import Overloaded, Pool, RunnerBootError
from supervisor.pool.runners import RunnerLost

# Above any pid_max: no real process is ever taken for a fake runner.
_pids = itertools.count(1 << 23)


class FakeRunner:
    """Answers each request as ``behaviour(worker_id)`` says: "ok", "hang"
    (never answers), "die" (exits mid-request) or "gone" (already dead)."""

    def __init__(self, boots: bool = True) -> None:
        self.pid = next(_pids)
        self.requests_served = 0
        self._boots = boots
        self._returncode: int | None = None
        self._exited = trio.Event()

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def exit(self, code: int) -> None:
        if self._returncode is None:
            self._returncode = code
            self._exited.set()

    async def handshake(self, configure: Configure) -> Ready:
        if not self._boots:
            self.exit(3)
            raise RunnerLost(FailureKind.RUNNER_DIED, "the runner closed its pipe")
        return Ready(0, PROTOCOL_VERSION, self.pid, {})

    async def call(self, invoke: Invoke, scope: trio.CancelScope) -> Reply | Failure:
        with scope:
            if self._returncode is not None or invoke.worker_id == "gone":
                raise RunnerLost(FailureKind.RUNNER_DIED, "closed", delivered=False)
            if invoke.worker_id == "hang":
                await trio.sleep_forever()
            if invoke.worker_id == "die":
                self.exit(-9)
                raise RunnerLost(FailureKind.RUNNER_DIED, "the runner closed its pipe")
            await trio.sleep(0.001)
            self.requests_served += 1
            return Reply(invoke.request_id, 200, [], b"ok", {}, [], 1, 1, b"")
        self.kill()
        raise RunnerLost(FailureKind.TIMEOUT, "no answer before the deadline; runner killed")

    async def wait_exit(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    def kill(self) -> None:
        self.exit(-9)

    def close_stdin(self) -> None:
        self.exit(0)

    def rss_bytes(self) -> int:
        return 1 << 20

    def boot_error(self) -> str:
        return "boot failed: the engine is broken"

    def stopped(self) -> bool:
        return False


@dataclasses.dataclass
class Factory:
    """Hands out fake runners and records when each was started."""

    boots: Callable[[int], bool] = lambda n: True
    spawn_error: Callable[[int], bool] = lambda n: False
    runners: list[FakeRunner] = dataclasses.field(default_factory=list)
    started_at: list[float] = dataclasses.field(default_factory=list)
    attempts: int = 0

    changed: trio.Event = dataclasses.field(default_factory=trio.Event)

    async def wait_for_attempts(self, count: int) -> None:
        while self.attempts < count:
            await self.changed.wait()

    async def __call__(self, nursery: trio.Nursery) -> FakeRunner:
        self.attempts += 1
        self.changed.set()
        self.changed = trio.Event()
        if self.spawn_error(self.attempts):
            raise OSError(24, "Too many open files")
        runner = FakeRunner(self.boots(self.attempts))
        self.runners.append(runner)
        self.started_at.append(trio.current_time())
        return runner


MakePool = Callable[..., Awaitable[Pool]]


def _invoke(worker_id: str = "hello", request_id: int = 1) -> Invoke:
    return Invoke(request_id, worker_id, "GET", "http://x/", [], b"", {}, {}, 1, 1 << 20, 1000)


@pytest.fixture
def settings() -> PoolSettings:
    return PoolSettings(
        workers=2, queue_size=4, queue_timeout_s=5.0, max_requests=1000, max_requests_jitter=0
    )


@pytest.fixture
async def make_pool(nursery: trio.Nursery, tmp_path: Path, settings: PoolSettings) -> AsyncIterator[MakePool]:
    pools: list[Pool] = []

    async def make(factory: Factory, custom: PoolSettings | None = None) -> Pool:
        pool = Pool(custom or settings, [], tmp_path, tmp_path, runner_factory=factory)
        pools.append(pool)
        await nursery.start(pool.run)
        return pool

    yield make
    for pool in pools:
        pool.close()


def test_backoff_is_short_while_no_other_runner_is_alive() -> None:
    assert backoff_delay(0, others_alive=True) == 0
    assert [backoff_delay(n, others_alive=True) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert backoff_delay(20, others_alive=True) == 10.0
    assert backoff_delay(20, others_alive=False) == 0.5


async def test_deadline_kill_is_the_requests_fault_not_a_crash(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool
) -> None:
    factory = Factory()
    pool = await make_pool(factory)
    for _ in range(5):
        before = len(factory.runners)
        t0 = trio.current_time()
        result = await pool.submit(_invoke("hang"), deadline_s=2.0)
        assert isinstance(result, Failure) and result.kind == FailureKind.TIMEOUT
        assert trio.current_time() - t0 == pytest.approx(2.0, abs=0.01)
        await trio.testing.wait_all_tasks_blocked()
        # Replaced at once, with no backoff, however often it happens.
        assert len(factory.runners) == before + 1
        assert factory.started_at[-1] == pytest.approx(trio.current_time(), abs=0.01)
    assert (await pool.submit(_invoke(), 2.0)).status == 200


async def test_death_during_a_request_is_502_and_no_backoff(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool
) -> None:
    factory = Factory()
    pool = await make_pool(factory)
    for _ in range(4):
        result = await pool.submit(_invoke("die"), 2.0)
        assert isinstance(result, Failure) and result.kind == FailureKind.RUNNER_DIED
        await trio.testing.wait_all_tasks_blocked()
        assert factory.started_at[-1] == pytest.approx(trio.current_time(), abs=0.01)


async def test_idle_deaths_back_off_exponentially(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "supervisor.pool.pool")
    factory = Factory()
    await make_pool(factory)
    gaps = []
    for _ in range(4):
        victim = factory.runners[-1]
        died = trio.current_time()
        victim.exit(-9)  # dies on its own while idle
        await factory.wait_for_attempts(factory.attempts + 1)
        gaps.append(round(factory.started_at[-1] - died, 2))
    # The other slot's runner is alive, so the full exponential backoff applies.
    assert gaps == [0.05, 0.1, 0.2, 0.4]
    assert "exited while idle" in caplog.text


async def test_no_runner_ever_boots_halts_with_the_runners_words(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, settings: PoolSettings
) -> None:
    factory = Factory(boots=lambda n: False)
    pool = Pool(settings, [], tmp_path, tmp_path, runner_factory=factory)
    with pytest.raises(RunnerBootError, match="the engine is broken"):
        await pool.run()
    assert factory.attempts == settings.workers * HALT_AFTER_BOOT_FAILURES


async def test_boot_failures_after_startup_keep_serving(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool
) -> None:
    factory = Factory(boots=lambda n: n <= 2)  # the first two boot, later ones fail
    pool = await make_pool(factory)
    factory.runners[0].exit(-9)
    await trio.sleep(30)  # many failed boots, in virtual time
    assert factory.attempts > 2 + HALT_AFTER_BOOT_FAILURES
    assert (await pool.submit(_invoke(), 2.0)).status == 200


async def test_spawn_errors_are_retried_while_serving(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory(spawn_error=lambda n: 3 <= n <= 6)
    pool = await make_pool(factory)
    factory.runners[0].exit(-9)
    assert (await pool.submit(_invoke(), 2.0)).status == 200
    await factory.wait_for_attempts(7)
    await trio.testing.wait_all_tasks_blocked()
    assert len(factory.runners) == 3
    assert "Too many open files" in caplog.text


async def test_recycled_at_its_quota(autojump_clock: trio.testing.MockClock, make_pool: MakePool) -> None:
    factory = Factory()
    pool = await make_pool(factory, PoolSettings(workers=1, max_requests=3, max_requests_jitter=0))
    first = factory.runners[0]
    for _ in range(3):
        assert (await pool.submit(_invoke(), 2.0)).status == 200
    await trio.testing.wait_all_tasks_blocked()
    assert first.returncode == 0  # asked to exit, not killed
    assert len(factory.runners) == 2
    assert (await pool.submit(_invoke(), 2.0)).status == 200


async def test_overload_bounds_the_queue_and_the_wait(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool
) -> None:
    factory = Factory()
    pool = await make_pool(factory, PoolSettings(workers=1, queue_size=1, queue_timeout_s=3.0))
    outcomes: list[str] = []

    async def busy() -> None:
        await pool.submit(_invoke("hang"), 60.0)

    async def queued() -> None:
        t0 = trio.current_time()
        try:
            await pool.submit(_invoke(), 60.0)
        except Overloaded:
            outcomes.append(f"timed out after {trio.current_time() - t0:.1f}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queued)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded, match="queue is full"):
            await pool.submit(_invoke(), 60.0)
        await trio.sleep(4)
        assert outcomes == ["timed out after 3.0"]
        nursery.cancel_scope.cancel()


async def test_a_runner_dead_before_delivery_is_retried_elsewhere(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool
) -> None:
    factory = Factory()
    pool = await make_pool(factory)
    factory.runners[0]._returncode = -9  # dead, but its slot has not noticed yet
    results = [await pool.submit(_invoke(), 2.0) for _ in range(2)]
    assert [r.status for r in results] == [200, 200]


async def test_hurry_cuts_in_flight_requests_short(
    autojump_clock: trio.testing.MockClock, make_pool: MakePool
) -> None:
    factory = Factory()
    pool = await make_pool(factory)
    result: list[Reply | Failure] = []

    async def long_request() -> None:
        result.append(await pool.submit(_invoke("hang"), 600.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_request)
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        pool.close()
        pool.hurry(t0 + 1.5)
    assert trio.current_time() - t0 == pytest.approx(1.5, abs=0.01)
    assert isinstance(result[0], Failure) and result[0].kind == FailureKind.OVERLOADED


async def test_close_does_not_wait_for_a_backoff(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    factory = Factory(boots=lambda n: n <= 2)
    pool = Pool(PoolSettings(workers=2), [], tmp_path, tmp_path, runner_factory=factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        for runner in factory.runners:
            runner.exit(-9)
        await trio.sleep(20)  # both slots deep in backoff now
        t0 = trio.current_time()
        pool.close()
    assert trio.current_time() - t0 < 0.01
