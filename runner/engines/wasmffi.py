"""Thin helpers over wasmtime-py's C bindings for things its Python classes
do not expose, or expose only through slow paths."""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

# A ``wasmtime_instance_t`` (ctypes): what the raw helpers below return and
# take, where a ``wasmtime.Instance`` would be one more object per request.
RawInstance = Any


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Give the guest ``data`` as stdin without a temporary file."""
    vec = ffi.wasm_byte_vec_t()
    buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    # wasm_byte_vec_new copies the bytes; set_stdin_bytes takes ownership of the vec.
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


class EnvArrays:
    """A WASI environment encoded once, for ``wasi_config_set_env`` (which
    copies the strings): a worker's ``[vars]`` do not change between requests,
    and ``WasiConfig.env`` would encode them again every time."""

    __slots__ = ("_count", "_names", "_values")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._count = len(pairs)
        self._names = _char_array([name for name, _ in pairs])
        self._values = _char_array([value for _, value in pairs])

    def apply(self, wasi: wasmtime.WasiConfig) -> None:
        if not self._count:
            return  # a new WasiConfig has an empty environment
        if not ffi.wasi_config_set_env(wasi.ptr(), self._count, self._names, self._values):
            raise wasmtime.WasmtimeError("failed to configure the environment")


def _char_array(strings: list[str]) -> Any:
    array = (ctypes.c_char_p * max(1, len(strings)))(*(s.encode("utf-8") for s in strings))
    return ctypes.cast(array, ctypes.POINTER(ctypes.POINTER(ctypes.c_char)))


def instantiate(pre: wasmtime.InstancePre, store: wasmtime.Store) -> RawInstance:
    """A new instance of ``pre`` in ``store``, as the raw ``wasmtime_instance_t``
    (what :func:`raw_export` takes): ``InstancePre.instantiate`` also wraps it
    and goes through a generator-based context manager.

    Raises:
        wasmtime.Trap / wasmtime.WasmtimeError: as ``InstancePre.instantiate``.
    """
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(
        pre.ptr(), store._context(), ctypes.byref(instance), ctypes.byref(trap)
    )
    if error:
        raise host_exception() or wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise host_exception() or wasmtime.Trap._from_ptr(trap)
    return instance


def link(linker: wasmtime.Linker, store: wasmtime.Store, module: wasmtime.Module) -> RawInstance:
    """``linker.instantiate(store, module)``, returning the raw instance.

    Raises:
        wasmtime.Trap / wasmtime.WasmtimeError: as ``Linker.instantiate``.
    """
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_linker_instantiate(
        linker.ptr(), store._context(), module.ptr(), ctypes.byref(instance), ctypes.byref(trap)
    )
    if error:
        raise host_exception() or wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise host_exception() or wasmtime.Trap._from_ptr(trap)
    return instance


def host_exception() -> BaseException | None:
    """The exception a host function raised during the last call, if any
    (then the call's trap or error stands for it).

    wasmtime-py parks an exception raised by a host function in a global
    and turns it into a trap; its own wrappers raise the parked exception
    instead (and clear it). Raw calls do the same, so it cannot surface in a
    later, unrelated request.
    """
    from wasmtime import _func

    parked, _func.LAST_EXCEPTION = _func.LAST_EXCEPTION, None
    return parked


def call_no_args(store: wasmtime.Store, func: Any) -> None:
    """Call a ``() -> ()`` export (a raw extern from :func:`raw_export`):
    one foreign call, no argument buffer or wrapper object.

    Raises:
        wasmtime.Trap / wasmtime.WasmtimeError (``ExitTrap`` for proc_exit).
    """
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call_unchecked(
        store._context(), ctypes.byref(func.of.func), _NO_ARGS, 1, ctypes.byref(trap)
    )
    if error:
        raise host_exception() or wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise host_exception() or wasmtime.Trap._from_ptr(trap)


# Never read or written by a () -> () function, so one buffer serves every call.
_NO_ARGS = (ffi.wasmtime_val_raw_t * 1)()


def memory_size(store: wasmtime.Store, instance: Any) -> int | None:
    """The byte size of ``instance``'s exported ``memory`` (a ``wasmtime.Instance``
    or a raw ``wasmtime_instance_t``), or None when there is none."""
    item: Any = ffi.wasmtime_extern_t()  # its fields read as Python ints
    context = store._context()
    if not ffi.wasmtime_instance_export_get(
        context, ctypes.byref(_raw_instance(instance)), b"memory", 6, ctypes.byref(item)
    ):
        return None
    if item.kind != ffi.WASMTIME_EXTERN_MEMORY.value:
        return None
    return int(ffi.wasmtime_memory_data_size(context, ctypes.byref(item.of.memory)))


def _raw_instance(instance: Any) -> Any:
    return instance._instance if isinstance(instance, wasmtime.Instance) else instance


def export_get(store: wasmtime.Store, instance: Any, name: str) -> Any | None:
    """One export by name, or None. ``Instance.exports()`` builds a dict of all
    exports, which costs milliseconds on large modules. ``instance`` is a
    ``wasmtime.Instance`` or a raw one (:func:`instantiate`)."""
    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    found = ffi.wasmtime_instance_export_get(
        store._context(),
        ctypes.byref(_raw_instance(instance)),
        encoded,
        len(encoded),
        ctypes.byref(item),
    )
    if not found:
        return None
    return wrap_extern(item)


def raw_export(store: wasmtime.Store, instance: Any, name: str) -> Any:
    """The raw ``wasmtime_extern_t`` of an export, without wrapping it in a
    Python object (the hot path only needs the handle inside). ``instance``
    is a ``wasmtime.Instance`` or a raw one from :func:`instantiate`."""
    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    if not ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(_raw_instance(instance)), encoded, len(encoded), ctypes.byref(item)
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
            raise host_exception() or wasmtime.WasmtimeError._from_ptr(error)
        if self._trap:
            trap, self._trap = self._trap, ctypes.POINTER(ffi.wasm_trap_t)()
            raise host_exception() or wasmtime.Trap._from_ptr(trap)
        if self._result is None:
            return 0
        return int(buffer[0].i32 if self._result == "i32" else buffer[0].i64)


def signature(func_type: wasmtime.FuncType) -> tuple[tuple[str, ...], str | None]:
    params = tuple(str(p) for p in func_type.params)
    results = [str(r) for r in func_type.results]
    return params, (results[0] if results else None)
