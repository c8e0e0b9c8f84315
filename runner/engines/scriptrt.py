"""What Python and Ruby workers share: one compiled interpreter per machine,
a snapshot of it per worker, and the /src folder wws gives the worker.

The mechanism is the one JavaScript uses (:mod:`runner.engines.jsengine`): the
interpreter is rewritten once to import its linear memory
(:func:`runner.engines.wasmbake.split_memory`), compiled once into the module cache
and mapped by every runner; a worker's own entry is a code-free heap module
holding the interpreter's memory after it loaded the worker. Per request the
heap is instantiated copy-on-write and the shared interpreter linked to it,
so every request starts from the same pristine state.

The runtimes are the ones ``wws-supervisor runtimes install`` puts in the
runtimes folder; the spec names the .wasm file, and its ``runtime.json``
sidecar gives the verified SHA-256 (part of every cache key).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime import _ffi as ffi

from ipc.messages import WorkerSpec
from runner.engines import cache_hygiene
from runner.engines.jsengine import _read_entry, _write_entry
from runner.engines.wasmbake import MEMORY_IMPORT, BakeError, MutableGlobal, split_memory
from runner.engines.wasmffi import export_get, raw_export

if TYPE_CHECKING:
    from runner.engines.modules import ModuleCache

log = logging.getLogger(__name__)

API_DIR = Path(__file__).parent / "script_api"
# Bump when a snapshot recipe changes: part of every script cache key.
SCRIPT_BAKE_VERSION = "script-heap/v1"
# Bump when runner.engines.wasmbake.heap_module lays heaps out differently (v2: sparse
# heaps as one segment over their span): part of every worker heap's key.
HEAP_LAYOUT_VERSION = "heap-layout/v2"
_MEMORY_MODULE, _MEMORY_NAME = (part.encode() for part in MEMORY_IMPORT)
# Loading a worker (interpreter start, imports, top-level code) may use this
# much fuel and memory; a top-level endless loop fails the load, not the server.
BAKE_FUEL = 20_000_000_000
BAKE_MEMORY = 512 << 20


class ScriptLoadError(Exception):
    """The worker cannot be loaded; one line for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class Language:
    name: str  # "python" or "ruby"
    extension: str  # "py" or "rb"
    install_hint: str
    # Rewrites the runtime before it is split (e.g. exporting its table).
    prepare: Callable[[bytes], bytes]
    # Extra imports the runtime needs besides WASI (Ruby's JS interop).
    define: Callable[[wasmtime.Linker, wasmtime.Module], None]


def runtime_digest(path: Path) -> str:
    """The runtime's SHA-256, from its install record when there is one."""
    try:
        note = json.loads((path.parent / "runtime.json").read_text())
        if isinstance(note, dict) and isinstance(note.get("sha256"), str):
            return str(note["sha256"])
    except (OSError, ValueError):
        pass
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise ScriptLoadError(f"cannot read the runtime {path}: {exc.strerror}") from None


