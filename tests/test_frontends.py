"""Several front ends under one arbiter (``--frontends 2``), through the real
server: both serve, one killed is replaced while the other serves on,
SIGTERM drains both, nothing outlives the arbiter, and KV updates on one key
from both front ends are not lost."""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio

from tests.helpers import ServerProcess, http, serving
from tests.redis_server import redis_server

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "hardproject"
KV_PROJECT = HERE / "kvproject"
_ARGS = ["-w", "4", "--frontends", "2", "--log-level", "debug"]


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start))
    return match.group(1) if match.groups() else match.group(0)


def _family(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children(recursive=True)


def _frontends(server: ServerProcess) -> dict[int, int]:
    """front-end index -> pid, from the arbiter's log."""
    found: dict[int, int] = {}
    for line in server.stderr_lines:
        match = re.search(r"front end (\d+) \(pid (\d+)\) ready", line)
        if match:
            found[int(match.group(1))] = int(match.group(2))
    return found


@pytest.fixture
async def two_fronts(cache_dir: Path) -> AsyncIterator[ServerProcess]:
    async with serving(PROJECT, _ARGS, cache_dir) as server:
        yield server


async def test_both_front_ends_serve(two_fronts: ServerProcess) -> None:
    assert sorted(_frontends(two_fronts)) == [0, 1]
    for _ in range(24):  # separate connections: the kernel spreads them by port
        assert (await http(two_fronts.port, "GET", "/hello")).status == 201
    served_by = {
        m.group(1)
        for line in two_fronts.stderr_lines
        if (m := re.search(r"frontend-(\d) .*dispatched", line))
    }
    assert served_by == {"0", "1"}
    # Each front end owns its share of the runners: 2 + 2.
    tree = {p.pid: p.children() for p in psutil.Process(two_fronts.proc.pid).children()}
    assert sorted(len(runners) for runners in tree.values()) == [2, 2]


async def test_a_killed_front_end_is_replaced_while_the_other_serves(two_fronts: ServerProcess) -> None:
    server = two_fronts
    victim_pid = _frontends(server)[0]
    victim_runners = psutil.Process(victim_pid).children()
    mark = len(server.stderr_lines)
    psutil.Process(victim_pid).kill()
    # Requests keep succeeding: the other front end serves, and connections
    # hashed to the dead one's socket wait for its replacement.
    statuses = [(await http(server.port, "GET", "/hello")).status for _ in range(12)]
    assert statuses == [201] * 12
    await _wait_log(server, rf"front end 0 \(pid {victim_pid}\) exited \(killed by SIGKILL\)", start=mark)
    new_pid = int(await _wait_log(server, r"front end 0 \(pid (\d+)\) ready", start=mark))
    assert new_pid != victim_pid
    _, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs(victim_runners, timeout=10))
    assert not alive  # its runners died with it


async def test_sigterm_drains_both_and_nothing_outlives_the_arbiter(cache_dir: Path) -> None:
    async with serving(PROJECT, _ARGS, cache_dir) as server:
        family = _family(server)
        assert len(family) == 6  # 2 front ends, 4 runners
        results: list[tuple[int, str]] = []

        async def slow() -> None:
            response = await http(server.port, "GET", "/slow")
            results.append((response.status, response.text))

        dispatched = r"frontend-(\d) .*dispatched"
        started, start = 0, 0
        seen: set[str] = set()
        async with trio.open_nursery() as nursery:
            # The kernel hashes each connection to one front end: start slow
            # requests one at a time until both have one in flight, then stop.
            while len(seen) < 2 and started < 12:
                nursery.start_soon(slow)
                started += 1
                seen.add(await _wait_log(server, dispatched, start=start))
                lines = server.lines
                start = 1 + next(i for i in range(start, len(lines)) if re.search(dispatched, lines[i]))
            server.signal(signal.SIGTERM)
        assert seen == {"0", "1"}
        assert results == [(200, "slow done")] * started
        assert await trio.to_thread.run_sync(server.wait_exit) == 0
        assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def test_a_killed_arbiter_takes_everything_with_it(two_fronts: ServerProcess) -> None:
    family = _family(two_fronts)
    two_fronts.proc.kill()
    _, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs(family, timeout=10))
    assert not alive


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_increments_from_both_front_ends_are_not_lost(
    cache_dir: Path, tmp_path: Path, backend: str
) -> None:
    with redis_server(tmp_path) if backend == "redis" else contextlib.nullcontext("") as redis_url:
        url = redis_url if backend == "redis" else f"sqlite://{tmp_path / 'kv.db'}"
        async with serving(KV_PROJECT, [*_ARGS, "--kv", url], cache_dir) as server:
            statuses: list[int] = []

            async def client() -> None:
                for _ in range(15):
                    statuses.append((await http(server.port, "GET", "/counter")).status)

            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(client)
            served_by = {
                m.group(1)
                for line in server.stderr_lines
                if (m := re.search(r"frontend-(\d) .*dispatched", line))
            }
            assert served_by == {"0", "1"}
            ok = statuses.count(200)
            assert ok >= len(statuses) * 0.9 and set(statuses) <= {200, 503}
            # The next increment reads exactly one more than every success so far.
            assert (await http(server.port, "GET", "/counter")).text == str(ok + 1)


def test_memory_kv_with_several_front_ends_is_a_startup_error(cache_dir: Path) -> None:
    server = ServerProcess(KV_PROJECT, ["--frontends", "2", "-w", "2"], cache_dir)
    try:
        assert server.wait_exit(60) == 1
        (line,) = [line for line in server.stderr_lines if line.startswith("error:")]
        assert "--kv sqlite:///" in line and "--frontends 1" in line
    finally:
        server.stop()
