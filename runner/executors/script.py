"""One request of a Python or Ruby worker, on a fresh copy of its snapshot.

The wws protocol is kept as the wrapper speaks it: the request JSON on stdin,
the response JSON on stdout, tracebacks on stderr. The language module says
how to enter the interpreter (:class:`Entry`); this module does the rest:
WASI, the instance, the call, and turning what came out into an Execution.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

from ipc.messages import FailureKind, Invoke, WorkerSpec
from runner.engines.scriptrt import Interpreter, last_line, set_globals, wasi_config
from runner.engines.wasmffi import export_get, set_stdin_bytes
from runner.executors.base import Execution, GuestFiles, Response
from runner.executors.kit_protocol import BadOutput, parse_response, printable, request_json
from runner.failures import GuestFailure

# Enters the interpreter for one request; returns whether the worker
# answered (False: it raised, and its traceback is on stderr).
Entry = Callable[[wasmtime.Store, wasmtime.Instance, wasmtime.Instance], bool]

# Exceptions that mean the interpreter ran out of memory, not a bug.
_OUT_OF_MEMORY = ("MemoryError", "NoMemoryError", "failed to allocate memory")


class ScriptExecutor:
    """Runs one Python or Ruby worker's requests (see :mod:`runner.executors.base`)."""

    def __init__(
        self,
        spec: WorkerSpec,
        interpreter: Interpreter,
        heap: wasmtime.InstancePre,
        src: Path,
        moved: list[list[Any]],
        entry: Entry,
        before: Callable[[], None] | None = None,
    ) -> None:
        self._spec = spec
        self._interpreter = interpreter
        self._heap = heap
        self._src = src
        self._moved = moved
        self._entry = entry
        self._before = before

    def execute(self, store: wasmtime.Store, invoke: Invoke, files: GuestFiles) -> Execution:
        wasi = wasi_config(self._spec, self._src)
        set_stdin_bytes(wasi, request_json(invoke) + b"\n")
        wasi.stdout_file = files.stdout_path
        wasi.stderr_file = files.stderr_path
        store.set_wasi(wasi)
        if self._before is not None:
            self._before()
        heap: wasmtime.Instance | None = None
        try:
            heap, instance = self._interpreter.instantiate(store, self._heap)
            set_globals(store, instance, self._moved)
            answered = self._entry(store, heap, instance)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            stdout, stderr = files.read()
            return Execution(None, exc, _memory_size(store, heap), stderr)
        stdout, stderr = files.read()
        if not answered:
            error = last_line(stderr)
            kind = FailureKind.MEMORY_LIMIT if error.startswith(_OUT_OF_MEMORY) else FailureKind.SCRIPT_ERROR
            failure = GuestFailure(kind, printable(error[:500]))
            return Execution(None, failure, _memory_size(store, heap), stderr)
        try:
            parsed = parse_response(stdout, files.max_output)
        except BadOutput as exc:
            return Execution(None, GuestFailure(FailureKind.BAD_OUTPUT, str(exc)), None, stderr)
        response = Response(parsed.status, parsed.headers, parsed.body)
        return Execution(response, logs=stderr, kv=parsed.kv)


def _memory_size(store: wasmtime.Store, heap: wasmtime.Instance | None) -> int | None:
    if heap is None:
        return None
    memory = export_get(store, heap, "memory")
    return memory.data_len(store) if isinstance(memory, wasmtime.Memory) else None
