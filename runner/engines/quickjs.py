"""JavaScript workers: QuickJS-NG (the WASI reactor build) inside the sandbox.

The engine is compiled once per QuickJS version and shared by every worker
(:mod:`runner.engines.jsengine`); it imports its linear memory.

Load time, once per worker (in the compile step, cached on disk):
  instantiate the engine against a blank heap, initialise QuickJS, evaluate our
  JS API (``shim.js``) and the worker's script, then turn the resulting linear
  memory into a heap module of its own, data and no code
  (:func:`runner.engines.wasmbake.heap_module`). The pointers the runner needs later
  (the context, the runtime, the driver functions, a scratch buffer) are saved
  beside it.

Per request:
  a fresh instance of the worker's heap module (copy on write), the shared
  engine instantiated against that memory, then ``__wws_start(requestJson)``,
  the promise jobs, and
  ``__wws_poll()`` until it hands back the response JSON. Timers are driven
  from here: ``__wws_poll`` returns the milliseconds to the next timer and the
  runner sleeps that long, within the request's deadline.

Pinned to qjs-wasi-reactor.wasm 0.15.1.1: later builds no longer export the
QuickJS C API that calling into a snapshot needs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import importlib.metadata
import json
import re
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import wasmtime
from wasmtime import _ffi as ffi

from runner.engines.wasmbake import MutableGlobal, heap_module
from runner.engines.wasmffi import RawFunc, RawInstance, export_get, host_exception, raw_export

ENGINE_DISTRIBUTION = "qjs-wasi-reactor.wasm"
ENGINE_VERSION = "0.15.1.1"
# Bump when the bake recipe changes: it is part of every snapshot's cache key.
BAKE_VERSION = "js-heap/v5"
# The engine's shadow stack is about 68 KiB; QuickJS must throw RangeError
# before running off it (which would trap with an out-of-bounds access).
MAX_JS_STACK = 48 << 10

_UNDEFINED = 3 << 32
_TAG_EXCEPTION = 6
_TAG_STRING = -7
_TAG_INT = 0
_EVAL_GLOBAL, _EVAL_MODULE = 0, 1
_MODULE_SYNTAX = re.compile(r"\bexport\s+default\b|\bexport\s*\{[^}]*\bas\s+default\b")
# The calls a request makes, with the signatures its raw calls assume (checked
# when a worker is loaded). Nothing is freed: the instance is thrown away after
# the request, which is cheaper than a call per value.
_REQUEST_SIGNATURES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "JS_NewStringLen": (("i32", "i32", "i32"), "i64"),
    "JS_Call": (("i32", "i64", "i64", "i32", "i32"), "i64"),
    "JS_ExecutePendingJob": (("i32", "i32"), "i32"),
    "JS_ToCStringLen2": (("i32", "i32", "i64", "i32"), "i32"),
}
_REQUEST_BUFFER = 64 << 10
# Loading a script (engine init + top-level code) may use this much fuel; a
# top-level infinite loop fails the load in about a second instead of hanging it.
_BAKE_FUEL = 2_000_000_000


class ScriptLoadError(Exception):
    """The script cannot be loaded (syntax error, exception at top level, no handler)."""


class ScriptTimeout(Exception):
    """The handler is still waiting on a timer when the deadline passes."""


@cache
def engine_path() -> Path:
    try:
        files = importlib.metadata.files(ENGINE_DISTRIBUTION) or []
        installed = importlib.metadata.version(ENGINE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ScriptLoadError(
            f"the JavaScript engine is not installed (pip install '{ENGINE_DISTRIBUTION}=={ENGINE_VERSION}')"
        ) from None
    if installed != ENGINE_VERSION:
        raise ScriptLoadError(
            f"{ENGINE_DISTRIBUTION} {installed} is installed; JavaScript workers need {ENGINE_VERSION}"
        )
    for file in files:
        if file.name.endswith(".wasm"):
            return Path(str(file.locate()))
    raise ScriptLoadError(f"{ENGINE_DISTRIBUTION} has no .wasm file")


@cache
def engine_digest() -> bytes:
    return hashlib.sha256(engine_path().read_bytes()).digest()


@cache
def shim_source() -> str:
    return (Path(__file__).parent / "shim.js").read_text()


def is_module(source: str) -> bool:
    return _MODULE_SYNTAX.search(source) is not None


def recipe_key(source: bytes, filename: str, variables: dict[str, str]) -> str:
    """Everything that determines a snapshot, hashed: the cache key."""
    digest = hashlib.sha256()
    for part in (
        BAKE_VERSION.encode(),
        engine_digest(),
        shim_source().encode(),
        filename.encode(),
        json.dumps(variables, sort_keys=True).encode(),
        str(MAX_JS_STACK).encode(),
        source,
    ):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Addresses inside a worker's heap; valid in every instance of it."""

    ctx: int
    runtime: int
    start_fn: int
    poll_fn: int
    deliver_fn: int
    scratch: int
    # Preallocated for the request JSON, so most requests need no malloc call.
    request_buffer: int
    request_capacity: int
    # Engine globals that were not back at their initial values when the
    # snapshot was taken: (export name, "i32"/"i64", value), set per request.
    # Empty for QuickJS (its only mutable global is the stack pointer).
    globals: tuple[tuple[str, str, int], ...] = ()

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, object]) -> Snapshot:
        """Raises ValueError (or KeyError/TypeError) on a malformed document."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"globals"}
        raw_globals = document.get("globals", [])
        if not isinstance(raw_globals, list):
            raise ValueError("globals must be a list")
        carried = tuple((str(n), str(k), int(v)) for n, k, v in raw_globals)
        values = {name: _integer(document[name]) for name in fields}
        return cls(**values, globals=carried)


def _integer(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


class Interpreter(Protocol):
    """The shared, compiled engine (:class:`runner.engines.jsengine.SharedEngine`)."""

    @property
    def mutable_globals(self) -> tuple[MutableGlobal, ...]: ...

    @property
    def max_pages(self) -> int | None: ...

    def signature(self, name: str) -> tuple[tuple[str, ...], str | None]: ...

    def blank_heap(self) -> wasmtime.InstancePre: ...

    def instantiate(
        self, store: wasmtime.Store, heap: wasmtime.InstancePre
    ) -> tuple[RawInstance, RawInstance]: ...


class _Session:
    """Calls into one live QuickJS instance (used while baking)."""

    def __init__(
        self,
        interpreter: Interpreter,
        store: wasmtime.Store,
        instance: RawInstance,
        heap: RawInstance,
    ) -> None:
        self.interpreter = interpreter
        self.store = store
        self.instance = instance
        memory = export_get(store, heap, "memory")
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self.ctx = 0
        self._funcs: dict[str, RawFunc] = {}

    def call(self, name: str, *args: int) -> int:
        # Raw calls: a snapshot makes about fifty, and Func.__call__ costs far
        # more than the call itself (see runner.engines.wasmffi.RawFunc).
        func = self._funcs.get(name)
        if func is None:
            try:
                raw = raw_export(self.store, self.instance, name)
            except KeyError:
                raise ScriptLoadError(f"the JavaScript engine has no {name} export") from None
            func = self._funcs[name] = RawFunc(self.store, raw, *self.interpreter.signature(name))
        return func(*args)

    def cstring(self, text: str) -> int:
        data = text.encode() + b"\0"
        pointer = self.call("malloc", len(data))
        self.memory.write(self.store, data, pointer)
        return pointer

    def eval(self, source: str, filename: str, flags: int) -> int:
        encoded = source.encode()
        code, name = self.cstring(source), self.cstring(filename)
        value = self.call("JS_Eval", self.ctx, code, len(encoded), name, flags)
        self.call("free", code)
        self.call("free", name)
        if value >> 32 == _TAG_EXCEPTION:
            raise ScriptLoadError(self.describe_exception())
        return value

    def string_of(self, value: int) -> str:
        length_at = self.call("malloc", 4)
        pointer = self.call("JS_ToCStringLen2", self.ctx, length_at, value, 0)
        if not pointer:
            return "(no description)"
        length = int.from_bytes(self.memory.read(self.store, length_at, length_at + 4), "little")
        text = bytes(self.memory.read(self.store, pointer, pointer + length)).decode("utf-8", "replace")
        self.call("JS_FreeCString", self.ctx, pointer)
        self.call("free", length_at)
        return text

    def describe_exception(self) -> str:
        error = self.call("JS_GetException", self.ctx)
        message = self.string_of(error)
        name = self.cstring("stack")
        stack = self.call("JS_GetPropertyStr", self.ctx, error, name)
        self.call("free", name)
        where = self.string_of(stack).strip() if stack != _UNDEFINED else ""
        return f"{message} {where}".strip()

    def run_jobs(self) -> None:
        out = self.call("malloc", 4)
        while self.call("JS_ExecutePendingJob", self.call("JS_GetRuntime", self.ctx), out) > 0:
            pass
        self.call("free", out)

    def global_function(self, name: str) -> int:
        global_object = self.call("JS_GetGlobalObject", self.ctx)
        key = self.cstring(name)
        value = self.call("JS_GetPropertyStr", self.ctx, global_object, key)
        self.call("free", key)
        self.call("JS_FreeValue", self.ctx, global_object)
        return value


def build_snapshot(
    interpreter: Interpreter, source: str, filename: str, variables: dict[str, str], engine: wasmtime.Engine
) -> tuple[bytes, Snapshot]:
    """Initialise QuickJS on a blank heap, evaluate the API and the worker;
    return the worker's heap module and the addresses to call into.

    Raises:
        ScriptLoadError: syntax errors and top-level exceptions (with file and
            line), or a script that registers no fetch handler.
    """
    store = wasmtime.Store(engine)
    store.set_fuel(_BAKE_FUEL)
    store.set_epoch_deadline(1 << 40)
    store.set_limits(memory_size=256 << 20)
    store.set_wasi(wasmtime.WasiConfig())
    heap, instance = interpreter.instantiate(store, interpreter.blank_heap())
    js = _Session(interpreter, store, instance, heap)
    js.call("_initialize")
    argv = js.call("malloc", 8)
    js.memory.write(store, js.cstring("qjs").to_bytes(4, "little") + b"\0\0\0\0", argv)
    if js.call("qjs_init_argv", 1, argv) != 0:
        raise ScriptLoadError("the JavaScript engine failed to initialise")
    js.ctx = js.call("qjs_get_context")
    runtime = js.call("JS_GetRuntime", js.ctx)
    js.call("JS_SetMaxStackSize", runtime, MAX_JS_STACK)
    js.eval(shim_source(), "wws-api.js", _EVAL_GLOBAL)
    setup = f"__wws_setup({json.dumps(json.dumps(variables))}, {json.dumps(filename)});"
    js.eval(setup, "wws-setup.js", _EVAL_GLOBAL)
    if is_module(source):
        js.eval(source, filename, _EVAL_MODULE)
        js.eval(f"__wws_import({json.dumps(filename)});", "wws-import.js", _EVAL_GLOBAL)
    else:
        js.eval(source, filename, _EVAL_GLOBAL)
    js.run_jobs()
    js.eval("__wws_check_loaded();", "wws-check.js", _EVAL_GLOBAL)
    js.call("JS_RunGC", runtime)
    snapshot = Snapshot(
        ctx=js.ctx,
        runtime=runtime,
        start_fn=js.global_function("__wws_start"),
        poll_fn=js.global_function("__wws_poll"),
        deliver_fn=js.global_function("__wws_deliver"),
        scratch=js.call("malloc", 64),
        request_buffer=js.call("malloc", _REQUEST_BUFFER),
        request_capacity=_REQUEST_BUFFER,
        globals=_moved_globals(store, instance, interpreter.mutable_globals),
    )
    memory = bytes(js.memory.read(store, 0, js.memory.data_len(store)))
    return heap_module(memory, interpreter.max_pages), snapshot


def _moved_globals(
    store: wasmtime.Store, instance: RawInstance, mutable: tuple[MutableGlobal, ...]
) -> tuple[tuple[str, str, int], ...]:
    # The heap module carries memory only; a global left away from its
    # initial value (none in QuickJS today) must be set on every instance.
    moved = []
    for spec in mutable:
        item = export_get(store, instance, spec.export_name)
        if not isinstance(item, wasmtime.Global):
            raise ScriptLoadError(f"the JavaScript engine does not export {spec.export_name}")
        value = int(item.value(store))
        if value != spec.initial:
            moved.append((spec.export_name, spec.value_type, value))
    return tuple(moved)


class JsProgram:
    """A worker's heap snapshot plus the shared engine, ready to run requests."""

    def __init__(self, interpreter: Interpreter, heap: wasmtime.InstancePre, snapshot: Snapshot) -> None:
        self._interpreter = interpreter
        self._heap = heap
        self._snapshot = snapshot
        for name, expected in _REQUEST_SIGNATURES.items():
            if interpreter.signature(name) != expected:
                raise ScriptLoadError(f"the JavaScript engine's {name} has an unexpected signature")
        # Arguments and results of every call a request makes; a runner runs
        # one request at a time, so one buffer serves them all.
        self._buffer = (ffi.wasmtime_val_raw_t * 5)()

    def run(
        self, store: wasmtime.Store, request: bytes, deadline: float, fetch: Callable[[bytes], bytes]
    ) -> bytes:
        """Run one request; returns the shim's response JSON. ``fetch`` makes
        a batch of the script's outbound requests (JSON in, results JSON out).

        Raises:
            wasmtime.Trap / wasmtime.WasmtimeError: fuel, epoch, stack, memory.
            ScriptTimeout: still waiting on timers at ``deadline``.
        """
        snap = self._snapshot
        heap, instance = self._interpreter.instantiate(store, self._heap)
        for name, kind, value in snap.globals:
            item = export_get(store, instance, name)
            assert isinstance(item, wasmtime.Global)
            item.set_value(store, wasmtime.Val.i32(value) if kind == "i32" else wasmtime.Val.i64(value))
        # Raw calls with the signatures checked at load: wrapping each export
        # in a Python Func object costs more than the call itself.
        context = store._context()
        buffer = self._buffer
        new_string = ctypes.byref(raw_export(store, instance, "JS_NewStringLen").of.func)
        js_call = ctypes.byref(raw_export(store, instance, "JS_Call").of.func)
        memory = ctypes.byref(raw_export(store, heap, "memory").of.memory)

        def call(func: Any) -> None:
            trap = ctypes.POINTER(ffi.wasm_trap_t)()
            error = ffi.wasmtime_func_call_unchecked(context, func, buffer, 5, ctypes.byref(trap))
            if error:
                raise host_exception() or wasmtime.WasmtimeError._from_ptr(error)
            if trap:
                raise host_exception() or wasmtime.Trap._from_ptr(trap)

        def base() -> int:
            # Re-read after every call that may grow (and so move) memory.
            return ctypes.addressof(ffi.wasmtime_memory_data(context, memory).contents)

        def js_string(data: bytes) -> int:
            if len(data) <= snap.request_capacity:
                pointer = snap.request_buffer
            else:
                malloc = _func(store, instance, "malloc")
                pointer = int(malloc(store, len(data)) or 0)
                if not pointer:
                    raise wasmtime.WasmtimeError("memory limit reached while passing data to the script")
            ctypes.memmove(base() + pointer, data, len(data))
            buffer[0].i32, buffer[1].i32, buffer[2].i32 = snap.ctx, pointer, len(data)
            call(new_string)
            return int(buffer[0].i64)

        def call_js(function: int, argc: int, argv: int) -> int:
            buffer[0].i32, buffer[1].i64, buffer[2].i64 = snap.ctx, function, _UNDEFINED
            buffer[3].i32, buffer[4].i32 = argc, argv
            call(js_call)
            return int(buffer[0].i64)

        ctypes.c_int64.from_address(base() + snap.scratch).value = js_string(request)
        result = call_js(snap.start_fn, 1, snap.scratch)
        job_out = snap.scratch + 8
        while True:
            tag = result >> 32
            if tag == _TAG_STRING:
                buffer[0].i32, buffer[1].i32, buffer[2].i64, buffer[3].i32 = snap.ctx, job_out, result, 0
                call(ctypes.byref(raw_export(store, instance, "JS_ToCStringLen2").of.func))
                text = buffer[0].i32
                address = base()
                length = ctypes.c_uint32.from_address(address + job_out).value
                output = ctypes.string_at(address + text, length)
                if not output.startswith(b"F"):
                    return output
                delivery = js_string(fetch(output[1:]))
                ctypes.c_int64.from_address(base() + snap.scratch).value = delivery
                call_js(snap.deliver_fn, 1, snap.scratch)
                result = _TAG_INT << 32  # run the jobs the delivery queued, then poll
                continue
            if tag == _TAG_EXCEPTION:
                raise ScriptLoadError("the JavaScript driver threw; this is a bug in wws-supervisor")
            if tag != _TAG_INT:
                raise ScriptLoadError("the driver returned an unexpected value")
            delay_ms = ctypes.c_int32(result & 0xFFFFFFFF).value
            if delay_ms > 0:
                if delay_ms / 1000 > deadline - time.monotonic():
                    raise ScriptTimeout(f"a timer of {delay_ms} ms runs past the deadline")
                time.sleep(delay_ms / 1000)
            pending_job = ctypes.byref(raw_export(store, instance, "JS_ExecutePendingJob").of.func)
            while True:
                buffer[0].i32, buffer[1].i32 = snap.runtime, job_out
                call(pending_job)
                if buffer[0].i32 <= 0:
                    break
            result = call_js(snap.poll_fn, 0, 0)


def _func(store: wasmtime.Store, instance: RawInstance, name: str) -> wasmtime.Func:
    func = export_get(store, instance, name)
    if not isinstance(func, wasmtime.Func):
        raise ScriptLoadError(f"the JavaScript engine has no function {name}")
    return func
