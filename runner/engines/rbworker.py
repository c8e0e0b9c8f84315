"""Ruby workers: CRuby 3.3 (ruby.wasm's ``ruby+stdlib`` reactor) from a snapshot.

The build is a reactor made for a JavaScript host; it is driven here
without one. Its ``rb-js-abi-host`` imports get stubs that trap (only
``require "js"`` would call them), and its canonical-ABI resource imports a
small table of handles. Loading: ``_initialize``, ``ruby-init`` with the
arguments the JS glue uses, ``ruby-init-loadpath``, then
``rb-eval-string-protect`` of script_api/driver.rb, which loads the API and
the worker. Every call returns, so the memory after it is the snapshot, as
with QuickJS. Per request: ``rb-eval-string-protect("__wws_handle")`` on a
fresh copy (the string is placed in the snapshot at load).

Ruby's heap is sparse (27 MB of non-zero pages over a 59 MB span):
:func:`runner.engines.wasmbake.heap_module` then writes it as one segment over the
span, which wasmtime maps copy-on-write (the page-run segments it writes for
denser heaps would be copied at each instantiation: 28 M fuel, 15-40 ms).
"""

from __future__ import annotations

import tempfile
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
from runner.engines.wasmbake import BakeError, heap_module
from runner.engines.wasmffi import RawFunc, export_get, memory_base, raw_export
from runner.executors.script import ScriptExecutor

if TYPE_CHECKING:
    from runner.engines.modules import ModuleCache

_EVAL = "rb-eval-string-protect: func(str: string) -> tuple<handle<rb-abi-value>, s32>"
_INIT = "ruby-init: func(args: list<string>) -> ()"
_LOADPATH = "ruby-init-loadpath: func() -> ()"
_ARGS = ("ruby.wasm", "-EUTF-8", "-e_=0")  # what the JS glue passes
_CALL = b"__wws_handle"


class _Handles:
    """The canonical ABI's table of Ruby values handed to the host. The
    runner reads none of them; the guest only needs consistent numbers."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def new(self, rep: int) -> int:
        self.values.append(rep)
        return len(self.values)

    def get(self, handle: int) -> int:
        return self.values[handle - 1] if 0 < handle <= len(self.values) else 0

    def reset(self) -> None:
        self.values.clear()


_handles = _Handles()


def _define(linker: wasmtime.Linker, module: wasmtime.Module) -> None:
    for item in module.imports:
        if item.module == "rb-js-abi-host" and isinstance(item.type, wasmtime.FuncType):
            linker.define_func(item.module, str(item.name), item.type, _no_js(str(item.name)))
    i32 = wasmtime.ValType.i32()
    one_to_one = wasmtime.FuncType([i32], [i32])
    linker.define_func("canonical_abi", "resource_new_rb-abi-value", one_to_one, _handles.new)
    linker.define_func("canonical_abi", "resource_get_rb-abi-value", one_to_one, _handles.get)
    linker.define_func("canonical_abi", "resource_drop_js-abi-value", wasmtime.FuncType([i32], []), _drop)


def _drop(handle: int) -> None:
    """JS values never exist here."""


def _no_js(name: str) -> Any:
    def stub(*args: Any) -> Any:
        raise wasmtime.WasmtimeError(f"JavaScript interop ({name.split(':')[0]}) is not available")

    return stub


RUBY = Language("ruby", "rb", "wws-supervisor runtimes install ruby", lambda module: module, _define)


def load(spec: WorkerSpec, cache: ModuleCache, *, write: bool) -> ScriptExecutor:
    """A Ruby worker ready to serve: its snapshot from the cache, else made.

    Raises:
        ScriptLoadError: no runtime, or the worker fails to load (the first
            line of the Ruby error).
    """
    runtime, src, module, snapshot = cached_heap(RUBY, spec, cache, write=write, bake=_bake, kind="rb-heap")
    try:
        code, length = int(snapshot["code"]), int(snapshot["length"])
        moved = list(snapshot["globals"])
    except (KeyError, TypeError, ValueError):
        raise ScriptLoadError("the worker's cached snapshot is damaged; clear the cache") from None

    def enter(store: wasmtime.Store, heap: wasmtime.Instance, instance: wasmtime.Instance) -> bool:
        result = RawFunc(store, raw_export(store, instance, _EVAL), ("i32", "i32"), "i32")(code, length)
        memory = raw_export(store, heap, "memory")
        state = int.from_bytes(_read(store, memory, result + 4, 4), "little")
        return state == 0

    return ScriptExecutor(spec, runtime, runtime.heap(module), src, moved, enter, _handles.reset)


def _read(store: wasmtime.Store, memory: Any, address: int, size: int) -> bytes:
    import ctypes

    return ctypes.string_at(memory_base(store, memory) + address, size)


def _bake(runtime: Interpreter, spec: WorkerSpec, src: Path) -> tuple[bytes, dict[str, Any]]:
    store = bake_store(runtime.engine)
    _handles.reset()
    with tempfile.TemporaryDirectory(prefix="wws-rb-") as scratch:
        err_path = Path(scratch) / "stderr"
        wasi = wasi_config(spec, src)
        wasi.stdout_file = str(Path(scratch) / "stdout")
        wasi.stderr_file = str(err_path)
        store.set_wasi(wasi)
        heap, instance = runtime.instantiate(store, runtime.blank_heap())
        memory = export_get(store, heap, "memory")
        assert isinstance(memory, wasmtime.Memory)

        def call(name: str, *args: int) -> int:
            func = export_get(store, instance, name)
            if not isinstance(func, wasmtime.Func):
                raise ScriptLoadError(f"the Ruby runtime has no {name.split(':')[0]} export")
            return int(func(store, *args) or 0)

        def place(data: bytes) -> int:
            pointer = call("cabi_realloc", 0, 0, 1, max(1, len(data)))
            memory.write(store, data, pointer)
            return pointer

        try:
            call("_initialize")
            args = call("cabi_realloc", 0, 0, 4, 8 * len(_ARGS))
            for index, arg in enumerate(_ARGS):
                encoded = arg.encode()
                pointer = place(encoded + b"\0")
                memory.write(
                    store,
                    pointer.to_bytes(4, "little") + len(encoded).to_bytes(4, "little"),
                    args + 8 * index,
                )
            call(_INIT, args, len(_ARGS))
            call(_LOADPATH)
            driver = api_source("driver.rb", spec.flavour).encode()
            result = call(_EVAL, place(driver), len(driver))
            state = int.from_bytes(memory.read(store, result + 4, result + 8), "little")
        except wasmtime.Trap as exc:
            code = exc.trap_code.name.lower() if exc.trap_code is not None else "unknown"
            raise ScriptLoadError(f"the worker trapped while loading: {code}") from None
        if state != 0:
            raise ScriptLoadError(_first_error(err_path.read_bytes()))
        code_at = place(_CALL)
    image = bytes(memory.read(store, 0, memory.data_len(store)))
    snapshot = {
        "code": code_at,
        "length": len(_CALL),
        "globals": moved_globals(store, instance, runtime.mutable_globals),
    }
    try:
        return heap_module(image, runtime.max_pages), snapshot
    except BakeError as exc:
        raise ScriptLoadError(f"the worker's snapshot cannot be kept: {exc}") from None


def _first_error(stderr: bytes) -> str:
    # Ruby's full_message starts with "file:line:in 'where': message (Class)".
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[0].strip() if lines else last_line(stderr)
