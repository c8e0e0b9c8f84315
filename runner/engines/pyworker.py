"""Python workers: CPython 3.12 (WASI command build) from a snapshot.

The build is a command: its only entry is ``_start``, whose stack is live
for as long as the script runs, and it exports no CPython function. So the
snapshot is taken *inside* a call. The loading script (script_api/driver.py,
run with ``-c``) loads the API and the worker, defines ``__wws_handle``,
prints the addresses the runner needs, then calls ``time.process_time()``;
the runner's clock import sees the marker on stdout and stops the guest
there, with the interpreter lock held and every CPython structure
consistent. The linear memory and the stack pointer at that moment are the
snapshot. The C frames above the stack pointer stay frozen and are never
returned into.

Per request the runner enters CPython through its function table:
``tp_call`` of the function type (``PyVectorcall_Call``), with
``__wws_handle`` and the empty tuple, below the frozen frames, exactly as a C
extension calls back into Python. The table is exported by a one-export
rewrite of the runtime (:func:`runner.engines.wasmbake.add_export`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime

from ipc.messages import WorkerSpec
from runner.engines.scriptrt import (
    Interpreter,
    Language,
    ScriptLoadError,
    api_source,
    bake_store,
    cached_heap,
    last_line,
    moved_globals,
    wasi_config,
)
from runner.engines.wasmbake import add_export, heap_module
from runner.engines.wasmffi import RawFunc, export_get
from runner.executors.script import ScriptExecutor

if TYPE_CHECKING:
    from runner.engines.modules import ModuleCache

_TABLE_EXPORT = "__wws_table"
_SNAPSHOT_MARKER = b"\n#wws-snapshot\n"
# PyTypeObject.tp_call on wasm32: 16 pointer-sized fields precede it.
_TP_CALL_OFFSET = 64
_PTR = ("i32", "i32", "i32")


def _prepare(module: bytes) -> bytes:
    return add_export(module, _TABLE_EXPORT, 1, 0)


def _define(linker: wasmtime.Linker, module: wasmtime.Module) -> None:
    """CPython imports nothing but WASI."""


PYTHON = Language("python", "py", "wws-supervisor runtimes install python", _prepare, _define)


class _Snapshot(Exception):
    """Raised from the clock import to stop the loading script."""


def load(spec: WorkerSpec, cache: ModuleCache, *, write: bool) -> ScriptExecutor:
    """A Python worker ready to serve: its snapshot from the cache, else made.

    Raises:
        ScriptLoadError: no runtime, or the worker fails to load (the last
            line of its traceback).
    """
    runtime, src, module, snapshot = cached_heap(PYTHON, spec, cache, write=write, bake=_bake, kind="py-heap")
    try:
        handle, no_args, ok, call = (int(snapshot[k]) for k in ("handle", "no_args", "ok", "call"))
        moved = list(snapshot["globals"])
    except (KeyError, TypeError, ValueError):
        raise ScriptLoadError("the worker's cached snapshot is damaged; clear the cache") from None

    def enter(store: wasmtime.Store, heap: wasmtime.Instance, instance: wasmtime.Instance) -> bool:
        table = export_get(store, instance, _TABLE_EXPORT)
        assert isinstance(table, wasmtime.Table)
        func = table.get(store, call)
        if not isinstance(func, wasmtime.Func):
            raise wasmtime.WasmtimeError("the Python runtime's call entry is missing")
        return RawFunc(store, func, _PTR, "i32")(handle, no_args, 0) == ok

    return ScriptExecutor(spec, runtime, runtime.heap(module), src, moved, enter)


def _bake(runtime: Interpreter, spec: WorkerSpec, src: Path) -> tuple[bytes, dict[str, Any]]:
    store = bake_store(runtime.engine)
    with tempfile.TemporaryDirectory(prefix="wws-py-") as scratch:
        out_path, err_path = Path(scratch) / "stdout", Path(scratch) / "stderr"
        wasi = wasi_config(spec, src)
        wasi.argv = ["python", "-c", api_source("driver.py", spec.flavour)]
        wasi.stdout_file = str(out_path)
        wasi.stderr_file = str(err_path)
        store.set_wasi(wasi)
        linker = runtime.new_linker()
        _define_clock(linker, out_path)
        heap, instance = runtime.instantiate(store, runtime.blank_heap(), linker)
        start = export_get(store, instance, "_start")
        assert isinstance(start, wasmtime.Func)
        try:
            start(store)
        except _Snapshot:
            pass
        except wasmtime.ExitTrap:
            raise ScriptLoadError(last_line(err_path.read_bytes())) from None
        except wasmtime.Trap as exc:
            code = exc.trap_code.name.lower() if exc.trap_code is not None else "unknown"
            raise ScriptLoadError(f"the worker trapped while loading: {code}") from None
        else:
            raise ScriptLoadError("the Python runtime finished without reaching the snapshot point")
        lines = out_path.read_bytes().split(b"\n")
        info = json.loads(lines[-3])
    memory = export_get(store, heap, "memory")
    assert isinstance(memory, wasmtime.Memory)
    image = bytes(memory.read(store, 0, memory.data_len(store)))
    at = int(info["function_type"]) + _TP_CALL_OFFSET
    snapshot = {
        "handle": info["handle"],
        "no_args": info["no_args"],
        "ok": info["ok"],
        "call": int.from_bytes(image[at : at + 4], "little"),
        "globals": moved_globals(store, instance, runtime.mutable_globals),
    }
    return heap_module(image, runtime.max_pages), snapshot


def _define_clock(linker: wasmtime.Linker, stdout: Path) -> None:
    """WASI's clock, plus the snapshot point: the first clock call after the
    loading script printed its marker."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

    def clock_time_get(caller: wasmtime.Caller, clock: int, precision: int, result: int) -> int:
        if stdout.stat().st_size and stdout.read_bytes().endswith(_SNAPSHOT_MARKER):
            raise _Snapshot()
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return 8  # EBADF: no memory to write to
        now = time.time_ns() if clock == 0 else time.monotonic_ns()
        memory.write(caller, now.to_bytes(8, "little"), result)
        return 0

    linker.define_func(
        "wasi_snapshot_preview1",
        "clock_time_get",
        wasmtime.FuncType([i32, i64, i32], [i32]),
        clock_time_get,
        access_caller=True,
    )
