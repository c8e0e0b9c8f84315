"""The key/value store workers see through wws's snapshot protocol.

Each request gets a copy of its worker's namespace (``kv`` in the request);
after a successful run only what the worker changed (keys set, keys deleted)
is written back, so concurrent requests that touch different keys of one
namespace do not lose each other's updates (wws replaces the whole namespace
and does). A failed request writes nothing.

A write is conditional: every key a request set or deleted must still hold
the value it had in that request's snapshot, or nothing is written and
:class:`KvConflict` is raised (optimistic concurrency; supervisor/front/dispatch.py
runs the request again). Workers hand back their whole namespace, so what they
*read* is unknown; the keys they wrote stand in for it, which is exactly what a
read-modify-write of one key needs. Check and write are one atomic step per
backend: no ``await`` between them in memory, one ``BEGIN IMMEDIATE``
transaction in SQLite, one Lua script in Redis.

Backends, chosen with ``--kv URL``:

* ``memory://`` (default): in the supervisor's memory, gone on restart, as wws.
* ``sqlite:///path/kv.db``: one file, WAL mode, one transaction per request's
  check and changes; survives restarts and ``kill -9``.
* ``redis://host:port/db``: shared by several supervisors; each request's
  check and changes are one Lua script, so they land all at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import trio


class KvLimitError(Exception):
    """A write would break a limit; nothing of that request is applied."""


class KvUnavailable(Exception):
    """The backend could not be reached or failed; the message is one line."""


class KvConflict(Exception):
    """A key the request wrote changed since its snapshot; nothing was applied."""

    def __init__(self, namespace: str, keys: Sequence[str]) -> None:
        self.namespace, self.keys = namespace, sorted(keys)
        shown = ", ".join(repr(key) for key in self.keys[:3])
        more = f" and {len(self.keys) - 3} more" if len(self.keys) > 3 else ""
        super().__init__(f"{shown}{more} changed in namespace {namespace!r} since the snapshot")


# What each written key held in the request's snapshot (None: it was absent).
Expected = Mapping[str, str | None]


def _stale(expected: Expected, current: Mapping[str, str]) -> list[str]:
    return [key for key, value in expected.items() if current.get(key) != value]


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

    async def apply(
        self,
        namespace: str,
        changed: dict[str, str],
        deleted: Sequence[str],
        expected: Expected | None = None,
    ) -> None:
        """Write ``changed`` and delete ``deleted`` at once, if every key in
        ``expected`` still holds the value given there (None: absent).

        ``expected=None`` writes unconditionally (tests and maintenance).

        Raises:
            KvConflict: a key of ``expected`` differs; nothing was written.
            KvLimitError: a limit would be broken; nothing was written.
            KvUnavailable: the backend failed (Redis only).
        """
        ...

    def close(self) -> None: ...


class MemoryKv:
    """In-process store (wws's behaviour: gone on restart)."""

    def __init__(self, limits: KvLimits | None = None) -> None:
        self.limits = limits or KvLimits()
        self._namespaces: dict[str, dict[str, str]] = {}

    async def snapshot(self, namespace: str) -> dict[str, str]:
        return dict(self._namespaces.get(namespace, {}))

    async def apply(
        self,
        namespace: str,
        changed: dict[str, str],
        deleted: Sequence[str],
        expected: Expected | None = None,
    ) -> None:
        # No await between the checks and the write: atomic within the event loop.
        self.limits.check_changes(changed)
        current = self._namespaces.setdefault(namespace, {})
        if expected and (stale := _stale(expected, current)):
            raise KvConflict(namespace, stale)
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
        import sqlite3  # here: a front end without the SQLite store saves its 1.7 MB

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

    async def apply(
        self,
        namespace: str,
        changed: dict[str, str],
        deleted: Sequence[str],
        expected: Expected | None = None,
    ) -> None:
        self.limits.check_changes(changed)
        await trio.to_thread.run_sync(
            self._apply, namespace, changed, list(deleted), expected or {}, limiter=self._limiter
        )

    def _apply(self, namespace: str, changed: dict[str, str], deleted: list[str], expected: Expected) -> None:
        with self._lock:
            # IMMEDIATE takes the write lock before the check, so no other
            # connection (another supervisor on the same file) can write
            # between the check and the changes.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                current: dict[str, str] = {}
                for key in expected:
                    row = self._db.execute(
                        "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
                    ).fetchone()
                    if row is not None:
                        current[key] = row[0]
                if stale := _stale(expected, current):
                    raise KvConflict(namespace, stale)
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


# Applies one request's changes at once, if the keys it wrote are unchanged:
# ARGV = max_keys, nexp, ndel, nexp triples (key, "1" if present, value), ndel
# keys to delete, then key/value pairs to set. Returns 1, or the list of keys
# that changed (then nothing is written); refuses the whole change if the
# namespace would exceed its key limit. Redis runs a script alone, so the
# check and the writes are one atomic step.
_REDIS_APPLY = """
local hash, max_keys = KEYS[1], tonumber(ARGV[1])
local nexp, ndel = tonumber(ARGV[2]), tonumber(ARGV[3])
local stale = {}
for i = 4, 3 + 3 * nexp, 3 do
  local now = redis.call('HGET', hash, ARGV[i])
  if ARGV[i + 1] == '1' then
    if now ~= ARGV[i + 2] then stale[#stale + 1] = ARGV[i] end
  elseif now then
    stale[#stale + 1] = ARGV[i]
  end
end
if #stale > 0 then return stale end
local first_del = 4 + 3 * nexp
local first_set = first_del + ndel
local delta = 0
for i = first_del, first_set - 1 do
  if redis.call('HEXISTS', hash, ARGV[i]) == 1 then delta = delta - 1 end
end
for i = first_set, #ARGV, 2 do
  if redis.call('HEXISTS', hash, ARGV[i]) == 0 then delta = delta + 1 end
end
if redis.call('HLEN', hash) + delta > max_keys then return redis.error_reply('too many keys') end
for i = first_del, first_set - 1 do redis.call('HDEL', hash, ARGV[i]) end
for i = first_set, #ARGV, 2 do redis.call('HSET', hash, ARGV[i], ARGV[i + 1]) end
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

    async def apply(
        self,
        namespace: str,
        changed: dict[str, str],
        deleted: Sequence[str],
        expected: Expected | None = None,
    ) -> None:
        self.limits.check_changes(changed)
        gone = [key for key in deleted if key not in changed]
        expected = expected or {}
        args: list[str | int] = [self.limits.max_keys, len(expected), len(gone)]
        for key, value in expected.items():
            args += [key, "0", ""] if value is None else [key, "1", value]
        args += gone
        for key, value in changed.items():
            args += [key, value]
        try:
            result = await trio.to_thread.run_sync(
                lambda: self._apply_script(keys=[self._hash(namespace)], args=args)
            )
        except self._errors as exc:
            if "too many keys" in str(exc):
                raise KvLimitError(
                    f"namespace {namespace!r} would hold more than {self.limits.max_keys} keys"
                ) from None
            raise KvUnavailable(f"Redis write failed: {exc}") from None
        if isinstance(result, list):
            raise KvConflict(namespace, [str(key) for key in result])

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
        import sqlite3

        try:
            return SqliteKv(Path(path), limits)
        except (sqlite3.Error, OSError) as exc:
            raise KvUnavailable(f"cannot open the SQLite store {path}: {exc}") from None
    if parsed.scheme in ("redis", "rediss"):
        return RedisKv(url, limits)
    raise KvUnavailable(
        f"unknown KV backend {parsed.scheme!r}: use memory://, sqlite:///path or redis://host:port/db"
    )
