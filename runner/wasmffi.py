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


def export_names(module: wasmtime.Module) -> set[str]:
    return {export.name for export in module.exports}