class Interpreter:
    """A compiled runtime (Python or Ruby) and how to link it to a heap."""

    def __init__(
        self,
        language: Language,
        path: Path,
        engine: wasmtime.Engine,
        module: wasmtime.Module,
        max_pages: int | None,
        mutable_globals: tuple[MutableGlobal, ...],
    ) -> None:
        self.language = language
        self.path = path
        self.engine = engine
        self.module = module
        self.max_pages = max_pages
        self.mutable_globals = mutable_globals
        self.linker = self.new_linker()
        self._heap_linker = wasmtime.Linker(engine)
        self._blank: wasmtime.InstancePre | None = None

    def new_linker(self) -> wasmtime.Linker:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self.language.define(linker, self.module)
        # The memory belongs to each request's store: redefined every time.
        linker.allow_shadowing = True
        return linker

    def heap(self, module: wasmtime.Module) -> wasmtime.InstancePre:
        return self._heap_linker.instantiate_pre(module)

    def blank_heap(self) -> wasmtime.InstancePre:
        """The runtime's own initial memory (only loading a worker needs it)."""
        if self._blank is None:
            split = split_memory(self.language.prepare(self.path.read_bytes()))
            self._blank = self.heap(wasmtime.Module(self.engine, split.blank_heap))
        return self._blank

    def instantiate(
        self, store: wasmtime.Store, heap: wasmtime.InstancePre, linker: wasmtime.Linker | None = None
    ) -> tuple[wasmtime.Instance, wasmtime.Instance]:
        """A fresh heap instance, then the runtime linked to its memory."""
        linker = linker or self.linker
        heap_instance = heap.instantiate(store)
        memory = raw_export(store, heap_instance, "memory")
        error = ffi.wasmtime_linker_define(
            linker.ptr(),
            store._context(),
            _MEMORY_MODULE,
            len(_MEMORY_MODULE),
            _MEMORY_NAME,
            len(_MEMORY_NAME),
            ctypes.byref(memory),
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        return heap_instance, linker.instantiate(store, self.module)


_interpreters: dict[tuple[int, str], Interpreter] = {}


def interpreter(language: Language, spec: WorkerSpec, cache: ModuleCache, *, write: bool) -> Interpreter:
    """The runner's compiled runtime for ``spec``: from the cache, else
    split and compiled (once per machine and runtime version).

    Raises:
        ScriptLoadError: the runtime is not installed or cannot be prepared.
    """
    if not spec.runtime:
        raise ScriptLoadError(
            f"the {language.name.capitalize()} runtime is not installed: run `{language.install_hint}`"
        )
    path = Path(spec.runtime)
    found = _interpreters.get((id(cache), str(path)))
    if found is not None:
        return found
    if not path.is_file():
        raise ScriptLoadError(
            f"the {language.name.capitalize()} runtime is missing ({path}): run `{language.install_hint}`"
        )
    key = engine_key(language, path)
    entry = _read_entry(cache, key, verify=write)
    loaded = None
    if entry is not None:
        module, note = entry
        try:
            mutable = tuple(MutableGlobal(str(n), str(t), v) for n, t, v in note["globals"])
            loaded = module, note["max_pages"], mutable
        except (KeyError, TypeError, ValueError):
            loaded = None
    if loaded is None:
        try:
            split = split_memory(language.prepare(path.read_bytes()))
        except (BakeError, OSError) as exc:
            raise ScriptLoadError(f"the {language.name} runtime cannot be prepared: {exc}") from None
        started = time.perf_counter()
        module = wasmtime.Module(cache.engine, split.engine)
        log.info("compiled the %s runtime in %.1f s", language.name, time.perf_counter() - started)
        if write:
            globals_note = [[g.export_name, g.value_type, g.initial] for g in split.mutable_globals]
            note_out: dict[str, Any] = {
                "kind": f"{language.extension}-engine",
                "max_pages": split.max_pages,
                "globals": globals_note,
            }
            _write_entry(cache, key, module, note_out)
        loaded = module, split.max_pages, split.mutable_globals
    module, max_pages, mutable = loaded
    result = Interpreter(language, path, cache.engine, module, max_pages, mutable)
    _interpreters[(id(cache), str(path))] = result
    return result


def engine_key(language: Language, path: Path) -> str:
    recipe = f"{SCRIPT_BAKE_VERSION}|{language.name}|{runtime_digest(path)}"
    return f"{language.extension}-engine-" + hashlib.sha256(recipe.encode()).hexdigest()


def api_source(name: str, flavour: str) -> str:
    """A polyfill or driver from script_api/, set to ``flavour`` ("3" is wws's
    older polyfill: no base64 bodies)."""
    text = (API_DIR / name).read_text()
    if flavour == "3":
        text = text.replace("BYTES_AS_BASE64 = True", "BYTES_AS_BASE64 = False")
        text = text.replace("WWS_BINARY_AS_BASE64 = true", "WWS_BINARY_AS_BASE64 = false")
    return text


def recipe_key(language: Language, spec: WorkerSpec, source: bytes, cache: ModuleCache) -> str:
    """Everything that determines a worker's snapshot, hashed."""
    digest = hashlib.sha256()
    mounts = [[m.host_path, m.guest_path, m.writable] for m in spec.mounts]
    parts = (
        SCRIPT_BAKE_VERSION.encode(),
        HEAP_LAYOUT_VERSION.encode(),
        language.name.encode(),
        runtime_digest(Path(spec.runtime)).encode(),
        spec.flavour.encode(),
        api_source(f"poly.{language.extension}", spec.flavour).encode(),
        api_source(f"driver.{language.extension}", spec.flavour).encode(),
        json.dumps(spec.variables, sort_keys=True).encode(),
        json.dumps(mounts).encode(),
        source,
    )
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return f"{language.extension}-" + digest.hexdigest()


def src_folder(language: Language, spec: WorkerSpec, source: bytes, cache: ModuleCache, key: str) -> Path:
    """The worker's /src folder (wws's .wws/workers/<ext>/<hash>/), kept in
    the cache: index.<ext> (the worker) and poly.<ext> (the API)."""
    folder = cache.path_for(key, ".src")
    ext = language.extension
    index, poly = folder / f"index.{ext}", folder / f"poly.{ext}"
    api = api_source(f"poly.{ext}", spec.flavour).encode()
    if index.is_file() and poly.is_file() and index.read_bytes() == source and poly.read_bytes() == api:
        return folder
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cache.store(index, source)
    cache.store(poly, api)
    return folder


def wasi_config(spec: WorkerSpec, src: Path) -> wasmtime.WasiConfig:
    """WASI as wws gives it: env from [vars] only, the [[folders]] mounts,
    then /src (read-only). The same order at load and per request, because
    the interpreter's libc remembers the preopens it saw."""
    wasi = wasmtime.WasiConfig()
    wasi.env = list(spec.variables.items())
    for mount in spec.mounts:
        wasi.preopen_dir(mount.host_path, mount.guest_path, mount.writable)
    wasi.preopen_dir(str(src), "/src", False)
    return wasi


def read_source(spec: WorkerSpec) -> bytes:
    try:
        source = Path(spec.path).read_bytes()
    except OSError as exc:
        raise ScriptLoadError(f"cannot read the file: {exc.strerror}") from None
    try:
        source.decode("utf-8")
    except UnicodeDecodeError:
        raise ScriptLoadError("the script is not UTF-8 text") from None
    return source


def record(spec: WorkerSpec, cache: ModuleCache, language: Language, key: str) -> None:
    """Note the cache entries this worker uses (cache hygiene)."""
    files = [
        cache.path_for(k, suffix)
        for k in (key, engine_key(language, Path(spec.runtime)))
        for suffix in (".cwasm", ".json")
    ]
    cache_hygiene.record_use(cache.path_for(cache_hygiene.record_key(spec.path), ".json"), spec.path, files)


def moved_globals(
    store: wasmtime.Store, instance: wasmtime.Instance, mutable: tuple[MutableGlobal, ...]
) -> list[list[Any]]:
    """Runtime globals away from their initial values (the stack pointer
    inside a frozen call, asyncify's data pointer): set on every instance."""
    moved: list[list[Any]] = []
    for spec in mutable:
        item = export_get(store, instance, spec.export_name)
        if not isinstance(item, wasmtime.Global):
            raise ScriptLoadError(f"the runtime does not export {spec.export_name}")
        value = int(item.value(store))
        if value != spec.initial:
            moved.append([spec.export_name, spec.value_type, value])
    return moved


def set_globals(store: wasmtime.Store, instance: wasmtime.Instance, moved: list[list[Any]]) -> None:
    for name, kind, value in moved:
        item = export_get(store, instance, name)
        assert isinstance(item, wasmtime.Global)
        item.set_value(store, wasmtime.Val.i32(value) if kind == "i32" else wasmtime.Val.i64(value))


def bake_store(engine: wasmtime.Engine) -> wasmtime.Store:
    store = wasmtime.Store(engine)
    store.set_fuel(BAKE_FUEL)
    store.set_epoch_deadline(1 << 40)
    store.set_limits(memory_size=BAKE_MEMORY)
    return store


def last_line(text: bytes) -> str:
    lines = [line for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error message"


# Makes a worker's heap module and its snapshot notes (offsets of the entry
# points, globals to restore) from a fresh interpreter with the worker loaded.
Bake = Callable[[Interpreter, WorkerSpec, Path], tuple[bytes, dict[str, Any]]]


def cached_heap(
    language: Language, spec: WorkerSpec, cache: ModuleCache, *, write: bool, bake: Bake, kind: str
) -> tuple[Interpreter, Path, wasmtime.Module, dict[str, Any]]:
    """The worker's interpreter, ``/src`` folder, heap module and snapshot
    notes: from the cache when it holds them, else baked (and, in the compile
    step, cached under the entry ``kind``).

    Raises:
        ScriptLoadError: no runtime, or the worker fails to load.
    """
    # The cache entry format is the JavaScript heaps' (runner/engines/jsengine.py).
    from runner.engines.jsengine import _read_entry, _write_entry

    source = read_source(spec)
    runtime = interpreter(language, spec, cache, write=write)
    key = recipe_key(language, spec, source, cache)
    src = src_folder(language, spec, source, cache, key)
    entry = _read_entry(cache, key, verify=write)
    if entry is not None and isinstance(entry[1].get("snapshot"), dict):
        module, note = entry
        snapshot: dict[str, Any] = note["snapshot"]
    else:
        try:
            heap_bytes, snapshot = bake(runtime, spec, src)
        finally:
            # A load's Store can outlive it in a traceback cycle, holding two
            # of the pool's few instance slots; free it now.
            gc.collect()
        module = wasmtime.Module(cache.engine, heap_bytes)
        if write:
            _write_entry(cache, key, module, {"kind": kind, "source": spec.path, "snapshot": snapshot})
    if write:
        record(spec, cache, language, key)
    return runtime, src, module, snapshot
