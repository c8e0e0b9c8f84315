"""KV through real servers: every backend, no lost updates, nothing written on
failure, SQLite surviving SIGKILL, and two supervisors sharing one Redis."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.helpers import REPO, ServerProcess, http, serving
from tests.redis_server import redis_server

KV_PROJECT = Path(__file__).resolve().parent / "kvproject"


def _backend_url(name: str, tmp_path: Path) -> str:
    return {"memory": "memory://", "sqlite": f"sqlite://{tmp_path}/kv.db"}[name]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_counter_with_each_local_backend(backend: str, tmp_path: Path, cache_dir: Path) -> None:
    async with serving(KV_PROJECT, ["-w", "2", "--kv", _backend_url(backend, tmp_path)], cache_dir) as server:
        counts = [(await http(server.port, "GET", "/counter")).text for _ in range(3)]
    assert counts == ["1", "2", "3"]


async def test_no_lost_update_for_concurrent_keys_and_isolation(cache_dir: Path) -> None:
    async with serving(KV_PROJECT, ["-w", "2"], cache_dir) as server:
        async with trio.open_nursery() as nursery:
            for index in range(40):
                nursery.start_soon(http, server.port, "GET", f"/keys/k{index:02d}")
        listed = json.loads((await http(server.port, "GET", "/list")).body)
        assert listed == [f"k{i:02d}" for i in range(40)]
        # Another namespace sees none of it; a worker without [data.kv] sees nothing at all.
        assert json.loads((await http(server.port, "GET", "/other")).body) == []
        assert (await http(server.port, "GET", "/nokv")).text == "{}"
        assert (await http(server.port, "GET", "/nokv")).text == "{}"


async def test_failed_or_oversized_requests_write_nothing(cache_dir: Path) -> None:
    async with serving(KV_PROJECT, ["-w", "1"], cache_dir) as server:
        assert (await http(server.port, "GET", "/fail")).status == 500
        big = await http(server.port, "GET", "/big")
        assert (big.status, big.headers["x-wws-failure"]) == (500, "kv-limit")
        assert json.loads((await http(server.port, "GET", "/list")).body) == []


async def test_sqlite_intact_after_sigkill_mid_load(tmp_path: Path, cache_dir: Path) -> None:
    db = tmp_path / "kv.db"
    args = ["-w", "2", "--kv", f"sqlite://{db}"]
    acknowledged_counts: list[int] = []
    acknowledged_keys: list[str] = []
    enough = trio.Event()

    async def hammer(server: ServerProcess, client: int) -> None:
        for index in range(10_000):
            try:
                counter = await http(server.port, "GET", "/counter")
                key = f"c{client}-{index}"
                keyed = await http(server.port, "GET", f"/keys/{key}")
            except (OSError, trio.BrokenResourceError, ValueError, IndexError):
                return  # the server is gone
            if counter.status == 200:
                acknowledged_counts.append(int(counter.text))
            if keyed.status == 200:
                acknowledged_keys.append(key)
            if len(acknowledged_counts) >= 60:
                enough.set()

    server = ServerProcess(KV_PROJECT, args, cache_dir)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        async with trio.open_nursery() as nursery:
            for client in range(4):
                nursery.start_soon(hammer, server, client)
            await enough.wait()
            os.killpg(server.proc.pid, signal.SIGKILL)  # supervisor and runners, mid-load
    finally:
        server.stop()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    async with serving(KV_PROJECT, args, cache_dir) as restarted:
        after = int((await http(restarted.port, "GET", "/counter")).text)
        listed = set(json.loads((await http(restarted.port, "GET", "/list")).body))
    # Every acknowledged write is there (a write is committed before its response is sent).
    assert after > max(acknowledged_counts)
    assert set(acknowledged_keys) <= listed


async def test_two_supervisors_share_one_redis(tmp_path: Path, cache_dir: Path) -> None:
    with redis_server(tmp_path) as url:
        async with (
            serving(KV_PROJECT, ["-w", "1", "--kv", url], cache_dir) as first,
            serving(KV_PROJECT, ["-w", "1", "--kv", url], cache_dir) as second,
        ):
            seen = []
            for server in (first, second, first, second):
                seen.append((await http(server.port, "GET", "/counter")).text)
            assert seen == ["1", "2", "3", "4"]
            assert (await http(second.port, "GET", "/keys/from-b")).status == 200
            assert json.loads((await http(first.port, "GET", "/list")).body) == ["from-b"]


async def test_unreachable_redis_is_a_startup_error(cache_dir: Path) -> None:
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor",
                str(KV_PROJECT),
                "-p",
                "0",
                "--kv",
                "redis://127.0.0.1:1/0",
                "--cache-dir",
                str(cache_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0: ")
    assert "Connection refused" in line
