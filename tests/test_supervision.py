"""Supervision: crashes, kills, overload, recycling, shutdown, startup errors,
and no zombies or leaked fds along the way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio

from tests.helpers import REPO, TEST_PROJECT, ServerProcess, http, serving


@pytest.fixture
async def solo_server(cache_dir: Path) -> AsyncIterator[ServerProcess]:
    """One runner, generous limits, debug log (dispatch lines name the runner pid)."""
    async with serving(
        TEST_PROJECT, ["-w", "1", "--timeout-ms", "20000", "--log-level", "debug"], cache_dir
    ) as server:
        yield server


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start))
    return match.group(1) if match.groups() else match.group(0)


def _runners(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children()


async def test_runner_sigkilled_mid_request_is_502_and_replaced(solo_server: ServerProcess) -> None:
    result: dict[str, object] = {}

    async def slow_request() -> None:
        result["response"] = await http(solo_server.port, "GET", "/sleep")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_request)
        pid = int(await _wait_log(solo_server, r"request \d+ dispatched to runner (\d+)"))
        os.kill(pid, signal.SIGKILL)
    response = result["response"]
    assert response.status == 502  # type: ignore[attr-defined]
    assert response.headers["x-wws-failure"] == "runner-died"  # type: ignore[attr-defined]
    await _wait_log(solo_server, rf"runner {pid} lost during request \d+: .*killed by SIGKILL")
    for _ in range(3):
        assert (await http(solo_server.port, "GET", "/hello")).status == 201
    assert pid not in [p.pid for p in _runners(solo_server)]


async def test_runner_dying_while_idle_costs_no_request(solo_server: ServerProcess) -> None:
    (runner,) = _runners(solo_server)
    mark = len(solo_server.stderr_lines)
    runner.kill()
    runner.wait(5)
    # Its slot notices at once, with no request in sight, and starts another.
    await _wait_log(solo_server, rf"runner {runner.pid} exited while idle", start=mark)
    replacement = await _wait_log(solo_server, r"runner (\d+) ready in slot 0", start=mark)
    response = await http(solo_server.port, "GET", "/hello")
    assert response.status == 201
    await _wait_log(solo_server, rf"request \d+ dispatched to runner {replacement}", start=mark)
    assert not any("had died while idle" in line for line in solo_server.stderr_lines[mark:])


async def test_repeated_crashes_back_off(solo_server: ServerProcess) -> None:
    delays = []
    for attempt in range(1, 4):
        mark = len(solo_server.stderr_lines)
        (runner,) = _runners(solo_server)
        runner.kill()
        runner.wait(5)
        # The pool notices at the next request (or at once if a request is in flight).
        assert (await http(solo_server.port, "GET", "/hello")).status == 201
        delays.append(await _wait_log(solo_server, r"restarting in ([\d.]+) s after \d+ failure", start=mark))
        assert f"after {attempt} failure" in solo_server.stderr_lines[-1] or any(
            f"after {attempt} failure" in line for line in solo_server.stderr_lines[mark:]
        )
    assert [float(d) for d in delays] == sorted(float(d) for d in delays)
    assert float(delays[2]) > float(delays[0])


async def test_overload_answers_503_with_retry_after(cache_dir: Path) -> None:
    args = [
        "-w",
        "1",
        "--queue-size",
        "1",
        "--queue-timeout-ms",
        "200",
        "--timeout-ms",
        "3000",
        "--log-level",
        "debug",
    ]
    async with serving(TEST_PROJECT, args, cache_dir) as server:
        port = server.port
        statuses: list[int] = []

        async def occupy() -> None:
            statuses.append((await http(port, "GET", "/slow")).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(occupy)
            await _wait_log(server, r"request \d+ dispatched to runner (\d+)")
            queued = await http(port, "GET", "/hello")
        assert queued.status == 503
        assert queued.headers["retry-after"] == "1"
        assert queued.headers["x-wws-failure"] == "overloaded"
        assert statuses == [200]


async def test_runner_recycled_after_max_requests(cache_dir: Path) -> None:
    async with serving(
        TEST_PROJECT, ["-w", "1", "--max-requests", "3", "--log-level", "debug"], cache_dir
    ) as server:
        port = server.port
        (first,) = _runners(server)
        for _ in range(3):
            assert (await http(port, "GET", "/hello")).status == 201
        await _wait_log(server, rf"runner {first.pid} recycled after 3 requests")
        assert (await http(port, "GET", "/hello")).status == 201
        first.wait(5)  # exited and reaped, not a zombie
        assert [p.pid for p in _runners(server)] != [first.pid]


async def test_runner_recycled_over_its_rss_ceiling(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "1", "--max-runner-rss-mb", "1"], cache_dir) as server:
        port = server.port
        assert (await http(port, "GET", "/hello")).status == 201
        await _wait_log(server, r"recycled: RSS \d+ MiB over the 1 MiB ceiling")
        assert (await http(port, "GET", "/hello")).status == 201


async def test_sigterm_drains_in_flight_requests_and_exits_0(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "2", "--log-level", "debug"], cache_dir) as server:
        port = server.port
        runners = _runners(server)
        result: dict[str, object] = {}

        async def in_flight() -> None:
            result["response"] = await http(port, "GET", "/slow")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_flight)
            await _wait_log(server, r"request \d+ dispatched to runner (\d+)")
            server.signal(signal.SIGTERM)
        response = result["response"]
        assert (response.status, response.text) == (200, "slow done")  # type: ignore[attr-defined]
        assert await trio.to_thread.run_sync(server.wait_exit) == 0
        for runner in runners:
            assert not runner.is_running()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_sigint_also_stops_cleanly(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "1"], cache_dir) as server:
        server.signal(signal.SIGINT)
        assert await trio.to_thread.run_sync(server.wait_exit) == 0


async def test_no_zombies_or_fd_leaks_after_kills_and_timeouts(cache_dir: Path) -> None:
    args = ["-w", "2", "--timeout-ms", "300", "--fuel", "10000000", "--log-level", "debug"]
    async with serving(TEST_PROJECT, args, cache_dir) as server:
        port = server.port
        supervisor = psutil.Process(server.proc.pid)
        assert (await http(port, "GET", "/hello")).status == 201
        fds_before = supervisor.num_fds()
        for _ in range(3):
            assert (await http(port, "GET", "/sleep")).status == 504  # runner killed at the deadline
            assert (await http(port, "GET", "/loop")).status == 504
            assert (await http(port, "GET", "/trap")).status == 500
            victim = supervisor.children()[0]
            mark = len(server.stderr_lines)
            victim.kill()
            victim.wait(5)
            # Its own slot restarts it (after a short backoff: it died on its own).
            slot = await _wait_log(server, r"runner slot (\d+): restarting in", start=mark)
            await _wait_log(server, rf"runner (\d+) ready in slot {slot}", start=mark)
        for _ in range(4):
            assert (await http(port, "GET", "/hello")).status == 201
        children = supervisor.children()
        assert len(children) == 2
        assert all(child.status() != psutil.STATUS_ZOMBIE for child in children)
        # Nine runners were replaced above, each with two pipes: a leak would
        # show as 18+ extra descriptors. A client connection still closing
        # may account for one or two either way.
        assert supervisor.num_fds() <= fds_before + 2


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_missing_path_is_a_one_line_error() -> None:
    result = _run_cli("/no/such/folder")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: there is no folder at /no/such/folder; pass the folder that holds your workers"
    ]


def test_busy_port_is_a_one_line_error(cache_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_cli(str(TEST_PROJECT), "-p", str(port), "--cache-dir", str(cache_dir))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in line


def test_invalid_wasm_is_a_one_line_error(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "broken.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00garbage")
    result = _run_cli(str(tmp_path), "-p", "0", "--cache-dir", str(cache_dir))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot load worker broken.wasm: invalid WebAssembly module")
    assert "Traceback" not in result.stderr


def test_unreadable_worker_is_a_one_line_error(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "gone.wasm").symlink_to(tmp_path / "missing-target.wasm")
    result = _run_cli(str(tmp_path), "-p", "0", "--cache-dir", str(cache_dir))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line == "error: cannot load worker gone.wasm: cannot read the file: No such file or directory"


def test_unknown_import_is_reported_at_startup(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "needs.wat").write_text('(module (import "env" "mystery" (func)) (func (export "_start")))')
    result = _run_cli(str(tmp_path), "-p", "0", "--cache-dir", str(cache_dir))
    assert result.returncode == 1
    assert "cannot load worker needs.wat: cannot link the module" in result.stderr
    assert "mystery" in result.stderr


def test_help_teaches() -> None:
    result = _run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--host",
        "--port",
        "--prefix",
        "--ignore",
        "--workers",
        "--fuel",
        "--memory-mb",
        "--timeout-ms",
        "--max-body-kb",
        "--version",
        "x-wws-failure",
    ):
        assert flag in result.stdout


def test_version() -> None:
    result = _run_cli("-V")
    assert result.returncode == 0
    assert result.stdout.startswith("wws-supervisor ")
