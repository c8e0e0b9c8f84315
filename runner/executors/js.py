"""JavaScript workers: a fresh copy of the worker's heap snapshot per request
(``runner/engines/jsengine.py``), the handler called through the shim, its fetch()
calls made here under the worker's outbound policy."""

from __future__ import annotations

import base64
import functools
import json
import os
import time

import wasmtime

from ipc.messages import FailureKind, HttpPolicy, Invoke, WorkerSpec
from runner.engines.outbound import HttpErrorKind, OutboundError, send
from runner.engines.quickjs import JsProgram, ScriptLoadError, ScriptTimeout
from runner.engines.wasmffi import EnvArrays
from runner.executors.base import Execution, GuestFiles, Response, outbound_deadline
from runner.executors.kit_protocol import (
    BadOutput,
    KitResponse,
    load_json,
    printable,
    request_json,
    response_from,
)
from runner.failures import GuestFailure

# Outbound requests one script request may make.
MAX_FETCHES_PER_REQUEST = 64


class JsExecutor:
    """Runs one JavaScript worker's requests (see :mod:`runner.executors.base`)."""

    def __init__(self, spec: WorkerSpec, program: JsProgram) -> None:
        self._spec = spec
        self._program = program
        self._env = EnvArrays(list(spec.variables.items()))

    def execute(self, store: wasmtime.Store, invoke: Invoke, files: GuestFiles) -> Execution:
        wasi = wasmtime.WasiConfig()
        self._env.apply(wasi)
        store.set_wasi(wasi)
        deadline = time.monotonic() + invoke.timeout_ms / 1000
        attempted = [0]  # fetch() calls made (they may have reached the network)
        fetch = functools.partial(_fetch, self._spec.http, outbound_deadline(invoke), attempted)
        request = request_json(invoke, seed=os.urandom(16).hex())
        try:
            output = self._program.run(store, request, deadline, fetch)
        except ScriptTimeout as exc:
            return Execution(
                None, GuestFailure(FailureKind.TIMEOUT, str(exc)), outbound_requests=attempted[0]
            )
        except ScriptLoadError as exc:
            failure = GuestFailure(FailureKind.SCRIPT_ERROR, str(exc))
            return Execution(None, failure, outbound_requests=attempted[0])
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            return Execution(None, exc, outbound_requests=attempted[0])
        try:
            response, logs = _script_response(output, files.max_output)
        except BadOutput as exc:
            failure = GuestFailure(FailureKind.BAD_OUTPUT, str(exc))
            return Execution(None, failure, outbound_requests=attempted[0])
        except _ScriptFailed as exc:
            return Execution(None, exc.failure, logs=exc.logs, outbound_requests=attempted[0])
        answer = Response(response.status, response.headers, response.body)
        return Execution(answer, logs=logs, outbound_requests=attempted[0], kv=response.kv)


def _fetch(policy: HttpPolicy, deadline: float, attempted: list[int], batch: bytes) -> bytes:
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
            attempted[0] += 1
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


class _ScriptFailed(Exception):
    def __init__(self, failure: GuestFailure, logs: bytes) -> None:
        super().__init__(failure.detail)
        self.failure, self.logs = failure, logs


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
        raise _ScriptFailed(GuestFailure(kind, detail), logs)
    return response_from(document), logs
