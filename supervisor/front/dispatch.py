"""One worker request as the KV store sees it: snapshot, run, commit, and run
it again when the commit meets a conflict.

The commit is optimistic (see supervisor/front/kv.py): it lands only if every key
the request set or deleted still holds the value it had in the request's
snapshot. Nothing is locked while the worker runs, so requests on different
keys, or on none, never wait for each other; only the check-and-write is
atomic, inside the backend.

On a conflict the request is *isolated* (its only effects are its response
and its KV changes) unless it made outbound HTTP calls or can write to a
mounted folder. An isolated request is run again from a fresh snapshot, up to
:data:`MAX_ATTEMPTS` times with a short randomized backoff (so a crowd
hammering one key spreads out instead of colliding in lockstep); then it gets
503 ``kv-contended``. A request that is not isolated is never repeated (that
would repeat its calls): it gets 409 ``kv-conflict`` and writes nothing.

What the worker printed on attempts that were thrown away is dropped; only
the attempt that answers the client is logged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import trio

from ipc.messages import Failure, FailureKind, Invoke, Reply
from supervisor.front.kv import KvConflict, KvLimitError, KvStore, KvUnavailable
from supervisor.ops import metrics

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
# Backoff before attempt n+1: uniform in [0, min(_BACKOFF_CAP_S, _BACKOFF_FIRST_S * 2**(n-1))].
_BACKOFF_FIRST_S = 0.01
_BACKOFF_CAP_S = 0.2

Submit = Callable[[Invoke], Awaitable[Reply | Failure]]
BuildInvoke = Callable[[dict[str, str]], Invoke]


async def run_with_kv(
    kv: KvStore,
    namespace: str | None,
    build: BuildInvoke,
    submit: Submit,
    *,
    label: str,
    writes_files: bool = False,
) -> Reply | Failure:
    """Run one request and commit its KV changes, re-running it on a conflict.

    Args:
        kv: the store.
        namespace: the worker's KV namespace; None means no KV (empty snapshot,
            changes ignored).
        build: makes the Invoke for one attempt from that attempt's snapshot
            (each attempt gets its own request id).
        submit: runs an Invoke on a runner.
        label: names the request in log lines.
        writes_files: the worker can write to a mounted folder, so it is not
            run again on a conflict (like a request that made outbound calls).

    Returns:
        The worker's Reply once its changes are committed, or a Failure: the
        worker's own, or ``kv-limit``/``kv-unavailable`` (snapshot or write
        refused), ``kv-conflict`` (not re-runnable), ``kv-contended`` (every
        attempt conflicted). Nothing is written for a Failure.

    Raises:
        Overloaded: from ``submit``, on any attempt.
    """
    started = time.perf_counter()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            snapshot = await _snapshot(kv, namespace)
        except (KvLimitError, KvUnavailable) as exc:
            metrics.kv_op("snapshot", "error")
            return _kv_failure(0, exc, f"KV snapshot of {namespace!r} failed: {exc}", started)
        result = await submit(build(snapshot))
        if not isinstance(result, Reply) or not namespace or not (result.kv_set or result.kv_deleted):
            return result
        # The keys it wrote stand in for what it read (see supervisor/front/kv.py).
        expected = {key: snapshot.get(key) for key in (*result.kv_set, *result.kv_deleted)}
        try:
            await kv.apply(namespace, result.kv_set, result.kv_deleted, expected)
        except KvConflict as exc:
            metrics.kv_op("commit", "conflict")
            conflict = exc
        except (KvLimitError, KvUnavailable) as exc:
            metrics.kv_op("commit", "error")
            return _kv_failure(result.request_id, exc, f"KV write refused: {exc}", started, result)
        else:
            metrics.kv_op("commit")
            return result
        if result.outbound_requests or writes_files:
            why = (
                f"it made {result.outbound_requests} outbound HTTP request(s)"
                if result.outbound_requests
                else "it can write to a mounted folder"
            )
            detail = f"KV conflict: {conflict}; not run again because {why}"
            return _failure(result, FailureKind.KV_CONFLICT, detail, started)
        if attempt == MAX_ATTEMPTS:
            detail = f"KV conflict on every one of {MAX_ATTEMPTS} attempts, last: {conflict}"
            return _failure(result, FailureKind.KV_CONTENDED, detail, started)
        # Debug: under a hot key this is one line per retry; giving up is logged
        # (as the request's failure) at warning.
        log.debug(
            "%s: KV conflict (attempt %d of %d): %s; running it again", label, attempt, MAX_ATTEMPTS, conflict
        )
        await trio.sleep(random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_FIRST_S * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")


async def _snapshot(kv: KvStore, namespace: str | None) -> dict[str, str]:
    if not namespace:
        return {}
    snapshot = await kv.snapshot(namespace)
    kv.limits.check_snapshot(namespace, snapshot)
    metrics.kv_op("snapshot")
    return snapshot


def _elapsed_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)


def _kv_failure(
    request_id: int, exc: Exception, detail: str, started: float, reply: Reply | None = None
) -> Failure:
    kind = FailureKind.KV_UNAVAILABLE if isinstance(exc, KvUnavailable) else FailureKind.KV_LIMIT
    if reply is None:
        return Failure(request_id, kind, detail, 0, _elapsed_us(started), b"")
    return _failure(reply, kind, detail, started)


def _failure(reply: Reply, kind: FailureKind, detail: str, started: float) -> Failure:
    return Failure(reply.request_id, kind, detail, reply.fuel_used, _elapsed_us(started), reply.stderr)
