"""The admin listener (``--admin HOST:PORT``, or ``--enable-panel``): metrics,
health, a JSON API and a status page, on a port of its own.

It runs in the top process, or with several front ends in a child process
of the arbiter's (``supervisor/ops/admin_main.py``), and reports on the whole
server from the metrics folder every process writes into
(``supervisor/ops/metrics.py``) and the state each front end publishes there
(``supervisor/ops/runner_state.py``). Nothing on it is served to the workers'
clients, and with ``--admin-token`` every answer but the page shell (static
HTML with no data in it) needs ``Authorization: Bearer <token>``.

=================  ==========================================================
``/metrics``       Prometheus text format
``/healthz``       200 while the process answers
``/readyz``        200 when every front end has runners and none is draining
``/api/v1/...``    ``workers``, ``runners``, ``requests``, ``tenants`` (JSON)
``/``              the status page
=================  ==========================================================
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.resources
import ipaddress
import json
import logging
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hypercorn.config
import trio

from supervisor.config import ServerConfig
from supervisor.front.http_front import HttpFront, Shutdown
from supervisor.front.responses import lifespan, plain
from supervisor.ops import metrics
from supervisor.ops.runner_state import Json, read_states
from supervisor.pool.scratch import make_scratch
from supervisor.project.project import StartupError

log = logging.getLogger(__name__)

# --enable-panel without --admin: wws's panel flag, on loopback only.
PANEL_DEFAULT = ("127.0.0.1", 9090)
_MAX_CONNECTIONS = 64
_RECENT_FAILURES = 20

Scope = dict[str, Any]
# The page loads nothing from elsewhere and may not be framed.
_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'; img-src data:; frame-ancestors 'none'",
    ),
]


class AdminApp:
    """The admin listener's ASGI app."""

    def __init__(self, folder: Path, frontends: int, token: str | None) -> None:
        self._folder = folder
        self._frontends = frontends
        self._token = f"Bearer {token}".encode() if token else None
        self._page = importlib.resources.files("supervisor.ops").joinpath("status_page.html").read_bytes()
        self._routes: dict[str, Callable[[], Awaitable[tuple[int, bytes, bytes]]]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/api/v1/workers": self._workers,
            "/api/v1/runners": self._runners,
            "/api/v1/requests": self._requests,
            "/api/v1/tenants": self._tenants,
        }

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            await _send(
                send, 405, b"text/plain; charset=utf-8", b"GET or HEAD only\n", [(b"allow", b"GET, HEAD")]
            )
            return
        if path in ("/", "/index.html"):
            # The page's shell holds no data; its scripts send the token with each call.
            await _send(send, 200, b"text/html; charset=utf-8", self._page, _PAGE_HEADERS, method == "HEAD")
            return
        handler = self._routes.get(path)
        if handler is None:
            await _send(send, 404, b"text/plain; charset=utf-8", b"not found\n")
            return
        if not self._authorized(scope):
            extra = [(b"www-authenticate", b'Bearer realm="wws-supervisor admin"')]
            await _send(send, 401, b"text/plain; charset=utf-8", b"a bearer token is required\n", extra)
            return
        status, content_type, body = await handler()
        await _send(send, status, content_type, body, head=method == "HEAD")

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._token)
        return False

    async def _metrics(self) -> tuple[int, bytes, bytes]:
        # Reading every process's files is disk work: off the event loop.
        body, content_type = await trio.to_thread.run_sync(metrics.render, self._folder)
        return 200, content_type.encode(), body

    async def _healthz(self) -> tuple[int, bytes, bytes]:
        return 200, b"text/plain; charset=utf-8", b"ok\n"

    async def _readyz(self) -> tuple[int, bytes, bytes]:
        ready, reason = readiness(read_states(self._folder), self._frontends)
        return (200 if ready else 503), b"text/plain; charset=utf-8", f"{reason}\n".encode()

    async def _workers(self) -> tuple[int, bytes, bytes]:
        return _json(workers_view(read_states(self._folder)))

    async def _runners(self) -> tuple[int, bytes, bytes]:
        return _json({"runners": runners_view(read_states(self._folder))})

    async def _tenants(self) -> tuple[int, bytes, bytes]:
        return _json(tenants_view(read_states(self._folder)))

    async def _requests(self) -> tuple[int, bytes, bytes]:
        families = await trio.to_thread.run_sync(lambda: list(metrics.collect(self._folder)))
        return _json(requests_view(families, read_states(self._folder)))


def readiness(states: list[Json], expected: int) -> tuple[bool, str]:
    """Ready when each of the ``expected`` front ends publishes a current
    generation with a runner up, and none is draining."""
    seen = {int(state["frontend"]) for state in states}
    missing = sorted(set(range(expected)) - seen)
    if missing:
        return False, f"front end {missing[0]} is not serving yet"
    for state in states:
        if state.get("draining"):
            return False, f"front end {state['frontend']} is draining"
        current = [g for g in state.get("generations", []) if g.get("current")]
        # With tenants, one current generation per tenant that is up: each needs a runner.
        if not current or not all(any(r["state"] in ("idle", "busy") for r in g["runners"]) for g in current):
            return False, f"front end {state['frontend']} has no runner ready"
    return True, "ready"


