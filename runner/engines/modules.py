"""Compiling workers, and the on-disk cache of compiled modules.

Compiling is the slowest thing a runner does (seconds for a large module), so
the supervisor's prepare step compiles every worker once and every runner after
it deserializes (well under a millisecond, the file is mmapped). Cache entries
are keyed by the module's content hash, the wasmtime version and the engine
settings, because a compiled artifact only loads into an engine built the same way.

The cache directory is trusted: wasmtime does not validate a serialized module.
It is created private (0700) and only the runner writes to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import wasmtime

from ipc.messages import WorkerSpec
from runner.engines import cache_hygiene, jsengine, quickjs
from runner.engines.http_import import RequestContext
from runner.engines.wasmffi import export_names
from runner.executors.base import Executor
from runner.executors.js import JsExecutor
from runner.executors.kit import KitExecutor

# Bump when the engine settings change: it is part of every cache key, with
# the memory layout (runner.engines.engine.profile).
ENGINE_PROFILE = "fuel+epoch/v3"


class LoadError(Exception):
    """A worker cannot be loaded; the message is one line, fit for a user."""


def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedWorker:
    spec: WorkerSpec
    executor: Executor  # runs its requests the way its contract says (runner/executors/contracts.py)


def read_wasm(spec: WorkerSpec) -> bytes:
    try:
        source = Path(spec.path).read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read the file: {exc.strerror}") from None
    if spec.kind == "wat" or (spec.path.endswith(".wat") and spec.kind in ("wagi", "handle")):
        try:
            return bytes(wasmtime.wat2wasm(source.decode("utf-8", errors="replace")))
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"invalid WebAssembly text: {first_line(str(exc))}") from None
    return source


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


class ModuleCache:
    def __init__(self, engine: wasmtime.Engine, cache_dir: str, layout: str) -> None:
        self._engine = engine
        self._dir = Path(cache_dir)
        self._version = wasmtime_version()
        # runner.engines.engine.profile(): compiled code depends on the memory layout.
        self._layout = layout

    @property
    def engine(self) -> wasmtime.Engine:
        return self._engine

    def path_for(self, key: str, suffix: str = ".cwasm") -> Path:
        profile = hashlib.sha256(f"{self._version}|{ENGINE_PROFILE}|{self._layout}".encode()).hexdigest()[:12]
        return self._dir / f"{key}-{profile}{suffix}"

    def load(self, wasm: bytes, *, write: bool) -> wasmtime.Module:
        """The compiled module for ``wasm``: from the cache if present, else
        compiled (and stored when ``write``)."""
        return self.load_keyed(hashlib.sha256(wasm).hexdigest(), lambda: wasm, write=write)

    def load_keyed(self, key: str, produce: Callable[[], bytes], *, write: bool) -> wasmtime.Module:
        """Like :meth:`load` for a module identified by ``key``; ``produce``
        builds its bytes only when the cache has no usable entry."""
        module = self.cached(key)
        if module is not None:
            return module
        try:
            module = wasmtime.Module(self._engine, produce())
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"invalid WebAssembly module: {first_line(str(exc))}") from None
        if write:
            self.store(self.path_for(key), bytes(module.serialize()))
        return module

    def cached(self, key: str) -> wasmtime.Module | None:
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            return wasmtime.Module.deserialize_file(self._engine, str(path))
        except wasmtime.WasmtimeError:
            return None  # stale or truncated entry: the caller rebuilds and replaces it

    def store(self, target: Path, data: bytes) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Write then rename, so a sibling runner never maps a half-written file.
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
        try:
            try:
                _write_with_holes(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# Zero blocks of this size (file-system blocks) are left as holes in cache files.
_HOLE = 4096
_ZEROS = bytes(_HOLE)


def _write_with_holes(fd: int, data: bytes) -> None:
    """Write ``data`` to the empty file ``fd``, skipping whole zero blocks:
    a compiled heap holds megabytes of zeros (a sparse heap is laid out over
    its whole span, see runner.engines.wasmbake.heap_module) that then take no disk.
    Reading the file, or mapping it, gives the zeros back."""
    view = memoryview(data)
    run_start: int | None = None  # the non-zero blocks not yet written
    for start in range(0, len(view) + _HOLE, _HOLE):
        block = view[start : start + _HOLE]
        if block and block != _ZEROS[: len(block)]:
            if run_start is None:
                run_start = start
        elif run_start is not None:
            run = view[run_start:start]
            written = 0
            while written < len(run):
                written += os.pwrite(fd, run[written:], run_start + written)
            run_start = None
    os.ftruncate(fd, len(view))


def load_worker(
    spec: WorkerSpec, cache: ModuleCache, linker: wasmtime.Linker, *, write: bool, http: RequestContext
) -> LoadedWorker:
    """Compile or deserialize a worker and link it against WASI.

    Raises:
        LoadError: unreadable file, invalid module, an import we do not provide,
            or a module that is both a command and a reactor; for scripts, a
            syntax error or an exception at load, with file and line.
    """
    if spec.kind == "js":
        return _load_script(spec, cache, write=write)
    if spec.kind in ("py", "rb"):
        return _load_interpreted(spec, cache, write=write)
    wasm = read_wasm(spec)
    module = cache.load(wasm, write=write)
    if write:  # the compile step records what each worker uses (cache hygiene)
        record = cache.path_for(cache_hygiene.record_key(spec.path), ".json")
        cache_hygiene.record_use(record, spec.path, [cache.path_for(hashlib.sha256(wasm).hexdigest())])
    from runner.executors.contracts import executor_for  # here: the contract modules import this one

    executor = executor_for(spec, module, cache.engine)
    if executor is not None:
        return LoadedWorker(spec, executor)
    exports = export_names(module)
    if "_start" in exports and "_initialize" in exports:
        raise LoadError("the module exports both _start and _initialize; it must be a command or a reactor")
    entry = "_start" if "_start" in exports else ("_initialize" if "_initialize" in exports else None)
    if entry is not None:
        entry_type = next(e.type for e in module.exports if e.name == entry)
        if (
            not isinstance(entry_type, wasmtime.FuncType)
            or list(entry_type.params)
            or list(entry_type.results)
        ):
            raise LoadError(f"{entry} must be a function with no parameters and no results")
    try:
        instance_pre = linker.instantiate_pre(module)
    except wasmtime.WasmtimeError as exc:
        raise LoadError(f"cannot link the module: {first_line(str(exc))}") from None
    return LoadedWorker(spec, KitExecutor(spec, instance_pre, entry, http))


def _load_script(spec: WorkerSpec, cache: ModuleCache, *, write: bool) -> LoadedWorker:
    try:
        source = Path(spec.path).read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read the file: {exc.strerror}") from None
    try:
        source.decode("utf-8")
    except UnicodeDecodeError:
        raise LoadError("the script is not UTF-8 text") from None
    try:
        _, program = jsengine.load_script(spec, source, cache, write=write)
        return LoadedWorker(spec, JsExecutor(spec, program))
    except quickjs.ScriptLoadError as exc:
        raise LoadError(str(exc)) from None
    except wasmtime.Trap as exc:
        if exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            raise LoadError(
                "the script trapped while loading: it ran out of fuel (an endless loop at top level?)"
            ) from None
        code = exc.trap_code.name.lower() if exc.trap_code is not None else "unknown"
        raise LoadError(f"the script trapped while loading: {code}") from None


def _load_interpreted(spec: WorkerSpec, cache: ModuleCache, *, write: bool) -> LoadedWorker:
    """Python and Ruby workers: a snapshot of their interpreter (runner/engines/scriptrt.py)."""
    from runner.engines import pyworker, rbworker
    from runner.engines.scriptrt import ScriptLoadError

    try:
        loaded = (pyworker if spec.kind == "py" else rbworker).load(spec, cache, write=write)
    except ScriptLoadError as exc:
        raise LoadError(str(exc)) from None
    return LoadedWorker(spec, loaded)
