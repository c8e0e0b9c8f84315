"""One compiled QuickJS per engine version, shared by every JavaScript worker.

The engine is rewritten once to import its linear memory
(:func:`runner.engines.wasmbake.split_memory`), compiled once into the cache, and
mapped by every runner. A worker's own entry is its heap: a code-free module
of a few hundred KB that compiles in milliseconds. Per request the heap is
instantiated (copy on write) and the shared engine linked against its memory.

Cache entries here carry a JSON note beside the compiled file: the SHA-256 of
the compiled bytes (checked by the compile step, so a corrupted entry is
rebuilt rather than mapped), the worker it belongs to and when it was built
(the startup progress report reads these), plus what the runner needs to call in.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime import _ffi as ffi

from ipc.messages import WorkerSpec
from runner.engines import cache_hygiene, quickjs
from runner.engines.quickjs import JsProgram, ScriptLoadError, Snapshot
from runner.engines.wasmbake import MEMORY_IMPORT, BakeError, MutableGlobal, split_memory
from runner.engines.wasmffi import RawInstance, instantiate, link, raw_export, signature

if TYPE_CHECKING:
    from runner.engines.modules import ModuleCache

log = logging.getLogger(__name__)

# Bump when split_memory's output changes: part of the engine's cache key.
SPLIT_VERSION = "qjs-split/v1"
_MEMORY_MODULE, _MEMORY_NAME = (part.encode() for part in MEMORY_IMPORT)


class SharedEngine:
    """The compiled QuickJS engine of one runner, and how to link it to a heap."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        module: wasmtime.Module,
        max_pages: int | None,
        mutable_globals: tuple[MutableGlobal, ...],
    ) -> None:
        self._engine = engine
        self._module = module
        self._max_pages = max_pages
        self._mutable_globals = mutable_globals
        # The engine's imports: WASI, plus the memory, which belongs to each
        # request's store and so is redefined (shadowed) before every link.
        self._linker = wasmtime.Linker(engine)
        self._linker.define_wasi()
        self._linker.allow_shadowing = True
        self._heap_linker = wasmtime.Linker(engine)  # heaps import nothing
        self._signatures = {
            e.name: signature(e.type) for e in module.exports if isinstance(e.type, wasmtime.FuncType)
        }
        self._blank: wasmtime.InstancePre | None = None

    @property
    def mutable_globals(self) -> tuple[MutableGlobal, ...]:
        return self._mutable_globals

    @property
    def max_pages(self) -> int | None:
        return self._max_pages

    def signature(self, name: str) -> tuple[tuple[str, ...], str | None]:
        try:
            return self._signatures[name]
        except KeyError:
            raise ScriptLoadError(f"the JavaScript engine lacks {name}") from None

    def heap(self, module: wasmtime.Module) -> wasmtime.InstancePre:
        return self._heap_linker.instantiate_pre(module)

    def blank_heap(self) -> wasmtime.InstancePre:
        """The engine's own initial memory (only the snapshot step needs it)."""
        if self._blank is None:
            split = split_memory(quickjs.engine_path().read_bytes())
            self._blank = self.heap(wasmtime.Module(self._engine, split.blank_heap))
        return self._blank

    def instantiate(
        self, store: wasmtime.Store, heap: wasmtime.InstancePre
    ) -> tuple[RawInstance, RawInstance]:
        """A fresh heap instance, then the engine linked to its memory (both
        raw, as :mod:`runner.engines.wasmffi` takes them: no wrapper objects per request)."""
        heap_instance = instantiate(heap, store)
        memory = raw_export(store, heap_instance, "memory")
        error = ffi.wasmtime_linker_define(
            self._linker.ptr(),
            store._context(),
            _MEMORY_MODULE,
            len(_MEMORY_MODULE),
            _MEMORY_NAME,
            len(_MEMORY_NAME),
            ctypes.byref(memory),
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        return heap_instance, link(self._linker, store, self._module)


# One shared engine per cache (a runner has one cache, so one engine).
_engines: weakref.WeakKeyDictionary[ModuleCache, SharedEngine] = weakref.WeakKeyDictionary()


def engine_key() -> str:
    return "qjs-engine-" + hashlib.sha256(SPLIT_VERSION.encode() + quickjs.engine_digest()).hexdigest()


def shared_engine(cache: ModuleCache, *, write: bool) -> SharedEngine:
    """The runner's compiled engine: from the cache, else compiled (once).

    Raises:
        ScriptLoadError: the engine is missing or cannot be split.
    """
    found = _engines.get(cache)
    if found is not None:
        return found
    key = engine_key()
    loaded = _cached_engine(cache, key, verify=write)
    if loaded is None:
        try:
            split = split_memory(quickjs.engine_path().read_bytes())
        except BakeError as exc:
            raise ScriptLoadError(f"the JavaScript engine cannot be prepared: {exc}") from None
        started = time.perf_counter()
        module = wasmtime.Module(cache.engine, split.engine)
        log.info("compiled the JavaScript engine in %.2f s", time.perf_counter() - started)
        max_pages, mutable = split.max_pages, split.mutable_globals
        if write:
            globals_note = [[g.export_name, g.value_type, g.initial] for g in mutable]
            _write_entry(
                cache, key, module, {"kind": "engine", "max_pages": max_pages, "globals": globals_note}
            )
    else:
        module, max_pages, mutable = loaded
    shared = SharedEngine(cache.engine, module, max_pages, mutable)
    _engines[cache] = shared
    return shared


def _cached_engine(
    cache: ModuleCache, key: str, *, verify: bool
) -> tuple[wasmtime.Module, int | None, tuple[MutableGlobal, ...]] | None:
    entry = _read_entry(cache, key, verify=verify)
    if entry is None:
        return None
    module, note = entry
    try:
        max_pages = note["max_pages"]
        mutable = tuple(MutableGlobal(str(n), str(t), v) for n, t, v in note["globals"])
    except (KeyError, TypeError, ValueError):
        return None
    if max_pages is not None and not isinstance(max_pages, int):
        return None
    return module, max_pages, mutable


def load_script(
    spec: WorkerSpec, source: bytes, cache: ModuleCache, *, write: bool
) -> tuple[wasmtime.InstancePre, JsProgram]:
    """A JavaScript worker's heap (from the cache, else snapshotted) and its
    program. With ``write`` (the compile step) entries are checked, stored,
    and recorded as this worker's, which prunes the ones it used before.

    Raises:
        ScriptLoadError: see :func:`runner.engines.quickjs.build_snapshot`.
        wasmtime.Trap: the script trapped while loading.
    """
    text = source.decode("utf-8")
    shared = shared_engine(cache, write=write)
    key = "js-" + quickjs.recipe_key(source, spec.worker_id, spec.variables)
    entry = _read_entry(cache, key, verify=write)
    snapshot = None
    if entry is not None:
        module, note = entry
        try:
            snapshot = Snapshot.from_json(note["snapshot"])
        except (KeyError, TypeError, ValueError):
            snapshot = None
    if snapshot is None:
        heap_bytes, snapshot = quickjs.build_snapshot(
            shared, text, spec.worker_id, spec.variables, cache.engine
        )
        module = wasmtime.Module(cache.engine, heap_bytes)
        if write:
            note_out = {
                "kind": "js-heap",
                "worker_id": spec.worker_id,
                "source": spec.path,
                "snapshot": snapshot.to_json(),
            }
            _write_entry(cache, key, module, note_out)
    if write:
        files = [cache.path_for(k, suffix) for k in (key, engine_key()) for suffix in (".cwasm", ".json")]
        cache_hygiene.record_use(
            cache.path_for(cache_hygiene.record_key(spec.path), ".json"), spec.path, files
        )
    heap = shared.heap(module)
    return heap, JsProgram(shared, heap, snapshot)


def _read_entry(
    cache: ModuleCache, key: str, *, verify: bool
) -> tuple[wasmtime.Module, dict[str, Any]] | None:
    # Any defect (missing, unreadable, mismatched, stale) means "rebuild".
    compiled = cache.path_for(key)
    try:
        note = json.loads(cache.path_for(key, ".json").read_text())
        if not isinstance(note, dict):
            return None
        if verify and _digest(compiled) != note.get("sha256"):
            log.warning("cache entry %s is damaged; rebuilding it", compiled.name)
            return None
    except (OSError, ValueError):
        return None
    module = cache.cached(key)
    return None if module is None else (module, note)


def _write_entry(cache: ModuleCache, key: str, module: wasmtime.Module, note: dict[str, Any]) -> None:
    data = bytes(module.serialize())
    note["sha256"] = hashlib.sha256(data).hexdigest()
    note["created"] = time.time()
    cache.store(cache.path_for(key), data)
    # The note goes last: an entry without one is rebuilt, never half-used.
    cache.store(cache.path_for(key, ".json"), json.dumps(note).encode())


def _digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
