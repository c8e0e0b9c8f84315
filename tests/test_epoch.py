"""The runner's epoch ticker (issue 15, item 3): requests of any length are
interrupted by the epoch at their limit, and the runner lives on."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import wasmtime

from runner.engines.epoch import _PARK_AFTER_S, EpochTicker
from tests.helpers import TEST_PROJECT, ServerProcess, http

LOOP = '(module (func (export "run") (loop $forever (br $forever))))'


@pytest.fixture
def engine() -> wasmtime.Engine:
    # One per test: the epoch is engine-wide, and a runner has one ticker per engine.
    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def _spin(engine: wasmtime.Engine, ticker: EpochTicker, timeout_ms: int) -> float:
    """Run an endless loop under ``timeout_ms`` the way the sandbox does; the
    seconds until the epoch interrupted it."""
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(ticker.ticks_for(timeout_ms))
    run = wasmtime.Instance(store, wasmtime.Module(engine, LOOP), []).exports(store)["run"]
    assert isinstance(run, wasmtime.Func)
    started = time.monotonic()
    ticker.request_started()
    try:
        with pytest.raises(wasmtime.Trap) as trapped:
            run(store)
    finally:
        ticker.request_finished()
    assert trapped.value.trap_code == wasmtime.TrapCode.INTERRUPT
    return time.monotonic() - started


def test_a_request_longer_than_the_park_delay_is_interrupted_at_its_limit(engine: wasmtime.Engine) -> None:
    # The old ticker parked one second after a request *started*, so this
    # loop ran on until the supervisor killed the runner.
    ticker = EpochTicker(engine, 10)
    timeout_ms = int(_PARK_AFTER_S * 1000) + 500
    elapsed = _spin(engine, ticker, timeout_ms)
    assert timeout_ms / 1000 <= elapsed < timeout_ms / 1000 + 0.1


def test_ticker_parks_when_idle_and_wakes_for_the_next_request(engine: wasmtime.Engine) -> None:
    ticker = EpochTicker(engine, 10)
    assert _spin(engine, ticker, 50) < 0.5
    # Idle: it parks about a second after the last request ended...
    assert ticker.parked.wait(_PARK_AFTER_S + 5)
    # ...and a parked ticker still interrupts the next request on time.
    assert 0.05 <= _spin(engine, ticker, 50) < 0.5


def test_epoch_follows_the_clock_not_the_number_of_sleeps(engine: wasmtime.Engine) -> None:
    # A coarse tick (200 ms) still gives a deadline of whole ticks of wall time.
    ticker = EpochTicker(engine, 200)
    assert 0.4 <= _spin(engine, ticker, 400) < 0.4 + 0.2 + 0.1


@pytest.fixture(scope="module")
def slow_server(cache_dir: Path) -> Iterator[ServerProcess]:
    # Fuel enough for far more than 3 s of looping: only the clock can stop it.
    args = ["-w", "1", "--fuel", "1000000000000", "--timeout-ms", "3000", "--log-level", "debug"]
    server = ServerProcess(TEST_PROJECT, args, cache_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def test_epoch_interrupts_a_three_second_request_and_the_runner_lives(
    slow_server: ServerProcess,
) -> None:
    assert (await http(slow_server.port, "GET", "/hello")).status == 201
    runners = {p.pid for p in psutil.Process(slow_server.proc.pid).children() if "runner" in p.cmdline()}
    log_start = len(slow_server.stderr_lines)
    started = time.monotonic()
    response = await http(slow_server.port, "GET", "/loop")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert response.headers["x-wws-failure"] == "timeout"
    # The epoch's interrupt, not the supervisor's kill at timeout + 1 s grace.
    assert 3.0 <= elapsed < 3.5
    slow_server.wait_for(r"failed: timeout: wasm trap: interrupt", start=log_start)
    assert (await http(slow_server.port, "GET", "/hello")).status == 201
    after = {p.pid for p in psutil.Process(slow_server.proc.pid).children() if "runner" in p.cmdline()}
    assert after == runners and len(runners) == 1
    lost = re.compile(r"runner \d+ (lost|exited|failed)|killed")
    assert not [line for line in slow_server.stderr_lines[log_start:] if lost.search(line)]
