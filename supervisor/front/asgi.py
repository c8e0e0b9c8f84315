"""The ASGI application hypercorn runs: route, read the body, dispatch to the
pool, and turn the outcome into an honest HTTP response."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import trio

from ipc.messages import Failure, FailureKind, Invoke, Reply
from supervisor.config import ServerConfig
from supervisor.front.dispatch import run_with_kv
from supervisor.front.kv import KvStore
from supervisor.front.responses import is_preflight, lifespan, plain, preflight, send_failure, send_reply
from supervisor.front.static import PublicFolder, StaticFile
from supervisor.ops.metrics import ROUTE_KEY
from supervisor.pool.pool import Overloaded, Pool
from supervisor.project.contract_routes import Builtin, ContractRoutes
from supervisor.project.routes import (
    Route,
    RouteKind,
    RouteTable,
    decode_unreserved,
    format_prefix,
    normalize_request_path,
)
from supervisor.project.worker_config import WorkerConfig

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Any
Send = Any

_STATIC_CHUNK = 256 << 10


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    """The client closed before its whole body arrived: nothing is run, nobody to answer."""


class WorkerApp:
    def __init__(
        self,
        config: ServerConfig,
        routes: RouteTable,
        public: PublicFolder | None,
        pool: Pool,
        settings: dict[str, WorkerConfig],
        broken: set[str],
        kv: KvStore,
    ) -> None:
        self._config = config
        self._routes = routes
        self._public = public
        self._pool = pool
        self._prefix = format_prefix(config.prefix)
        self._settings = settings
        self._broken = broken
        self._kv = kv
        self._semaphores: dict[str, trio.Semaphore] = {}
        # --cors: wws sends every configured origin, joined by commas.
        self._cors = ",".join(config.cors_origins).encode() if config.cors_origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not served
        if _has_both_framings(scope["headers"]):
            # RFC 9112 6.1: a request framed both ways is a smuggling attempt
            # behind a proxy; refuse it and close the connection.
            log.warning(
                "%s %s: 400, both Content-Length and Transfer-Encoding", scope["method"], scope["path"]
            )
            # Read what the client sent first (bounded): closing over unread
            # bytes resets the connection, and the client could lose the 400.
            with contextlib.suppress(_BodyTooLarge, _ClientGone):
                await _read_body(
                    scope, receive, self._config.max_body_bytes, min(1.0, self._config.body_timeout_s)
                )
            await plain(
                send,
                400,
                b"Bad request: both Content-Length and Transfer-Encoding\n",
                [(b"connection", b"close")],
            )
            return
        if isinstance(self._routes, ContractRoutes):  # WAGI and serverless-wasm routes first
            found = self._routes.match(scope)
            if isinstance(found, Builtin):
                await plain(send, found.status, found.body)
                return
            if found is not None:
                await self._run_worker(scope, receive, send, found[0], found[1], scope["path"])
                return
        raw = scope.get("raw_path") or scope["path"].encode()
        path = normalize_request_path(decode_unreserved(raw.split(b"?", 1)[0]))
        resolved = self._routes.resolve(path)
        if resolved is not None:
            route, params = resolved
            if route.kind is not RouteKind.STATIC:
                # Public files win over dynamic and catch-all routes (wws does the same).
                static = self._static_for(path)
                if static is not None:
                    await self._send_static(scope, send, static)
                    return
            await self._run_worker(scope, receive, send, route, params, path)
            return
        static = self._static_for(path)
        if static is not None:
            await self._send_static(scope, send, static)
            return
        await self._not_found(scope, send)

    @contextlib.asynccontextmanager
    async def _concurrency_slot(self, worker_id: str, limit: int) -> AsyncIterator[None]:
        """Holds one of the worker's ``max_concurrency`` slots; waits up to
        the queue timeout for one, then gives up with :class:`Overloaded`."""
        semaphore = self._semaphores.setdefault(worker_id, trio.Semaphore(limit))
        acquired = False
        # Only the wait is bounded; the request itself runs under its own deadline.
        with trio.move_on_after(self._config.pool.queue_timeout_s):
            await semaphore.acquire()
            acquired = True
        if not acquired:
            raise Overloaded(f"{worker_id} already has {limit} requests in flight (max_concurrency)")
        try:
            yield
        finally:
            semaphore.release()

    def _static_for(self, path: str) -> StaticFile | None:
        if self._public is None:
            return None
        if self._prefix:
            if path != self._prefix and not path.startswith(self._prefix + "/"):
                return None
            path = path[len(self._prefix) :] or "/"
        return self._public.lookup(unquote(path))

    async def _run_worker(
        self, scope: Scope, receive: Receive, send: Send, route: Route, params: dict[str, str], path: str
    ) -> None:
        scope[ROUTE_KEY] = route.path  # the metrics' route label (supervisor/ops/metrics.py)
        if self._cors and is_preflight(scope):
            await preflight(scope, send, self._cors)
            return
        try:
            body = await _read_body(scope, receive, self._config.max_body_bytes, self._config.body_timeout_s)
        except _ClientGone:
            log.info("%s %s: the client left before its body arrived; not run", scope["method"], path)
            return
        except _BodyTooLarge:
            log.warning(
                "%s %s: request body over %d bytes refused",
                scope["method"],
                path,
                self._config.max_body_bytes,
            )
            await send_failure(send, FailureKind.BODY_TOO_LARGE)
            return
        if body is None:
            log.warning(
                "%s %s: 408, the body did not arrive within %.1f s",
                scope["method"],
                path,
                self._config.body_timeout_s,
            )
            await send_failure(send, FailureKind.BODY_TIMEOUT)
            return
        worker_id = route.worker.relative
        if worker_id in self._broken:
            log.error(
                "worker %s (%s) failed: load-error: it could not be loaded at startup", route.path, worker_id
            )
            await send_failure(send, FailureKind.LOAD_ERROR)
            return
        settings = self._settings[worker_id]
        limits = settings.limits
        url = _full_url(scope)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]

        def build(kv_snapshot: dict[str, str]) -> Invoke:
            return Invoke(
                request_id=self._pool.next_request_id(),
                worker_id=worker_id,
                method=scope["method"],
                url=url,
                headers=headers,
                body=body,
                params=params,
                kv=kv_snapshot,
                fuel=limits.fuel,
                memory_bytes=limits.memory_bytes,
                timeout_ms=limits.timeout_ms,
            )

        deadline_s = (limits.timeout_ms + self._config.pool.kill_grace_ms) / 1000

        async def submit(invoke: Invoke) -> Reply | Failure:
            if settings.max_concurrency is None:
                return await self._pool.submit(invoke, deadline_s)
            async with self._concurrency_slot(worker_id, settings.max_concurrency):
                return await self._pool.submit(invoke, deadline_s)

        try:
            result = await run_with_kv(
                self._kv,
                settings.kv_namespace,
                build,
                submit,
                label=f"{scope['method']} {path} ({worker_id})",
                writes_files=any(folder.writable for folder in settings.folders),
            )
        except Overloaded as exc:
            log.warning("%s %s: 503, %s", scope["method"], path, exc)
            await send_failure(send, FailureKind.OVERLOADED)
            return
        if result.stderr:
            for line in result.stderr.decode("utf-8", "replace").splitlines():
                log.info("[%s] %s", route.path, line)
        if isinstance(result, Reply):
            await send_reply(send, result, self._cors)
            return
        _log_failure(route, result, limits.fuel)
        await send_failure(send, FailureKind(result.kind), self._cors)

    async def _send_static(self, scope: Scope, send: Send, static: StaticFile, status: int = 200) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await plain(send, 405, b"Method not allowed", [(b"allow", b"GET, HEAD")])
            return
        headers = [
            (b"content-type", static.content_type.encode()),
            (b"etag", static.etag.encode()),
            (b"last-modified", static.last_modified.encode()),
        ]
        request_headers = dict(scope["headers"])
        if status == 200 and request_headers.get(b"if-none-match") == static.etag.encode():
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(static.size).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        async with await trio.open_file(static.path, "rb") as file:
            while True:
                chunk = await file.read(_STATIC_CHUNK)
                more = len(chunk) == _STATIC_CHUNK
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return

    async def _not_found(self, scope: Scope, send: Send) -> None:
        page = self._public.lookup("/404.html") if self._public is not None else None
        if page is not None and scope["method"] in ("GET", "HEAD"):
            await self._send_static(scope, send, page, status=404)
            return
        await plain(send, 404, b"")


def _full_url(scope: Scope) -> str:
    host = ""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    if not host and scope.get("server"):
        server_host, server_port = scope["server"][:2]
        host = f"{server_host}:{server_port}"
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    url = f"{scope.get('scheme', 'http')}://{host}{normalize_request_path(raw)}"
    return f"{url}?{query}" if query else url


def _has_both_framings(headers: list[tuple[bytes, bytes]]) -> bool:
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


async def _read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes | None:
    """The whole request body, or None when it did not arrive within ``timeout_s``.

    Raises:
        _BodyTooLarge: over ``limit`` bytes (announced or received).
        _ClientGone: the client closed before the body was complete.
    """
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise _BodyTooLarge
            has_body = value != b"0"
        elif name == b"transfer-encoding":
            has_body = True
    if not has_body:
        return b""  # HTTP/1.1 without length or chunking: no body to wait for
    with trio.move_on_after(timeout_s):  # only requests with a body pay for the scope
        return await _receive_body(receive, limit)
    return None


async def _receive_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # A truncated body must not reach the worker as if it were whole.
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _log_failure(route: Route, failure: Failure, fuel: int) -> None:
    log.warning(
        "worker %s (%s) failed: %s: %s [fuel %d/%d, %.1f ms]",
        route.path,
        route.worker.relative,
        failure.kind,
        failure.detail,
        failure.fuel_used,
        fuel,
        failure.elapsed_us / 1000,
    )
