"""The key/value store workers see through wws's snapshot protocol.

Each request gets a copy of its worker's namespace (``kv`` in the request);
after a successful run only what the worker changed (keys set, keys deleted)
is written back, atomically, so concurrent requests that touch different keys
of one namespace do not lose each other's updates (wws replaces the whole
namespace and does). A failed request writes nothing.

Backends, chosen with ``--kv URL``:

* ``memory://`` (default): in the supervisor's memory, gone on restart, as wws.
* ``sqlite:///path/kv.db``: one file, WAL mode, one transaction per request's
  changes; survives restarts and ``kill -9``.
* ``redis://host:port/db``: shared by several supervisors; each request's
  changes are applied by one Lua script, so they land all at once.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import trio


class KvLimitError(Exception):
    """A write would break a limit; nothing of that request is applied."""


class KvUnavailable(Exception):
    """The backend could not be reached or failed; the message is one line."""


@dataclasses.dataclass(frozen=True, slots=True)
class KvLimits:
    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    max_keys: int = 10_000
    # The whole namespace travels with every request of its workers.
    max_snapshot_bytes: int = 4 << 20

    def check_changes(self, changed: dict[str, str]) -> None:
        for key, value in changed.items():
            size = len(key.encode())
            if size > self.max_key_bytes:
                raise KvLimitError(f"key of {size} bytes is over the {self.max_key_bytes}-byte limit")
            if len(value.encode()) > self.max_value_bytes:
                raise KvLimitError(f"value of {key!r} is over the {self.max_value_bytes}-byte limit")

    def check_snapshot(self, namespace: str, snapshot: dict[str, str]) -> None:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in snapshot.items())
        if size > self.max_snapshot_bytes:
            raise KvLimitError(
                f"namespace {namespace!r} holds {size} bytes, "
                f"over the {self.max_snapshot_bytes}-byte snapshot limit"
            )


class KvStore(Protocol):
    limits: KvLimits

    async def snapshot(self, namespace: str) -> dict[str, str]: ...

    async def apply(self, namespace: str, changed: dict[str, str], deleted: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class MemoryKv:
    """In-process store (wws's behaviour: gone on restart)."""

    def __init__(self, limits: KvLimits | None = None) -> None:
        self.limits = limits or KvLimits()
        self._namespaces: dict[str, dict[str, str]] = {}

    async def snapshot(self, namespace: str) -> dict[str, str]:
        return dict(self._namespaces.get(namespace, {}))

    async def apply(self, namespace: str, changed: dict[str, str], deleted: Sequence[str]) -> None:
        # No await between the check and the write: atomic within the event loop.
        self.limits.check_changes(changed)
        current = self._namespaces.setdefault(namespace, {})
        gone = [key for key in deleted if key not in changed]
        added = sum(1 for key in changed if key not in current) - sum(1 for key in gone if key in current)
        if len(current) + added > self.limits.max_keys:
            raise KvLimitError(f"namespace {namespace!r} would hold more than {self.limits.max_keys} keys")
        for key in gone:
            current.pop(key, None)
        current.update(changed)

    def close(self) -> None:
        pass


class SqliteKv:
    """One SQLite file in WAL mode; every request's changes are one transaction."""

    def __init__(self, path: Path, limits: KvLimits | None = None) -> None:
        self.limits = limits or KvLimits()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection, used from worker threads one at a time (the lock and
        # a capacity-1 limiter): SQLite serialises writers anyway.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (namespace, key)) WITHOUT ROWID"
        )
        self._limiter = trio.CapacityLimiter(1)

    async def snapshot(self, namespace: str) -> dict[str, str]:
        return await trio.to_thread.run_sync(self._snapshot, namespace, limiter=self._limiter)

    def _snapshot(self, namespace: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM kv WHERE namespace = ?", (namespace,)).fetchall()
        return dict(rows)

    async def apply(self, namespace: str, changed: dict[str, str], deleted: Sequence[str]) -> None:
        self.limits.check_changes(changed)
        await trio.to_thread.run_sync(self._apply, namespace, changed, list(deleted), limiter=self._limiter)

    def _apply(self, namespace: str, changed: dict[str, str], deleted: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = [key for key in deleted if key not in changed]
                self._db.executemany(
                    "DELETE FROM kv WHERE namespace = ? AND key = ?", [(namespace, k) for k in gone]
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                    [(namespace, k, v) for k, v in changed.items()],
                )
                (count,) = self._db.execute(
                    "SELECT COUNT(*) FROM kv WHERE namespace = ?", (namespace,)
                ).fetchone()
                if count > self.limits.max_keys:
                    raise KvLimitError(
                        f"namespace {namespace!r} would hold more than {self.limits.max_keys} keys"
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


# Applies one request's changes at once: deletes, then sets, refusing the whole
# change if the namespace would exceed its key limit.
_REDIS_APPLY = """
local hash, max_keys, ndel = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local delta = 0
for i = 3, 2 + ndel do
  if redis.call('HEXISTS', hash, ARGV[i]) == 1 then delta = delta - 1 end
end
for i = 3 + ndel, #ARGV, 2 do
  if redis.call('HEXISTS', hash, ARGV[i]) == 0 then delta = delta + 1 end
end
if redis.call('HLEN', hash) + delta > max_keys then return redis.error_reply('too many keys') end
for i = 3, 2 + ndel do redis.call('HDEL', hash, ARGV[i]) end
for i = 3 + ndel, #ARGV, 2 do redis.call('HSET', hash, ARGV[i], ARGV[i + 1]) end
return 1
"""


class RedisKv:
    """A hash per namespace (``wws:kv:<namespace>``) in a shared Redis."""

    def __init__(self, url: str, limits: KvLimits | None = None) -> None:
        import redis

        self.limits = limits or KvLimits()
        self._redis: Any = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )
        self._apply_script = self._redis.register_script(_REDIS_APPLY)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise KvUnavailable(f"cannot reach Redis at {_safe_url(url)}: {exc}") from None

    @staticmethod
    def _hash(namespace: str) -> str:
        return f"wws:kv:{namespace}"

    async def snapshot(self, namespace: str) -> dict[str, str]:
        try:
            result: dict[str, str] = await trio.to_thread.run_sync(self._redis.hgetall, self._hash(namespace))
        except self._errors as exc:
            raise KvUnavailable(f"Redis read failed: {exc}") from None
        return result

    async def apply(self, namespace: str, changed: dict[str, str], deleted: Sequence[str]) -> None:
        self.limits.check_changes(changed)
        gone = [key for key in deleted if key not in changed]
        args: list[str | int] = [self.limits.max_keys, len(gone), *gone]
        for key, value in changed.items():
            args += [key, value]
        try:
            await trio.to_thread.run_sync(lambda: self._apply_script(keys=[self._hash(namespace)], args=args))
        except self._errors as exc:
            if "too many keys" in str(exc):
                raise KvLimitError(
                    f"namespace {namespace!r} would hold more than {self.limits.max_keys} keys"
                ) from None
            raise KvUnavailable(f"Redis write failed: {exc}") from None

    def close(self) -> None:
        self._redis.close()


def _safe_url(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 6379}{parsed.path}"


def open_kv(url: str, limits: KvLimits | None = None) -> KvStore:
    """The store named by ``--kv``.

    Raises:
        KvUnavailable: unknown scheme, an unusable path, or an unreachable Redis.
    """
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryKv(limits)
    if parsed.scheme == "sqlite":
        # Plain URL reading: sqlite:///var/lib/kv.db is /var/lib/kv.db, and
        # sqlite://data/kv.db is data/kv.db relative to the working folder.
        path = parsed.netloc + parsed.path
        if not path:
            raise KvUnavailable("sqlite URL needs a file: sqlite:///path/to/kv.db")
        try:
            return SqliteKv(Path(path), limits)
        except (sqlite3.Error, OSError) as exc:
            raise KvUnavailable(f"cannot open the SQLite store {path}: {exc}") from None
    if parsed.scheme in ("redis", "rediss"):
        return RedisKv(url, limits)
    raise KvUnavailable(
        f"unknown KV backend {parsed.scheme!r}: use memory://, sqlite:///path or redis://host:port/db"
    )
