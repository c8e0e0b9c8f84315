"""One compiled QuickJS for every JavaScript worker: cache entries, edits,
damaged entries, the cache command and startup progress, on real servers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from runner.engines.wasmbake import BakeError, heap_module, split_memory
from tests.helpers import REPO, ServerProcess, http

HANDLER = 'addEventListener("fetch", (e) => e.respondWith(new Response("{text}")));\n'


def _project(folder: Path, count: int) -> Path:
    project = folder / "project"
    project.mkdir()
    for index in range(count):
        (project / f"w{index}.js").write_text(HANDLER.format(text=f"hello {index}"))
    return project


def _heaps(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("js-*.cwasm")}


def _start(project: Path, cache: Path) -> ServerProcess:
    server = ServerProcess(project, ["-w", "1"], cache)
    server.wait_ready(timeout=120)
    return server


async def test_edited_worker_gets_a_new_snapshot_and_the_old_entry_goes(tmp_path: Path) -> None:
    project, cache = _project(tmp_path, 2), tmp_path / "cache"
    server = _start(project, cache)
    try:
        assert (await http(server.port, "GET", "/w0")).body == b"hello 0"
    finally:
        server.stop()
    before = _heaps(cache)
    assert len(before) == 2 and len(list(cache.glob("qjs-engine-*.cwasm"))) == 1
    (project / "w0.js").write_text(HANDLER.format(text="edited"))
    server = _start(project, cache)
    try:
        assert (await http(server.port, "GET", "/w0")).body == b"edited"
        assert (await http(server.port, "GET", "/w1")).body == b"hello 1"
    finally:
        server.stop()
    after = _heaps(cache)
    assert len(after) == 2 and len(after & before) == 1  # w1 kept, w0's old heap pruned


async def test_damaged_entries_are_rebuilt(tmp_path: Path) -> None:
    project, cache = _project(tmp_path, 1), tmp_path / "cache"
    _start(project, cache).stop()
    for entry in [*cache.glob("js-*.cwasm"), *cache.glob("qjs-engine-*.cwasm")]:
        data = bytearray(entry.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # damage in the middle
        entry.write_bytes(bytes(data))
    server = _start(project, cache)
    try:
        assert (await http(server.port, "GET", "/w0")).body == b"hello 0"
    finally:
        server.stop()
    for note_path in cache.glob("*.json"):
        note = json.loads(note_path.read_text())
        if "sha256" in note:
            compiled = note_path.with_suffix(".cwasm").read_bytes()
            assert hashlib.sha256(compiled).hexdigest() == note["sha256"]


def test_empty_cache_start_shows_progress_and_warm_start_does_not(tmp_path: Path) -> None:
    project, cache = _project(tmp_path, 3), tmp_path / "cache"
    server = _start(project, cache)
    server.stop()
    # The engine compile alone takes most of a second, so the first look sees work.
    assert any("Compiling" in line for line in server.stdout_lines)
    snapshots = [line for line in server.stdout_lines if "heap snapshot taken" in line]
    assert snapshots and all(line.rstrip().endswith("left)") for line in snapshots)
    warm = _start(project, cache)
    warm.stop()
    assert not any("Compiling" in line for line in warm.stdout_lines)


def _cache_command(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "cache", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_cache_info_and_prune(tmp_path: Path) -> None:
    project, cache = _project(tmp_path, 2), tmp_path / "cache"
    _start(project, cache).stop()
    info = _cache_command("info", "--cache-dir", str(cache))
    # A compiled file and its JSON note each.
    assert "JavaScript heaps: 4 files" in info and "JavaScript engine: 2 files" in info
    (project / "w1.js").unlink()
    _cache_command("prune", "--cache-dir", str(cache))
    assert len(_heaps(cache)) == 1  # the deleted worker's heap is gone, w0's stays
    assert "(0 no longer exist)" in _cache_command("info", "--cache-dir", str(cache))
    _cache_command("prune", "--all", "--cache-dir", str(cache))
    assert not list(cache.iterdir())


# The rewrite itself, on a small module: a data segment, a mutable global.
_WAT = """
(module
  (memory (export "memory") 1 4)
  (global $sp (mut i32) (i32.const 1024))
  (data (i32.const 16) "seed")
  (func (export "bump") (result i32)
    (global.set $sp (i32.add (global.get $sp) (i32.const 8)))
    (i32.store (i32.const 100) (global.get $sp))
    (i32.load (i32.const 16))))
"""


def test_split_module_imports_its_memory_and_runs_on_a_heap() -> None:
    split = split_memory(bytes(wasmtime.wat2wasm(_WAT)))
    assert (split.min_pages, split.max_pages) == (1, 4)
    (sp,) = split.mutable_globals
    assert (sp.value_type, sp.initial) == ("i32", 1024)
    engine = wasmtime.Engine()
    code = wasmtime.Module(engine, split.engine)
    assert [(i.module, i.name) for i in code.imports] == [("wws", "memory")]
    store = wasmtime.Store(engine)
    blank = wasmtime.Instance(store, wasmtime.Module(engine, split.blank_heap), [])
    memory = blank.exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    instance = wasmtime.Instance(store, code, [memory])
    bump = instance.exports(store)["bump"]
    assert isinstance(bump, wasmtime.Func)
    assert bump(store) == int.from_bytes(b"seed", "little")
    moved = instance.exports(store)[sp.export_name]
    assert isinstance(moved, wasmtime.Global) and moved.value(store) == 1032
    # The heap carries memory only: a copy of this memory starts where it was.
    snapshot = bytes(memory.read(store, 0, memory.data_len(store)))
    heap = wasmtime.Instance(store, wasmtime.Module(engine, heap_module(snapshot, 4)), [])
    copy = heap.exports(store)["memory"]
    assert isinstance(copy, wasmtime.Memory)
    assert bytes(copy.read(store, 100, 104)) == (1032).to_bytes(4, "little")


def test_split_rejects_what_it_cannot_handle() -> None:
    with pytest.raises(BakeError):
        split_memory(b"not wasm")
    with pytest.raises(BakeError):
        split_memory(bytes(wasmtime.wat2wasm('(module (import "a" "m" (memory 1)))')))
    with pytest.raises(BakeError):
        heap_module(b"\0" * 100, None)
