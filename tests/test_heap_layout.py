"""runner.engines.wasmbake.heap_module: every heap snapshot, dense or sparse, becomes
a module that wasmtime maps copy-on-write (no fuel, no copy per
instantiation) and restores exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from ipc.messages import default_engine_settings
from runner.engines.engine import make_engine, profile
from runner.engines.modules import ModuleCache
from runner.engines.wasmbake import PAGE, BakeError, heap_module

PAGES = 384  # 24 MiB: over wasmtime's 16 MiB "always an image" size


def _sparse_snapshot() -> bytes:
    # One non-zero 4 KiB page in three, after a zero first MiB: a third dense,
    # as a Ruby heap is (27 MB of 59), so page-run segments are not an image.
    snapshot = bytearray(PAGES * PAGE)
    for offset in range(1 << 20, len(snapshot), 3 * 4096):
        snapshot[offset : offset + 4096] = (offset // 4096 % 251 + 1).to_bytes(1, "little") * 4096
    return bytes(snapshot)


def _instantiate(engine: wasmtime.Engine, module_bytes: bytes) -> tuple[int, bytes]:
    """Fuel the instantiation used, and the memory it produced."""
    return _instantiate_module(engine, wasmtime.Module(engine, module_bytes))


def _instantiate_module(engine: wasmtime.Engine, module: wasmtime.Module) -> tuple[int, bytes]:
    store = wasmtime.Store(engine)
    store.set_fuel(10**9)
    store.set_epoch_deadline(1 << 40)
    instance = wasmtime.Instance(store, module, [])
    used = 10**9 - store.get_fuel()
    memory = instance.exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    return used, bytes(memory.read(store, 0, memory.data_len(store)))


def _dense_snapshot() -> bytes:
    # Two non-zero pages in three: page runs, dense enough to be an image.
    snapshot = bytearray(PAGES * PAGE)
    for offset in range(0, len(snapshot), 3 * 4096):
        snapshot[offset : offset + 2 * 4096] = b"\x07" * (2 * 4096)
    return bytes(snapshot)


def test_a_sparse_heap_is_mapped_not_copied() -> None:
    # A Ruby-like heap: as page-run segments wasmtime would copy it at every
    # instantiation, in fuel-metered code (28 M fuel for a Ruby hello).
    engine = make_engine(default_engine_settings())
    snapshot = _sparse_snapshot()
    used, memory = _instantiate(engine, heap_module(snapshot, None))
    assert memory == snapshot
    assert used == 0


def test_a_dense_heap_is_mapped_too() -> None:
    engine = make_engine(default_engine_settings())
    snapshot = _dense_snapshot()
    used, memory = _instantiate(engine, heap_module(snapshot, None))
    assert memory == snapshot
    assert used == 0


def test_limits_and_empty_snapshots() -> None:
    engine = make_engine(default_engine_settings())
    used, memory = _instantiate(engine, heap_module(bytes(2 * PAGE), 4))
    assert (used, memory) == (0, bytes(2 * PAGE))
    with pytest.raises(BakeError, match="whole pages"):
        heap_module(bytes(100), None)
    with pytest.raises(BakeError, match="maximum memory"):
        heap_module(bytes(3 * PAGE), 2)


def test_a_sparse_heap_takes_its_non_zero_pages_on_disk(tmp_path: Path) -> None:
    settings = default_engine_settings()
    engine = make_engine(settings)
    cache = ModuleCache(engine, str(tmp_path), profile(settings))
    snapshot = _sparse_snapshot()
    heap = wasmtime.Module(engine, heap_module(snapshot, None))
    target = cache.path_for("heap")
    cache.store(target, bytes(heap.serialize()))
    written = target.stat()
    # Laid out over its whole span (24 MiB), zeros included; on disk the zero
    # blocks are holes (where the file system has them: tmpfs and ext4 do).
    assert written.st_size > 20 << 20
    assert written.st_blocks * 512 < written.st_size * 0.6
    used, memory = _instantiate_module(engine, wasmtime.Module.deserialize_file(engine, str(target)))
    assert (used, memory) == (0, snapshot)
