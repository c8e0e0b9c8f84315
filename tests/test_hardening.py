"""Regression tests for the supervisor side of the hardening issue, each end to
end through a real server: request-provoked kills never feed the backoff,
runners die with their supervisor, spawn failures and descriptor exhaustion do
not stop the server, slow and malformed clients are bounded, shutdown keeps
to its grace, and startup problems are one line."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from supervisor.pool.runners import start_runner
from tests.helpers import REPO, ServerProcess, http, parse_response, serving

PROJECT = Path(__file__).resolve().parent / "hardproject"
JS_PROJECT = Path(__file__).resolve().parent / "jsproject"


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start))
    return match.group(1) if match.groups() else match.group(0)


def _runners(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children()


def _scratch_of(pid: int) -> Path:
    for folder in Path("/dev/shm").glob("wws-supervisor-*"):
        owner = folder / "owner"
        if owner.exists() and owner.read_text().split()[0] == str(pid):
            return folder
    raise AssertionError(f"no scratch folder owned by {pid}")


async def _request_ignoring_errors(port: int, target: str) -> None:
    # The server is killed under this request: whatever comes back is fine.
    with contextlib.suppress(OSError, IndexError, ValueError, trio.BrokenResourceError):
        await http(port, "GET", target)


def _raw_exchange(port: int, request: bytes, timeout: float = 10) -> tuple[bytes, bool]:
    """Send ``request`` and read until the server closes or goes quiet;
    returns what came back and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                return data, False
            if not chunk:
                return data, True
            data += chunk


async def test_deadline_kills_never_back_off(cache_dir: Path) -> None:
    args = ["-w", "2", "--timeout-ms", "300", "--log-level", "debug"]
    async with serving(PROJECT, args, cache_dir) as server:
        for _ in range(4):
            mark = len(server.stderr_lines)
            response = await http(server.port, "GET", "/sleep")  # blocked in a host call: killed
            assert response.status == 504
            await _wait_log(server, r"runner \d+ ready in slot", start=mark)
            assert (await http(server.port, "GET", "/hello")).status == 201
        assert not [line for line in server.stderr_lines if "restarting in" in line]


async def test_runners_die_with_a_killed_supervisor_and_its_scratch_is_cleaned(cache_dir: Path) -> None:
    args = ["-w", "2", "--timeout-ms", "60000", "--log-level", "debug"]
    async with serving(PROJECT, args, cache_dir) as server:
        scratch = _scratch_of(server.proc.pid)
        runners = _runners(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_request_ignoring_errors, server.port, "/sleep")
            stuck = int(await _wait_log(server, r"request \d+ dispatched to runner (\d+)"))
            (idle,) = [r for r in runners if r.pid != stuck]
            idle.suspend()  # a stopped runner cannot act on anything itself
            server.proc.kill()
            _, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs(runners, timeout=10))
            nursery.cancel_scope.cancel()
        assert not alive, f"orphaned runners: {alive}"
        assert scratch.exists()
    # The next start removes what the killed supervisor left behind.
    async with serving(PROJECT, ["-w", "1"], cache_dir) as server:
        assert not scratch.exists()
        assert _scratch_of(server.proc.pid).exists()


async def test_spawn_failure_is_retried_while_the_server_keeps_running(cache_dir: Path) -> None:
    # 64 descriptors and no connection cap: the clients below exhaust them.
    args = ["-w", "1", "--max-connections", "1000", "--log-level", "debug"]
    async with serving(PROJECT, args, cache_dir, rlimits={resource.RLIMIT_NOFILE: (64, 64)}) as server:
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(80)]
        try:
            await _wait_log(server, r"cannot accept a connection")
            mark = len(server.stderr_lines)
            (runner,) = _runners(server)
            runner.kill()
            await _wait_log(server, r"cannot start a runner process: .*Too many open files", start=mark)
            assert server.proc.poll() is None
        finally:
            for client in clients:
                client.close()
        await _wait_log(server, r"runner \d+ ready in slot 0", start=mark)
        assert (await http(server.port, "GET", "/hello")).status == 201


