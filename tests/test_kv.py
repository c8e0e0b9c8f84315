"""The KV stores on their own: snapshot/apply semantics and limits, for every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from supervisor.kv import KvLimitError, KvLimits, KvStore, KvUnavailable, MemoryKv, SqliteKv, open_kv
from tests.redis_server import redis_server

LIMITS = KvLimits(max_key_bytes=16, max_value_bytes=64, max_keys=5, max_snapshot_bytes=200)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KvStore]:
    if request.param == "memory":
        kv: KvStore = MemoryKv(LIMITS)
    elif request.param == "sqlite":
        kv = SqliteKv(tmp_path / "kv.db", LIMITS)
    else:
        url = request.getfixturevalue("redis_url")
        kv = open_kv(url, LIMITS)
        # Each test gets clean namespaces on the shared server.
        await kv.apply("a", {}, list(await kv.snapshot("a")))
        await kv.apply("b", {}, list(await kv.snapshot("b")))
    try:
        yield kv
    finally:
        kv.close()


async def test_apply_writes_only_the_changes(store: KvStore) -> None:
    await store.apply("a", {"x": "1", "y": "2"}, [])
    # Two requests took the same snapshot; each changed a different key.
    await store.apply("a", {"x": "10"}, [])
    await store.apply("a", {"z": "3"}, ["y"])
    assert await store.snapshot("a") == {"x": "10", "z": "3"}


async def test_namespaces_are_isolated(store: KvStore) -> None:
    await store.apply("a", {"k": "in a"}, [])
    assert await store.snapshot("b") == {}
    await store.apply("b", {"k": "in b"}, [])
    assert (await store.snapshot("a"))["k"] == "in a"


async def test_snapshot_is_a_copy(store: KvStore) -> None:
    snap = await store.snapshot("a")
    snap["mutated"] = "yes"
    assert "mutated" not in await store.snapshot("a")


@pytest.mark.parametrize(
    ("changed", "message"),
    [({"k" * 17: "v"}, "key of 17 bytes"), ({"k": "v" * 65}, "value of 'k'")],
)
async def test_size_limits_refuse_the_whole_change(
    store: KvStore, changed: dict[str, str], message: str
) -> None:
    with pytest.raises(KvLimitError, match=message):
        await store.apply("a", {"fine": "1", **changed}, [])
    assert await store.snapshot("a") == {}


async def test_key_count_limit_is_atomic(store: KvStore) -> None:
    await store.apply("a", {str(i): "v" for i in range(4)}, [])
    with pytest.raises(KvLimitError, match="more than 5 keys"):
        await store.apply("a", {"4": "v", "5": "v"}, [])
    assert len(await store.snapshot("a")) == 4
    # Deleting one makes room for a new one in the same change.
    await store.apply("a", {"4": "v", "5": "v"}, ["0"])
    assert sorted(await store.snapshot("a")) == ["1", "2", "3", "4", "5"]


def test_snapshot_size_limit() -> None:
    with pytest.raises(KvLimitError, match="snapshot limit"):
        LIMITS.check_snapshot("a", {"k": "v" * 300})


async def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    first = SqliteKv(tmp_path / "kv.db")
    await first.apply("a", {"k": "v"}, [])
    first.close()
    second = SqliteKv(tmp_path / "kv.db")
    assert await second.snapshot("a") == {"k": "v"}
    second.close()
    with sqlite3.connect(tmp_path / "kv.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_concurrent_applies_lose_nothing(store: KvStore) -> None:
    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(store.apply, "a", {f"k{index}": str(index)}, [])
    assert await store.snapshot("a") == {f"k{i}": str(i) for i in range(5)}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "unknown KV backend 'ftp'"),
        ("sqlite://", "sqlite URL needs a file"),
        ("redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(KvUnavailable, match=message):
        open_kv(url)
