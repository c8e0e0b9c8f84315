"""Thin helpers over wasmtime-py's C bindings for things its Python classes
do not expose, or expose only through slow paths."""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Give the guest ``data`` as stdin without a temporary file."""
    vec = ffi.wasm_byte_vec_t()
    buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    # wasm_byte_vec_new copies the bytes; set_stdin_bytes takes ownership of the vec.
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


def export_get(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any | None:
    """One export by name, or None. ``Instance.exports()`` builds a dict of all
    exports, which costs milliseconds on large modules."""
    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    found = ffi.wasmtime_instance_export_get(
        store._context(),
        ctypes.byref(instance._instance),
        encoded,
        len(encoded),
        ctypes.byref(item),
    )
    if not found:
        return None
    return wrap_extern(item)


def raw_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """The raw ``wasmtime_extern_t`` of an export, without wrapping it in a
    Python object (the hot path only needs the handle inside)."""
    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    if not ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), encoded, len(encoded), ctypes.byref(item)
    ):
        raise KeyError(name)
    return item


def memory_base(store: wasmtime.Store, raw_memory: Any) -> int:
    """Address of a memory's first byte (it can move when the memory grows)."""
    pointer = ffi.wasmtime_memory_data(store._context(), ctypes.byref(raw_memory.of.memory))
    return ctypes.addressof(pointer.contents)


def export_names(module: wasmtime.Module) -> set[str]:
    return {export.name for export in module.exports}


class RawFunc:
    """Calls a wasm function through ``wasmtime_func_call_unchecked`` with a
    preallocated argument buffer: about 4 us a call, where ``Func.__call__``
    costs 17-60 us because it rebuilds the function type every time.

    ``params`` and ``result`` use "i32"/"i64". The caller guarantees the types
    match the export (they are checked once, when the worker is loaded).
    """

    __slots__ = ("_buffer", "_context", "_func", "_kinds", "_result", "_trap")

    def __init__(self, store: wasmtime.Store, func: Any, params: tuple[str, ...], result: str | None):
        """``func`` is a ``wasmtime.Func`` or the raw extern from :func:`raw_export`."""
        self._context = store._context()
        self._func = ctypes.byref(func._func if isinstance(func, wasmtime.Func) else func.of.func)
        self._buffer = (ffi.wasmtime_val_raw_t * max(1, len(params), 1 if result else 0))()
        self._kinds = params
        self._result = result
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()

    def __call__(self, *args: int) -> int:
        buffer = self._buffer
        for index, (value, kind) in enumerate(zip(args, self._kinds, strict=True)):
            if kind == "i32":
                buffer[index].i32 = value
            else:
                buffer[index].i64 = value
        error = ffi.wasmtime_func_call_unchecked(
            self._context, self._func, buffer, len(buffer), ctypes.byref(self._trap)
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if self._trap:
            trap, self._trap = self._trap, ctypes.POINTER(ffi.wasm_trap_t)()
            raise wasmtime.Trap._from_ptr(trap)
        if self._result is None:
            return 0
        return int(buffer[0].i32 if self._result == "i32" else buffer[0].i64)


def signature(func_type: wasmtime.FuncType) -> tuple[tuple[str, ...], str | None]:
    params = tuple(str(p) for p in func_type.params)
    results = [str(r) for r in func_type.results]
    return params, (results[0] if results else None)