async def test_connections_beyond_the_cap_get_503_and_runners_still_respawn(cache_dir: Path) -> None:
    args = ["-w", "1", "--max-connections", "4", "--log-level", "debug"]
    async with serving(PROJECT, args, cache_dir) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        try:
            refused, closed = await trio.to_thread.run_sync(
                _raw_exchange, server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert closed
            response = parse_response(refused)
            assert response.status == 503 and response.headers["retry-after"] == "1"
            await _wait_log(server, r"4 connections open \(the --max-connections limit\)")
            # A held connection is served; a lost runner is replaced meanwhile.
            mark = len(server.stderr_lines)
            _runners(server)[0].kill()
            await _wait_log(server, r"runner \d+ ready in slot 0", start=mark)
            held[0].sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await trio.to_thread.run_sync(lambda: held[0].recv(65536))
            assert parse_response(data).status == 201
        finally:
            for conn in held:
                conn.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        # A body that stops arriving.
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        # A huge chunk announced, nothing sent.
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFF\r\nabc",
    ],
    ids=["trickled-body", "announced-chunk"],
)
async def test_a_body_that_does_not_arrive_gets_408_and_a_closed_connection(
    cache_dir: Path, request_bytes: bytes
) -> None:
    async with serving(PROJECT, ["-w", "1", "--body-timeout-ms", "300"], cache_dir) as server:
        data, closed = await trio.to_thread.run_sync(_raw_exchange, server.port, request_bytes)
        response = parse_response(data)
        assert (response.status, response.headers["x-wws-failure"]) == (408, "body-timeout")
        assert closed
        assert (await http(server.port, "GET", "/hello")).status == 201


async def test_content_length_with_transfer_encoding_is_refused_and_closed(cache_dir: Path) -> None:
    smuggled = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
        % len(body)
    ) + body
    async with serving(PROJECT, ["-w", "1"], cache_dir) as server:
        data, closed = await trio.to_thread.run_sync(_raw_exchange, server.port, request)
        assert closed
        assert data.count(b"HTTP/1.1 ") == 1  # the smuggled request is never answered
        assert parse_response(data).status == 400


async def test_204_carries_no_body_and_no_length(cache_dir: Path) -> None:
    # Pipelined on one connection: a stray body or length would corrupt the next response.
    request = (
        b"GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    async with serving(PROJECT, ["-w", "1"], cache_dir) as server:
        data, _ = await trio.to_thread.run_sync(_raw_exchange, server.port, request)
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"204 ")
    assert b"content-length" not in first.lower() and first.endswith(b"\r\n\r\n")
    assert parse_response(b"HTTP/1.1 " + second).text == "hello"


def _run_cli(
    args: list[str], rlimits: dict[int, tuple[int, int]] | None = None
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        for which, value in (rlimits or {}).items():
            resource.setrlimit(which, value)

    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        preexec_fn=limit if rlimits else None,
    )


def test_an_unusable_cache_dir_is_one_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    result = _run_cli([str(PROJECT), "-p", "0", "--cache-dir", str(not_a_folder)])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert str(not_a_folder) in last and "--cache-dir" in last


