"""Running one request inside a fresh wasm instance, under fuel, memory and
wall-clock limits, and turning every way that can fail into a FailureKind."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable

import wasmtime

from ipc.messages import Failure, FailureKind, HttpPolicy, Invoke, Reply
from runner import executor, failures
from runner.epoch import EpochTicker
from runner.executor import GuestFiles
from runner.http_import import RequestContext
from runner.kit import (
    DEFAULT_MAX_OUTPUT,
    BadOutput,
    KitResponse,
    load_json,
    parse_response,
    printable,
    request_json,
    response_from,
)
from runner.modules import LoadedWorker
from runner.outbound import HttpErrorKind, OutboundError, send
from runner.quickjs import JsProgram, ScriptLoadError, ScriptTimeout
from runner.wasmffi import RawFunc, export_get, raw_export, set_stdin_bytes

# The tail of a worker's stderr that travels back for the supervisor's log.
STDERR_TAIL = 4096


@dataclasses.dataclass(slots=True)
class _Outcome:
    kind: FailureKind | None = None
    detail: str = ""
    # fetch() calls a script attempted (they may have reached the network).
    outbound: int = 0


class Sandbox:
    """Owns the engine-wide pieces of a runner and runs requests one at a time.

    Guest stdout and stderr go to two files private to this runner, reused
    (truncated by wasmtime on open) for every request: no temp file per request.
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        workers: dict[str, LoadedWorker],
        tick_ms: int,
        scratch_dir: str,
        http_context: RequestContext,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self._engine = engine
        # Worker output past this is bad-output, well before the IPC frame limit.
        self._max_output = max_output_bytes
        self._http_context = http_context
        self._workers = workers
        self._ticker = EpochTicker(engine, tick_ms)
        self._scratch = os.path.join(scratch_dir, str(os.getpid()))
        os.makedirs(self._scratch, mode=0o700, exist_ok=True)
        self._stdout_path = os.path.join(self._scratch, "stdout")
        self._stderr_path = os.path.join(self._scratch, "stderr")
        # wasmtime reopens (and truncates) these paths for every request; our
        # descriptors stay open on the same files, so reading back the output
        # is one pread instead of open/read/close.
        self._stdout_fd = os.open(self._stdout_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._stderr_fd = os.open(self._stderr_path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        os.close(self._stdout_fd)
        os.close(self._stderr_fd)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def run(self, invoke: Invoke) -> Reply | Failure:
        # The ticker must not park while a request runs, however long it is.
        self._ticker.request_started()
        try:
            return self._run(invoke)
        finally:
            self._ticker.request_finished()

    def _run(self, invoke: Invoke) -> Reply | Failure:
        started = time.perf_counter()
        worker = self._workers.get(invoke.worker_id)
        if worker is None:
            return Failure(
                invoke.request_id, FailureKind.LOAD_ERROR, "worker is not loaded in this runner", 0, 0, b""
            )
        store = wasmtime.Store(self._engine)
        store.set_fuel(invoke.fuel)
        store.set_limits(memory_size=invoke.memory_bytes, instances=4, tables=4, memories=1)
        store.set_epoch_deadline(self._ticker.ticks_for(invoke.timeout_ms))
        if worker.executor is not None:  # WAGI, serverless-wasm: one module per contract
            files = GuestFiles(self._stdout_path, self._stderr_path, self._read_outputs, self._max_output)
            return executor.run(worker.executor, store, invoke, files, started)
        wasi = wasmtime.WasiConfig()
        wasi.env = list(worker.spec.variables.items())
        if worker.js is None:
            # Scripts report through the shim (console output comes back with
            # the response), so only compiled workers get stdout/stderr files.
            wasi.stdout_file = self._stdout_path
            wasi.stderr_file = self._stderr_path
            for mount in worker.spec.mounts:
                # Read-only unless the TOML says writable: writes fail with EPERM.
                wasi.preopen_dir(mount.host_path, mount.guest_path, mount.writable)
        outcome = _Outcome()
        logs = b""
        deadline = time.monotonic() + invoke.timeout_ms / 1000
        # Outbound calls end a little before the request does, so the worker
        # still has time to handle their timeout error and answer.
        outbound_deadline = deadline - min(_OUTBOUND_MARGIN_S, invoke.timeout_ms / 5000)
        self._http_context.start(worker.spec.http, outbound_deadline)
        if worker.js is not None:
            store.set_wasi(wasi)
            request = request_json(invoke, seed=os.urandom(16).hex())
            fetch = functools.partial(_script_fetch, worker.spec.http, outbound_deadline, outcome)
            output, instance = self._execute_js(store, worker.js, request, deadline, fetch, outcome), None
        else:
            set_stdin_bytes(wasi, request_json(invoke))
            store.set_wasi(wasi)
            instance = self._execute(store, worker, outcome)
            output = None
        fuel_used = invoke.fuel - store.get_fuel()
        stdout, stderr = self._read_outputs() if worker.js is None else (b"", b"")
        elapsed_us = int((time.perf_counter() - started) * 1e6)
        if outcome.kind is None:
            try:
                if output is not None:
                    response, logs = _script_response(output, self._max_output)
                else:
                    response = parse_response(stdout, self._max_output)
            except BadOutput as exc:
                outcome = _Outcome(FailureKind.BAD_OUTPUT, str(exc))
            except _ScriptFailed as exc:
                outcome, logs = exc.outcome, exc.logs
            else:
                return Reply(
                    invoke.request_id,
                    response.status,
                    response.headers,
                    response.body,
                    *_kv_changes(invoke.kv, response.kv),
                    fuel_used,
                    elapsed_us,
                    logs + stderr,
                    outcome.outbound + self._http_context.outbound_requests,
                )
        if outcome.kind in (FailureKind.TRAP, FailureKind.BAD_OUTPUT, FailureKind.EXIT) and _at_memory_limit(
            store, instance, invoke.memory_bytes
        ):
            # The guest's allocator hit the limit (memory.grow returned -1) and
            # it aborted; say so instead of reporting the abort itself.
            outcome = _Outcome(
                FailureKind.MEMORY_LIMIT,
                f"memory limit of {invoke.memory_bytes} bytes reached ({outcome.detail})",
            )
        assert outcome.kind is not None
        return Failure(invoke.request_id, outcome.kind, outcome.detail, fuel_used, elapsed_us, logs + stderr)

    def _execute_js(
        self,
        store: wasmtime.Store,
        program: JsProgram,
        request: bytes,
        deadline: float,
        fetch: Callable[[bytes], bytes],
        outcome: _Outcome,
    ) -> bytes | None:
        try:
            return program.run(store, request, deadline, fetch)
        except ScriptTimeout as exc:
            outcome.kind, outcome.detail = FailureKind.TIMEOUT, str(exc)
        except ScriptLoadError as exc:
            outcome.kind, outcome.detail = FailureKind.SCRIPT_ERROR, str(exc)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            _classify(exc, outcome)
        return None

    def _execute(
        self, store: wasmtime.Store, worker: LoadedWorker, outcome: _Outcome
    ) -> wasmtime.Instance | None:
        instance: wasmtime.Instance | None = None
        assert worker.instance_pre is not None  # set for every worker without an executor
        try:
            instance = worker.instance_pre.instantiate(store)
            if worker.entry is not None:
                # _start/_initialize take and return nothing (checked at load);
                # the raw call skips Func.__call__'s per-call type rebuild.
                RawFunc(store, raw_export(store, instance, worker.entry), (), None)()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            _classify(exc, outcome)
        return instance

    def _read_outputs(self) -> tuple[bytes, bytes]:
        stdout = _pread_all(self._stdout_fd)
        stderr = os.pread(self._stderr_fd, STDERR_TAIL, 0)
        if len(stderr) == STDERR_TAIL:  # more than the tail: keep its end
            size = os.fstat(self._stderr_fd).st_size
            stderr = os.pread(self._stderr_fd, STDERR_TAIL, max(0, size - STDERR_TAIL))
        return stdout, stderr


# Outbound requests one script request may make.
MAX_FETCHES_PER_REQUEST = 64


_FIRST_READ = 1 << 16
# Time kept back from outbound calls at the end of a request (at most a fifth of it).
_OUTBOUND_MARGIN_S = 0.2


def _pread_all(fd: int) -> bytes:
    # A small first read (the usual case: one call, no mmap for the buffer),
    # then the rest at its known size.
    data = os.pread(fd, _FIRST_READ, 0)
    if len(data) < _FIRST_READ:
        return data
    size = os.fstat(fd).st_size
    return data + os.pread(fd, max(0, size - len(data)), len(data))


def _script_fetch(policy: HttpPolicy, deadline: float, outcome: _Outcome, batch: bytes) -> bytes:
    """Make a script's queued fetch() calls under its policy; results go back
    as JSON for ``__wws_deliver`` (errors in wws's "[Kind] message" form)."""
    results: list[dict[str, object]] = []
    for index, item in enumerate(json.loads(batch)):
        try:
            if index >= MAX_FETCHES_PER_REQUEST:
                raise OutboundError(
                    HttpErrorKind.NOT_ALLOWED, f"more than {MAX_FETCHES_PER_REQUEST} fetches in one request"
                )
            body = base64.b64decode(item["body"]) if item.get("hasBody") else None
            headers = [(str(name), str(value)) for name, value in item["headers"]]
            outcome.outbound += 1
            response = send(policy, str(item["method"]), str(item["url"]), headers, body, deadline)
        except OutboundError as exc:
            results.append({"id": item["id"], "error": f"[{exc.kind.label}] {exc.message}"})
            continue
        results.append(
            {
                "id": item["id"],
                "status": response.status,
                "headers": response.headers,
                "body": base64.b64encode(response.body).decode(),
            }
        )
    return json.dumps(results).encode()


def _kv_changes(before: dict[str, str], after: dict[str, str] | None) -> tuple[dict[str, str], list[str]]:
    # Workers return their whole namespace (wws's protocol); only the
    # difference travels back, so concurrent requests touching other keys of
    # the same namespace do not overwrite each other.
    if after is None:
        return {}, []
    changed = {key: value for key, value in after.items() if before.get(key) != value}
    return changed, [key for key in before if key not in after]


def _classify(exc: wasmtime.WasmtimeError | wasmtime.Trap, outcome: _Outcome) -> None:
    classified = failures.classify(exc)  # None: proc_exit(0)
    if classified is not None:
        outcome.kind, outcome.detail = classified


class _ScriptFailed(Exception):
    def __init__(self, outcome: _Outcome, logs: bytes) -> None:
        super().__init__(outcome.detail)
        self.outcome, self.logs = outcome, logs


def _script_response(output: bytes, max_bytes: int) -> tuple[KitResponse, bytes]:
    """The shim's JSON: a response, or the error the handler threw or rejected
    with. Console output comes back as log lines for the supervisor."""
    document = load_json(output, max_bytes)
    if not isinstance(document, dict):
        raise BadOutput("the JavaScript driver returned JSON that is not an object")
    lines = [f"console.{level}: {text}" for level, text in document.get("logs", [])]
    # Logs are for people: a lone surrogate becomes an escape, not an error.
    logs = ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace") if lines else b""
    error = document.get("error")
    if error is not None:
        kind = FailureKind.MEMORY_LIMIT if "out of memory" in error else FailureKind.SCRIPT_ERROR
        stack = str(document.get("stack", "")).strip()
        detail = printable(f"{error}" + (f"\n{stack}" if stack else ""))
        raise _ScriptFailed(_Outcome(kind, detail), logs)
    return response_from(document), logs


def _at_memory_limit(store: wasmtime.Store, instance: wasmtime.Instance | None, limit: int) -> bool:
    if instance is None:
        return False
    memory = export_get(store, instance, "memory")
    if not isinstance(memory, wasmtime.Memory):
        return False
    return failures.near_memory_limit(memory.data_len(store), limit)
