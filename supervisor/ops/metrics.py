"""Prometheus metrics for the whole server, whichever process counts them.

With the admin listener on, the top process (the single front end, or the
arbiter) creates a folder for this server and every process that counts
something (itself and each front end) writes its numbers there through
``prometheus_client``'s multiprocess mode: one memory-mapped file per process
and metric type. The admin listener merges the files when scraped, so
counters add up across front ends and survive a front end's restart.

``prometheus_client`` decides at import time whether it counts in memory or
in files, from ``PROMETHEUS_MULTIPROC_DIR``: :func:`enable` sets that
variable before it imports the library, and nothing else in the server
imports it. Front ends inherit the folder through :data:`FOLDER_ENV`.

With the admin listener off, :func:`enable` is never called, the library is
never imported, and every hook below is one ``None`` check.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

# The server's metrics folder, for the front-end processes the top process starts.
FOLDER_ENV = "WWS_SUPERVISOR_METRICS_DIR"
_LIBRARY_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Request latency buckets, in seconds: from a cached static answer to a request at its time limit.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Failures kept per process for the status page.
_RECENT_FAILURES = 20
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")

Scope = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Metrics:
    requests: Counter
    latency: Histogram
    queued: Gauge
    running: Gauge
    restarts: Counter
    demotions: Counter
    rss: Gauge
    fuel: Counter
    kv_operations: Counter
    kv_conflicts: Counter


@dataclasses.dataclass
class _Process:
    """What this process counts into and who it is."""

    folder: Path
    frontend: int
    metrics: _Metrics
    recent_failures: collections.deque[dict[str, object]]
    tenant_label: bool = False  # --tenants: requests and latency carry a tenant label


_process: _Process | None = None


def enable(folder: Path, frontend: int = 0, tenant_label: bool = False) -> None:
    """Count this process's metrics into ``folder`` (shared by the whole server).

    Must run before anything imports ``prometheus_client``; processes started
    afterwards inherit the folder (see :func:`enable_inherited`).
    """
    global _process
    os.environ[FOLDER_ENV] = str(folder)
    os.environ[_LIBRARY_ENV] = str(folder)
    from prometheus_client import Counter, Gauge, Histogram, values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # Imported before the variable was set (only in tests that import it
        # themselves): switch to files now, before any metric exists.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    # registry=None: the values live in the folder; the admin reads them from there.
    metrics = _Metrics(
        requests=Counter(
            "wws_requests",
            "HTTP requests answered, by route, status and failure kind (none when it did not fail)",
            ["tenant", "route", "status", "failure"] if tenant_label else ["route", "status", "failure"],
            registry=None,
        ),
        latency=Histogram(
            "wws_request_duration_seconds",
            "Time from request to complete response, by route",
            ["tenant", "route"] if tenant_label else ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        ),
        queued=Gauge(
            "wws_queue_depth",
            "Requests waiting for a free runner",
            registry=None,
            multiprocess_mode="livesum",
        ),
        running=Gauge(
            "wws_requests_in_flight",
            "Requests running on a runner",
            registry=None,
            multiprocess_mode="livesum",
        ),
        restarts=Counter(
            "wws_runner_restarts",
            "Runners replaced, by reason (recycled, demoted, request-fault, crashed, boot-failed)",
            ["reason"],
            registry=None,
        ),
        demotions=Counter(
            "wws_request_demotions",
            "Requests whose runner was set to the lowest CPU priority (--demote-after-ms), by worker file",
            ["worker"],
            registry=None,
        ),
        rss=Gauge(
            "wws_runner_rss_bytes",
            "Resident memory of each runner slot's current runner, as last sampled",
            ["tenant", "frontend", "slot"] if tenant_label else ["frontend", "slot"],
            registry=None,
            multiprocess_mode="livesum",
        ),
        fuel=Counter("wws_fuel_used", "Wasm fuel used, by worker file", ["worker"], registry=None),
        kv_operations=Counter(
            "wws_kv_operations",
            "KV store operations (snapshot, commit) by result (ok, conflict, error)",
            ["op", "result"],
            registry=None,
        ),
        kv_conflicts=Counter(
            "wws_kv_conflicts", "KV commits refused because a key changed meanwhile", registry=None
        ),
    )
    _process = _Process(folder, frontend, metrics, collections.deque(maxlen=_RECENT_FAILURES), tenant_label)


def enable_inherited(frontend: int) -> None:
    """In a front-end process: count into the folder the top process set up, if any."""
    folder = os.environ.get(FOLDER_ENV)
    if folder:
        enable(Path(folder), frontend)


def folder() -> Path | None:
    return _process.folder if _process is not None else None


def frontend_index() -> int:
    return _process.frontend if _process is not None else 0


# The hooks: one call from the code that knows, a no-op with the admin listener off.


def queued(delta: int) -> None:
    if _process is not None:
        _process.metrics.queued.inc(delta)


def running(delta: int) -> None:
    if _process is not None:
        _process.metrics.running.inc(delta)


def runner_restarted(reason: str) -> None:
    if _process is not None:
        _process.metrics.restarts.labels(reason).inc()


def request_demoted(worker_id: str) -> None:
    if _process is not None:
        _process.metrics.demotions.labels(worker_id).inc()


def runner_rss(slot: int, rss_bytes: int, tenant: str = "") -> None:
    if _process is not None:
        labels = (tenant,) if _process.tenant_label else ()
        _process.metrics.rss.labels(*labels, str(_process.frontend), str(slot)).set(rss_bytes)


def fuel_used(worker_id: str, fuel: int) -> None:
    if _process is not None and fuel > 0:
        _process.metrics.fuel.labels(worker_id).inc(fuel)


def kv_op(op: str, result: str = "ok") -> None:
    if _process is not None:
        _process.metrics.kv_operations.labels(op, result).inc()
        if result == "conflict":
            _process.metrics.kv_conflicts.inc()


def recent_failures() -> list[dict[str, object]]:
    return list(_process.recent_failures) if _process is not None else []


# Request counting: an ASGI wrapper around the worker app. The app names the
# route it served in scope["wws.route"]; its failures carry x-wws-failure.

ROUTE_KEY = "wws.route"
TENANT_KEY = "wws.tenant"  # set by supervisor/front/tenant_router.py
_OTHER_ROUTE = "(other)"  # public files, 404s, built-in answers


def instrument(app: Any) -> Any:
    """``app`` with its requests counted and timed (``app`` itself when metrics are off)."""
    if _process is None:
        return app
    process = _process

    async def counted(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status, failure, counted_yet = 0, "", False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status, failure, counted_yet
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-wws-failure":
                        failure = value.decode("latin-1")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last byte leaves: whoever got the answer sees it counted.
                counted_yet = True
                _count(process, scope, status, failure, time.perf_counter() - started)
            await send(message)

        try:
            await app(scope, receive, watch)
        finally:
            if status and not counted_yet:  # no status: the client left, or shutdown cut it, first
                _count(process, scope, status, failure, time.perf_counter() - started)

    return counted


def _count(process: _Process, scope: Scope, status: int, failure: str, seconds: float) -> None:
    route = scope.get(ROUTE_KEY) or _OTHER_ROUTE
    tenant = (scope.get(TENANT_KEY) or "",) if process.tenant_label else ()
    process.metrics.requests.labels(*tenant, route, str(status), failure or "none").inc()
    process.metrics.latency.labels(*tenant, route).observe(seconds)
    if failure or status >= 500:
        process.recent_failures.append(
            {
                "time": time.time(),
                "frontend": process.frontend,
                "tenant": scope.get(TENANT_KEY) or "",
                "route": route,
                "method": scope.get("method", ""),
                "path": scope.get("path", "")[:200],
                "status": status,
                "failure": failure or "none",
            }
        )


# The admin's side: the whole server's numbers, merged from every process's files.


def collect(folder: Path) -> Iterable[Metric]:
    """Every metric of the server, merged across its processes."""
    from prometheus_client import multiprocess

    _forget_dead(folder)
    return multiprocess.MultiProcessCollector(None, str(folder)).collect()  # type: ignore[no-untyped-call,no-any-return]


def render(folder: Path) -> tuple[bytes, str]:
    """The Prometheus text exposition of :func:`collect` and its content type."""
    from prometheus_client import exposition

    # The 0.0.4 text format: what every Prometheus version parses.
    return exposition.generate_latest(_Snapshot(folder)), exposition.CONTENT_TYPE_PLAIN_0_0_4


class _Snapshot:
    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def collect(self) -> Iterable[Metric]:
        return collect(self._folder)


def _forget_dead(folder: Path) -> None:
    # Gauges of a process that is gone (a front end that crashed) must not
    # count in the live sums; counters stay, so totals never go back.
    from prometheus_client import multiprocess

    for path in glob.glob(os.path.join(folder, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match and not psutil.pid_exists(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), str(folder))  # type: ignore[no-untyped-call]