def workers_view(states: list[Json]) -> Json:
    """The routes of the newest generation any front end serves."""
    newest: Json | None = None
    for state in states:
        for generation in state.get("generations", []):
            if generation.get("current") and (
                newest is None or generation["generation"] > newest["generation"]
            ):
                newest = generation
    if newest is None:
        return {"generation": None, "workers": []}
    if newest.get("tenant"):  # --tenants: every tenant's current workers, each named
        current = [g for s in states for g in s.get("generations", []) if g.get("current")]
        workers = [{"tenant": g["tenant"], **w} for g in current for w in g["workers"]]
        return {"generation": newest["generation"], "workers": workers}
    return {"generation": newest["generation"], "workers": newest["workers"]}


def tenants_view(states: list[Json]) -> Json:
    """``/api/v1/tenants``: each tenant's hosts, limits and state (empty without --tenants)."""
    return {"tenants": [t for state in states for t in state.get("tenants") or []]}


def runners_view(states: list[Json]) -> list[Json]:
    return [
        {
            "frontend": state["frontend"],
            "frontend_pid": state["pid"],
            "generation": generation["generation"],
            "current": generation["current"],
            "tenant": generation.get("tenant", ""),
            **runner,
        }
        for state in states
        for generation in state.get("generations", [])
        for runner in generation["runners"]
    ]


def requests_view(families: list[Any], states: list[Json]) -> Json:
    """Request totals by route (for rates on the status page) and the recent failures."""
    routes: dict[str, Json] = {}

    def route_entry(name: str, tenant: str = "") -> Json:
        return routes.setdefault(
            f"{tenant} {name}",
            {"tenant": tenant, "route": name, "requests": 0, "failures": 0, "by_status": {}, "seconds": 0.0},
        )

    gauges: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "wws_requests_total":
                entry = route_entry(labels["route"], labels.get("tenant", ""))
                count = int(sample.value)
                entry["requests"] += count
                entry["by_status"][labels["status"]] = entry["by_status"].get(labels["status"], 0) + count
                if labels["failure"] != "none":
                    entry["failures"] += count
            elif sample.name == "wws_request_duration_seconds_sum":
                route_entry(labels["route"], labels.get("tenant", ""))["seconds"] += sample.value
            elif sample.name in ("wws_queue_depth", "wws_requests_in_flight"):
                gauges[sample.name] = gauges.get(sample.name, 0.0) + sample.value
    failures = sorted(
        (failure for state in states for failure in state.get("recent_failures", [])),
        key=lambda failure: -float(failure["time"]),
    )[:_RECENT_FAILURES]
    return {
        "time": time.time(),
        "routes": sorted(routes.values(), key=lambda entry: (str(entry["tenant"]), str(entry["route"]))),
        "in_flight": int(gauges.get("wws_requests_in_flight", 0)),
        "queue_depth": int(gauges.get("wws_queue_depth", 0)),
        "recent_failures": failures,
    }


class AdminListener:
    """The bound admin socket and what it serves."""

    def __init__(self, sock: socket.socket, app: AdminApp, panel_default: bool) -> None:
        self._sock = sock
        self.app = app
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        self.panel_default = panel_default

    def fileno(self) -> int:
        """The listening socket's fd (handed over to the arbiter program)."""
        return self._sock.fileno()

    @property
    def banner(self) -> str:
        where = " (--enable-panel's default)" if self.panel_default else ""
        return f"Admin listener at {self.url}{where}: status page, /metrics, /healthz, /readyz, /api/v1/"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        hc = hypercorn.config.Config()
        hc.include_server_header = False
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        front = HttpFront(self.app, hc, self._sock, _MAX_CONNECTIONS)
        await front.serve(Shutdown(), task_status=task_status)  # until cancelled


@contextlib.contextmanager
def open_admin(config: ServerConfig, frontends: int) -> Iterator[AdminListener | None]:
    """Bind the admin listener (if asked for) and set up the metrics folder;
    both are gone on exit. Call before any front end starts: they inherit
    the folder.

    Raises:
        StartupError: the admin address cannot be bound.
    """
    address = config.admin or (PANEL_DEFAULT if config.enable_panel else None)
    if address is None:
        yield None
        return
    host, port = address
    sock = _bind(host, port)
    folder = make_scratch()
    try:
        metrics.enable(folder, tenant_label=config.tenants is not None)
        if config.admin_token is None and not _loopback(host):
            log.warning(
                "the admin listener on %s:%d has no --admin-token: whoever reaches it sees the metrics and "
                "the workers",
                host,
                port,
            )
        yield AdminListener(sock, AdminApp(folder, frontends, config.admin_token), config.admin is None)
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen for the admin listener on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _json(value: Any) -> tuple[int, bytes, bytes]:
    return 200, b"application/json", json.dumps(value).encode()


async def _send(
    send: Any,
    status: int,
    content_type: bytes,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    private = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), *(extra or [])]
    await plain(send, status, body, private, content_type, head)
