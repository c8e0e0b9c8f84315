"""The ASGI app in front of the tenants: pick the tenant by Host (then path
prefix), hold it to its request rate and its requests in flight, and hand the
request to that tenant's current generation.

* No tenant answers the Host (and none is the default): 404.
* A tenant whose project could not start: 503 ``tenant-unavailable``.
* Over its ``requests_per_second`` and ``burst``: 429 with ``Retry-After``
  (a token bucket per tenant, so a burst is allowed and the rate holds over time).
* Over ``max_concurrency`` with ``queue_size`` already waiting, or still
  waiting after the queue timeout: 503 ``overloaded`` with ``Retry-After``.

These answers cost no runner, and all of them come from here: the tenant's
own pool only ever sees the requests its quota lets through.

A 429 or a quota 503 is held for :data:`HOLD_S` before it is sent (and its
``Retry-After`` counts from then). Answering at once would let a client that
ignores ``Retry-After`` loop as fast as the front end can parse requests, and
the front end's one core would then go to refusing that tenant instead of
serving the others; held, each of its connections costs one answer a second.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import trio

from supervisor.front.responses import lifespan, plain
from supervisor.ops.metrics import TENANT_KEY
from supervisor.pool.generations import Switch
from supervisor.project.tenants import Tenant, TenantLimits, host_of, pick

Scope = dict[str, Any]

HOLD_S = 1.0


class TokenBucket:
    """``rate`` tokens a second, at most ``size`` saved up."""

    def __init__(self, rate: float, size: int) -> None:
        self.rate, self.size = rate, size
        self._tokens = float(size)
        self._last = trio.current_time()

    def take(self) -> float:
        """0 when a token was taken; else the seconds until one is there."""
        now = trio.current_time()
        self._tokens = min(float(self.size), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class Busy(Exception):
    pass


class Gate:
    """``limit`` requests in flight, ``queue`` more waiting up to ``timeout_s``."""

    def __init__(self, limit: int, queue: int, timeout_s: float) -> None:
        self._semaphore = trio.Semaphore(limit)
        self._queue, self._timeout_s = queue, timeout_s
        self.waiting = 0

    @property
    def in_flight(self) -> int:
        return (self._semaphore.max_value or 0) - self._semaphore.value

    async def __aenter__(self) -> None:
        try:
            self._semaphore.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        if self.waiting >= self._queue:
            raise Busy
        self.waiting += 1
        try:
            with trio.move_on_after(self._timeout_s):
                await self._semaphore.acquire()
                return
        finally:
            self.waiting -= 1
        raise Busy

    async def __aexit__(self, *_: object) -> None:
        self._semaphore.release()


@dataclasses.dataclass(eq=False)
class TenantEntry:
    """One tenant as the router serves it."""

    tenant: Tenant
    switch: Switch | None  # None: its project could not start
    down_reason: str = ""
    bucket: TokenBucket | None = None
    gate: Gate | None = None

    @classmethod
    def make(
        cls, tenant: Tenant, switch: Switch | None, queue_timeout_s: float, reason: str = ""
    ) -> TenantEntry:
        limits: TenantLimits = tenant.limits
        bucket = None
        if limits.requests_per_second is not None:
            bucket = TokenBucket(limits.requests_per_second, limits.bucket_size)
        gate = None
        if limits.max_concurrency is not None:
            queue = limits.queue_size if limits.queue_size is not None else 4 * limits.max_concurrency
            gate = Gate(limits.max_concurrency, queue, queue_timeout_s)
        return cls(tenant, switch, reason, bucket, gate)


class TenantRouter:
    def __init__(self) -> None:
        self._tenants: list[Tenant] = []
        self.entries: dict[str, TenantEntry] = {}

    def set(self, entry: TenantEntry) -> None:
        """Add or replace a tenant; requests already routed keep what they had."""
        self.entries = {**self.entries, entry.tenant.name: entry}
        self._tenants = [e.tenant for e in self.entries.values()]

    def remove(self, name: str) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k != name}
        self._tenants = [e.tenant for e in self.entries.values()]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = host_of(value.decode("latin-1"))
                break
        tenant = pick(self._tenants, host, scope["path"])
        entry = self.entries.get(tenant.name) if tenant is not None else None
        if entry is None:
            await _answer(send, 404, b"No site is served at this host name\n")
            return
        scope[TENANT_KEY] = entry.tenant.name
        if entry.switch is None:
            await _answer(send, 503, b"This site is unavailable\n", b"tenant-unavailable", retry_s=5)
            return
        if entry.bucket is not None and (wait := entry.bucket.take()) > 0:
            await trio.sleep(HOLD_S)
            await _answer(
                send, 429, b"Too many requests, retry later\n", b"rate-limited", retry_s=wait - HOLD_S
            )
            return
        if entry.gate is None:
            await entry.switch(scope, receive, send)
            return
        try:
            async with entry.gate:
                await entry.switch(scope, receive, send)
        except Busy:
            await trio.sleep(HOLD_S)
            await _answer(send, 503, b"The site is busy, retry shortly\n", b"overloaded", retry_s=0)


async def _answer(
    send: Any, status: int, body: bytes, failure: bytes = b"", retry_s: float | None = None
) -> None:
    extra = [(b"x-wws-failure", failure)] if failure else []
    if retry_s is not None:
        extra.append((b"retry-after", str(max(0, math.ceil(retry_s))).encode()))
    await plain(send, status, body, extra)