def test_runners_that_cannot_boot_stop_startup_with_their_own_error(cache_dir: Path) -> None:
    # No memory layout fits in 400 MiB of address space, not even memories
    # mapped on demand (runner.engines.engine), so no runner could ever boot.
    result = _run_cli(
        [str(PROJECT), "-p", "0", "--cache-dir", str(cache_dir), "-w", "1"],
        rlimits={resource.RLIMIT_AS: (400 << 20, 400 << 20)},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "stack backtrace" not in result.stderr
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "RLIMIT_AS" in last and "ulimit -v" in last


@pytest.fixture
def long_sleep_server(cache_dir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        PROJECT,
        ["-w", "2", "--timeout-ms", "60000", "--graceful-timeout", "1", "--log-level", "debug"],
        cache_dir,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def test_the_grace_bounds_shutdown_and_late_requests_get_503(long_sleep_server: ServerProcess) -> None:
    server = long_sleep_server
    runners = _runners(server)
    result: dict[str, object] = {}

    async def in_flight() -> None:
        result["response"] = await http(server.port, "GET", "/sleep")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_flight)
        await _wait_log(server, r"request \d+ dispatched to runner (\d+)")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(server.wait_exit) == 0
    assert time.monotonic() - started < 1 + 2.5  # the grace, plus stopping idle runners
    response = result["response"]
    assert response.status == 503  # type: ignore[attr-defined]
    assert not [r for r in runners if r.is_running()]


async def test_a_second_signal_hurries_but_still_cleans_up(cache_dir: Path) -> None:
    args = ["-w", "2", "--timeout-ms", "60000", "--graceful-timeout", "60", "--log-level", "debug"]
    async with serving(PROJECT, args, cache_dir) as server:
        scratch = _scratch_of(server.proc.pid)
        runners = _runners(server)
        result: dict[str, object] = {}

        async def in_flight() -> None:
            result["response"] = await http(server.port, "GET", "/sleep")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_flight)
            await _wait_log(server, r"request \d+ dispatched to runner (\d+)")
            server.signal(signal.SIGTERM)
            await _wait_log(server, r"SIGTERM received: finishing in-flight requests")
            started = time.monotonic()
            server.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(server.wait_exit) == 0
        assert time.monotonic() - started < 5
        assert result["response"].status == 503  # type: ignore[attr-defined]
        assert not [r for r in runners if r.is_running()]
        assert not scratch.exists()


async def test_shutdown_does_not_wait_for_a_backoff(cache_dir: Path) -> None:
    async with serving(PROJECT, ["-w", "2", "--log-level", "debug"], cache_dir) as server:
        # Runners of slot 0 that die on their own, again and again: its backoff
        # doubles from 0.05 s, and the seventh wait is 3.2 s.
        pid = int(await _wait_log(server, r"runner (\d+) ready in slot 0"))
        for kill in range(1, 8):
            mark = len(server.stderr_lines)
            psutil.Process(pid).kill()
            delay = await _wait_log(server, r"runner slot 0: restarting in ([\d.]+) s", start=mark)
            assert float(delay) == pytest.approx(0.05 * 2 ** (kill - 1))
            if kill < 7:
                pid = int(await _wait_log(server, r"runner (\d+) ready in slot 0", start=mark))
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(server.wait_exit) == 0
        assert time.monotonic() - started < 3.2


async def test_a_runner_gone_at_once_is_inspected_safely() -> None:
    async with trio.open_nursery() as nursery:
        runner = await start_runner(nursery)
        os.kill(runner.pid, signal.SIGKILL)
        assert await runner.wait_exit() == -signal.SIGKILL
        assert runner.rss_bytes() == 0  # no psutil.NoSuchProcess escapes


async def test_many_trapped_requests_in_a_row_leave_the_runner_its_instance_slots(cache_dir: Path) -> None:
    # Each JS request holds two of the pooling allocator's few instance slots;
    # a trapped one must give them back at once, not when the cycle collector runs.
    args = ["-w", "1", "--fuel", "20000000", "--log-level", "warning"]
    async with serving(JS_PROJECT, args, cache_dir) as server:
        for _ in range(12):
            response = await http(server.port, "GET", "/loop")
            assert (response.status, response.headers["x-wws-failure"]) == (504, "out-of-fuel")
        for _ in range(3):
            assert (await http(server.port, "GET", "/basic")).status == 200
        for _ in range(12):
            assert (await http(server.port, "GET", "/recursion")).status == 500
        assert (await http(server.port, "GET", "/basic")).status == 200


async def test_a_stopped_runner_is_replaced_before_a_request_can_wait_on_it(cache_dir: Path) -> None:
    async with serving(PROJECT, ["-w", "2", "--log-level", "debug"], cache_dir) as server:
        victim = _runners(server)[0]
        mark = len(server.lines)
        victim.suspend()  # SIGSTOP: it looks idle but would never answer
        for _ in range(6):  # one of these would be leased to it
            with trio.fail_after(2):  # far below the 6 s a request leased to it would wait
                assert (await http(server.port, "GET", "/hello")).status == 201
        await _wait_log(server, rf"runner {victim.pid} was stopped by a signal; replacing it", start=mark)
        _, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs([victim], timeout=10))
        assert not alive
