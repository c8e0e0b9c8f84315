"""runner/denseheap.py: a sparse heap snapshot becomes a module that wasmtime
maps copy-on-write (no fuel, no copy per instantiation) and restores exactly."""

from __future__ import annotations

import pytest
import wasmtime

from ipc.messages import default_engine_settings
from runner.denseheap import WASM_PAGE, DenseHeapError, dense_heap_module
from runner.engine import make_engine
from runner.wasmbake import heap_module

PAGES = 384  # 24 MiB: over wasmtime's 16 MiB "always an image" size


def _sparse_snapshot() -> bytes:
    # One non-zero 4 KiB page in three, after a zero first MiB: a third dense,
    # as a Ruby heap is (27 MB of 59), so page-run segments are not an image.
    snapshot = bytearray(PAGES * WASM_PAGE)
    for offset in range(1 << 20, len(snapshot), 3 * 4096):
        snapshot[offset : offset + 4096] = (offset // 4096 % 251 + 1).to_bytes(1, "little") * 4096
    return bytes(snapshot)


def _instantiate(engine: wasmtime.Engine, module_bytes: bytes) -> tuple[int, bytes]:
    """Fuel the instantiation used, and the memory it produced."""
    store = wasmtime.Store(engine)
    store.set_fuel(10**9)
    store.set_epoch_deadline(1 << 40)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, module_bytes), [])
    used = 10**9 - store.get_fuel()
    memory = instance.exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    return used, bytes(memory.read(store, 0, memory.data_len(store)))


def test_sparse_heap_is_mapped_not_copied() -> None:
    engine = make_engine(default_engine_settings())
    snapshot = _sparse_snapshot()
    used, memory = _instantiate(engine, dense_heap_module(snapshot, None))
    assert memory == snapshot
    assert used == 0
    # The reason this module exists: the page-run segments of the same
    # snapshot are copied at every instantiation, in fuel-metered code.
    sparse_used, sparse_memory = _instantiate(engine, heap_module(snapshot, None))
    assert sparse_memory == snapshot
    assert sparse_used > 1_000_000


def test_limits_and_empty_snapshots() -> None:
    engine = make_engine(default_engine_settings())
    used, memory = _instantiate(engine, dense_heap_module(bytes(2 * WASM_PAGE), 4))
    assert (used, memory) == (0, bytes(2 * WASM_PAGE))
    with pytest.raises(DenseHeapError, match="whole wasm pages"):
        dense_heap_module(bytes(100), None)
    with pytest.raises(DenseHeapError, match="maximum memory"):
        dense_heap_module(bytes(3 * WASM_PAGE), 2)
