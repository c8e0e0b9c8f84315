"""The KV stores on their own: snapshot/apply semantics, conditional commits and
limits, for every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from supervisor.front.kv import (
    KvConflict,
    KvLimitError,
    KvLimits,
    KvStore,
    KvUnavailable,
    MemoryKv,
    SqliteKv,
    open_kv,
)
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


async def test_conditional_apply_commits_when_written_keys_are_unchanged(store: KvStore) -> None:
    await store.apply("a", {"n": "1", "gone": "x"}, [])
    # Another request changed a key this one did not write: no conflict.
    await store.apply("a", {"other": "y"}, [], {"other": None})
    await store.apply("a", {"n": "2", "new": "v"}, ["gone"], {"n": "1", "new": None, "gone": "x"})
    assert await store.snapshot("a") == {"n": "2", "new": "v", "other": "y"}


@pytest.mark.parametrize(
    ("expected", "stale"),
    [
        ({"n": "1"}, ["n"]),  # changed since the snapshot
        ({"n": None}, ["n"]),  # absent in the snapshot, written since
        ({"d": "x"}, ["d"]),  # present in the snapshot, deleted since
        ({"n": "1", "d": "x", "fine": None}, ["d", "n"]),
    ],
)
async def test_conditional_apply_refuses_everything_on_a_conflict(
    store: KvStore, expected: dict[str, str | None], stale: list[str]
) -> None:
    await store.apply("a", {"n": "1", "d": "x"}, [])
    await store.apply("a", {"n": "2"}, ["d"])  # what another request committed meanwhile
    with pytest.raises(KvConflict) as caught:
        await store.apply("a", {key: "mine" for key in expected}, ["n"], expected)
    assert (caught.value.namespace, caught.value.keys) == ("a", stale)
    assert await store.snapshot("a") == {"n": "2"}


async def test_conflict_is_checked_before_the_key_limit(store: KvStore) -> None:
    await store.apply("a", {str(i): "v" for i in range(5)}, [])
    with pytest.raises(KvConflict):
        await store.apply("a", {"0": "w", "new": "v"}, [], {"0": "old", "new": None})


async def test_read_modify_write_of_one_key_loses_nothing(store: KvStore) -> None:
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        while True:
            snapshot = await store.snapshot("a")
            await trio.lowlevel.checkpoint()  # let the others take the same snapshot
            count = str(int(snapshot.get("n", "0")) + 1)
            try:
                await store.apply("a", {"n": count}, [], {"n": snapshot.get("n")})
                return
            except KvConflict:
                conflicts += 1

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(increment)
    assert await store.snapshot("a") == {"n": "20"}
    assert conflicts > 0


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
