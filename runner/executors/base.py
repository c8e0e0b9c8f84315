"""One executor per worker contract, behind one small interface.

The sandbox makes the Store (fresh per request, with its fuel, memory and
epoch limits) and hands it to the worker's executor, which runs the guest its
contract's way and returns an :class:`Execution` value: a response, or what
ended the request. :func:`run` turns that into the Reply or Failure the
supervisor gets, through the one classification in :mod:`runner.failures`.
Adding a contract means adding one executor module and one line where
executors are chosen (``runner.engines.modules.load_worker``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

import wasmtime

from ipc.messages import Failure, FailureKind, Invoke, Reply
from runner import failures


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[list[str]]
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Execution:
    """How one request ended: ``response`` on success, else ``error``."""

    response: Response | None
    error: BaseException | None = None
    # The guest's linear memory size at the end, to tell "the allocator was
    # refused memory" from other aborts; None when there was no memory.
    memory_size: int | None = None
    # For the supervisor's log: the guest's stderr tail, or its log() lines.
    logs: bytes = b""
    outbound_requests: int = 0
    # The KV namespace the worker handed back (wws workers), or None.
    kv: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GuestFiles:
    """The runner's stdout/stderr files for guests that print (WASI), reused
    for every request; ``read`` returns (stdout, stderr tail)."""

    stdout_path: str
    stderr_path: str
    read: Callable[[], tuple[bytes, bytes]]
    max_output: int


# Time kept back from outbound calls at the end of a request (at most a
# fifth of it), so the worker can still handle their timeout and answer.
_OUTBOUND_MARGIN_S = 0.2


def outbound_deadline(invoke: Invoke) -> float:
    """When (``time.monotonic``) the request's outbound calls must end."""
    return time.monotonic() + invoke.timeout_ms / 1000 - min(_OUTBOUND_MARGIN_S, invoke.timeout_ms / 5000)


class Executor(Protocol):
    def execute(self, store: wasmtime.Store, invoke: Invoke, files: GuestFiles) -> Execution:
        """Run ``invoke`` in ``store`` (already limited); never raises for
        anything the guest does."""
        ...


def run(
    executor: Executor, store: wasmtime.Store, invoke: Invoke, files: GuestFiles, started: float
) -> Reply | Failure:
    """Run one request through ``executor`` and build the answer frame's message."""
    execution = executor.execute(store, invoke, files)
    fuel_used = invoke.fuel - store.get_fuel()
    elapsed_us = int((time.perf_counter() - started) * 1e6)
    response = execution.response
    if response is not None:
        # Only what changed travels back (as for kit workers).
        after = execution.kv if execution.kv is not None else invoke.kv
        return Reply(
            invoke.request_id,
            response.status,
            response.headers,
            response.body,
            {key: value for key, value in after.items() if invoke.kv.get(key) != value},
            [key for key in invoke.kv if key not in after],
            fuel_used,
            elapsed_us,
            execution.logs,
            execution.outbound_requests,
        )
    error = execution.error
    if error is not None:
        # The traceback's frames hold the request's Store: left to the cycle
        # collector, each trapped request would keep its instance slots of the
        # pooling allocator, and a few traps in a row would exhaust them.
        error.__traceback__ = None
    classified = failures.classify(error) if error is not None else None
    kind, detail = classified or (
        FailureKind.INTERNAL,
        "the executor returned neither a response nor an error",
    )
    if kind in (FailureKind.TRAP, FailureKind.BAD_OUTPUT, FailureKind.EXIT) and failures.near_memory_limit(
        execution.memory_size, invoke.memory_bytes
    ):
        kind, detail = (
            FailureKind.MEMORY_LIMIT,
            f"memory limit of {invoke.memory_bytes} bytes reached ({detail})",
        )
    return Failure(invoke.request_id, kind, detail, fuel_used, elapsed_us, execution.logs)
