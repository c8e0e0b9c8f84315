"""A request that burns CPU loses its runner's priority, and gets it back (or
its runner is replaced) afterwards: supervisor/pool/demotion.py, through real
runner processes and a real server."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio

from supervisor.pool.demotion import DEMOTED_NICE, Demoter, cpu_seconds, set_nice
from tests.helpers import TEST_PROJECT, ServerProcess, http, serving
from tests.test_admin import admin_port, scrape, value

_DEMOTED = r"runner (\d+): its request has used \d+ ms of CPU; it runs at the lowest priority now"
# Long enough that the test looks at the runner while the loop still runs.
_LOOP_ARGS = ["--fuel", "1000000000000", "--timeout-ms", "3000", "--demote-after-ms", "50"]
_IS_ROOT = os.geteuid() == 0


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


async def _wait_line(server: ServerProcess, pattern: str, start: int = 0) -> re.Match[str]:
    return await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start, timeout=30))


def test_cpu_seconds_reads_this_process() -> None:
    assert cpu_seconds(os.getpid()) is not None
    assert cpu_seconds(1 << 23) is None  # above any pid_max


@contextlib.asynccontextmanager
async def _demoted_busy_process(worker: str) -> AsyncIterator[tuple[Demoter, int]]:
    """A process burning a core, already demoted by a Demoter (50 ms) as
    ``worker``'s request "first"; killed on exit."""
    busy = await trio.lowlevel.open_process([sys.executable, "-c", "while True: pass"])
    try:
        demoted = trio.Event()
        demoter = Demoter(0.05, on_demote=lambda pid, worker: demoted.set())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(demoter.run)
            demoter.started("first", busy.pid, worker)
            with trio.fail_after(10):
                await demoted.wait()
            nursery.cancel_scope.cancel()
        yield demoter, busy.pid
    finally:
        busy.kill()
        await busy.wait()


async def test_a_busy_process_is_demoted_and_raised_back_when_allowed() -> None:
    async with _demoted_busy_process("busy.wasm") as (demoter, pid):
        assert _nice(pid) == DEMOTED_NICE
        may_raise = _may_raise()
        # True means: the caller must replace it.
        assert demoter.finished("first") is (not may_raise)
        assert _nice(pid) == (0 if may_raise else DEMOTED_NICE)


async def test_a_quiet_request_is_never_demoted() -> None:
    quiet = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert quiet.stdin is not None and quiet.stdout is not None
    try:
        said = b""
        while not said.endswith(b"\n"):  # its own start-up CPU is behind it
            said += await quiet.stdout.receive_some()
        demoter = Demoter(0.02)
        demoter.started("request", quiet.pid, "quiet.wasm")
        with trio.move_on_after(0.3):
            await demoter.run()  # looks a dozen times at a process that uses no CPU
        assert demoter.demotions == 0
        assert demoter.finished("request") is False
        assert _nice(quiet.pid) == 0
    finally:
        await quiet.stdin.aclose()  # it ends
        await quiet.wait()


async def test_a_worker_demoted_once_starts_low_until_it_is_short_again() -> None:
    async with _demoted_busy_process("loop.wasm") as (demoter, pid):
        demoter.finished("first")
        # The next request of the same worker is demoted from its start,
        # before any look at its CPU.
        demoter.started("second", pid, "loop.wasm")
        assert _nice(pid) == DEMOTED_NICE
        demoter.finished("second")  # short: under 50 ms
        if _may_raise():
            assert _nice(pid) == 0
            demoter.started("third", pid, "loop.wasm")
            assert _nice(pid) == 0  # short last time: forgiven
            demoter.finished("third")


def _may_raise() -> bool:
    return _IS_ROOT or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


def test_set_nice_on_a_gone_process_is_harmless() -> None:
    assert set_nice(1 << 23, DEMOTED_NICE) is True


@pytest.mark.skipif(not _IS_ROOT, reason="raising a priority back needs CAP_SYS_NICE or RLIMIT_NICE >= 20")
async def test_a_runaway_runs_at_the_lowest_priority_then_its_runner_gets_it_back(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "2", *_LOOP_ARGS], cache_dir) as server:
        async with trio.open_nursery() as nursery:
            loop_status: list[int] = []

            async def run_loop() -> None:
                loop_status.append((await http(server.port, "GET", "/loop")).status)

            nursery.start_soon(run_loop)
            pid = int((await _wait_line(server, _DEMOTED)).group(1))
            assert _nice(pid) == DEMOTED_NICE
            # The other runner still serves at its normal priority meanwhile.
            assert (await http(server.port, "GET", "/hello")).status == 201
        assert loop_status == [504]
        assert _nice(pid) == 0  # raised back: the runner stays
        assert psutil.pid_exists(pid)
        assert not any("replaced afterwards" in line for line in server.lines)


async def test_a_demoted_runner_is_replaced_when_its_priority_cannot_be_raised(cache_dir: Path) -> None:
    # As root, CAP_SYS_NICE would allow it: start the server without it.
    prefix = ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice"] if _IS_ROOT else []
    rlimits = {resource.RLIMIT_NICE: (0, 0)}
    args = ["-w", "2", "--log-level", "debug", *_LOOP_ARGS]
    async with serving(TEST_PROJECT, args, cache_dir, rlimits=rlimits, command_prefix=prefix) as server:
        mark = len(server.lines)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(http, server.port, "GET", "/loop"))
            pid = int((await _wait_line(server, _DEMOTED, mark)).group(1))
        await _wait_line(server, r"replaced afterwards: this process may not raise a priority back", mark)
        await _wait_line(server, r"runner \d+ ready in slot", mark)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        for _ in range(4):
            assert (await http(server.port, "GET", "/hello")).status == 201


async def test_demotion_can_be_turned_off(cache_dir: Path) -> None:
    args = ["-w", "2", *_LOOP_ARGS, "--demote-after-ms", "0", "--timeout-ms", "600"]
    async with serving(TEST_PROJECT, args, cache_dir) as server:
        assert (await http(server.port, "GET", "/loop")).status == 504
        assert not any(re.search(_DEMOTED, line) for line in server.lines)


async def test_a_runaway_route_starts_low_from_its_second_request(cache_dir: Path) -> None:
    args = ["-w", "2", "--log-level", "debug", *_LOOP_ARGS, "--timeout-ms", "400"]
    async with serving(TEST_PROJECT, args, cache_dir) as server:
        assert (await http(server.port, "GET", "/loop")).status == 504
        await _wait_line(server, _DEMOTED)
        mark = len(server.lines)
        assert (await http(server.port, "GET", "/loop")).status == 504
        await _wait_line(server, r"runner \d+: loop.wat ran long before; it starts at the lowest", mark)
        # Other routes are not affected.
        assert (await http(server.port, "GET", "/hello")).status == 201
        assert not any("hello.wat ran long before" in line for line in server.lines)


async def test_demotions_are_counted_by_worker(cache_dir: Path) -> None:
    args = ["-w", "2", "--admin", "127.0.0.1:0", *_LOOP_ARGS, "--timeout-ms", "400"]
    async with serving(TEST_PROJECT, args, cache_dir) as server:
        admin = await trio.to_thread.run_sync(lambda: admin_port(server))
        for _ in range(2):  # the second starts demoted: counted too
            assert (await http(server.port, "GET", "/loop")).status == 504
        assert (await http(server.port, "GET", "/hello")).status == 201
        samples = await scrape(admin)
        assert value(samples, "wws_request_demotions_total", worker="loop.wat") == 2
        assert value(samples, "wws_request_demotions_total", worker="hello.wat") == 0
