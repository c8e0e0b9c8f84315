"""A runner reuses its guest stdout/stderr files and its raw wasmtime calls for
every request: nothing one request wrote or raised may reach the next one,
whatever ended it (a trap, output past the cap, an exit, a host exception)."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import wasmtime

from ipc.codec import FrameDecoder, encode
from ipc.messages import (
    PROTOCOL_VERSION,
    Configure,
    Failure,
    HttpPolicy,
    Invoke,
    Ready,
    Reply,
    WorkerSpec,
    default_engine_settings,
)
from runner.engines.wasmffi import call_no_args, host_exception, instantiate, memory_size, raw_export
from tests.helpers import TEST_PROJECT

RUNNER = [sys.executable, "-I", "-m", "runner"]
NO_HTTP = HttpPolicy([], ["GET"], False)
MAX_OUTPUT = 1 << 20

# Writes $text to stdout and $err to stderr, then runs $end. fd_write takes an
# iovec list at 0; a 64 KiB block of "A" sits at 65536 for the flood.
_WRITER = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "{text}")
  (data (i32.const 1024) "{err}")
  (func $write (param $fd i32) (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $i i32)
    (memory.fill (i32.const 65536) (i32.const 65) (i32.const 65536))
    (call $write (i32.const 1) (i32.const 64) (i32.const {text_len}))
    (call $write (i32.const 2) (i32.const 1024) (i32.const {err_len}))
    {end}))
"""
_FLOOD = """(loop $more
      (call $write (i32.const 1) (i32.const 65536) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 40))))"""


def _writer(folder: Path, name: str, text: str, err: str, end: str) -> WorkerSpec:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    wat = _WRITER.format(text=escaped, err=err, text_len=len(text), err_len=len(err), end=end)
    path = folder / f"{name}.wat"
    path.write_text(wat)
    return WorkerSpec(path.name, str(path), "wat", {}, [], NO_HTTP)


def _invoke(request_id: int, worker_id: str) -> Invoke:
    return Invoke(request_id, worker_id, "GET", "http://x/", [], b"", {}, {}, 100_000_000, 16 << 20, 5000)


def test_no_request_sees_what_the_one_before_it_wrote(tmp_path: Path) -> None:
    hello = WorkerSpec("hello.wat", str(TEST_PROJECT / "hello.wat"), "wat", {}, [], NO_HTTP)
    workers = [
        hello,
        _writer(tmp_path, "flood", '{"data":"', "flood-err", _FLOOD),
        _writer(tmp_path, "trap", '{"data":"leak', "trap-err", "unreachable"),
        _writer(tmp_path, "exit", '{"data":"gone', "exit-err", "(call $exit (i32.const 3))"),
    ]
    configure = Configure(
        0, PROTOCOL_VERSION, workers, str(tmp_path / "cache"), str(tmp_path), False, 10, MAX_OUTPUT
    )
    order = [
        "flood.wat",
        "hello.wat",
        "trap.wat",
        "hello.wat",
        "exit.wat",
        "hello.wat",
        "flood.wat",
        "flood.wat",
    ]
    frames = encode(configure) + b"".join(encode(_invoke(i + 1, w)) for i, w in enumerate(order))
    result = subprocess.run(RUNNER, input=frames, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    ready, *replies = FrameDecoder().feed(result.stdout)
    assert isinstance(ready, Ready) and ready.load_errors == {}
    assert [r.request_id for r in replies] == list(range(1, len(order) + 1))
    flood, hello1, trap, hello2, exit_, hello3, flood2, flood3 = replies
    for failure, kind, stderr in [(flood, "bad-output", b"flood-err"), (trap, "trap", b"trap-err")]:
        assert isinstance(failure, Failure) and failure.kind == kind, failure
        assert failure.stderr == stderr
    assert isinstance(flood, Failure) and f"reached the {MAX_OUTPUT}-byte limit" in flood.detail
    assert isinstance(exit_, Failure) and (exit_.kind, exit_.stderr) == ("exit", b"exit-err")
    # The same answer every time, with none of the others' stdout or stderr.
    for reply in (hello1, hello2, hello3):
        assert isinstance(reply, Reply), reply
        assert (reply.status, reply.body, reply.stderr) == (201, b"hello", b"")
    # A flood after a flood is cut at the cap again, not earlier or later.
    for failure in (flood2, flood3):
        assert isinstance(failure, Failure) and failure.detail == flood.detail


_HOST_CALL = """
(module
  (import "host" "boom" (func $boom))
  (memory (export "memory") 3)
  (func (export "_start") (call $boom)))
"""


@pytest.fixture
def boom_instance() -> tuple[wasmtime.Store, wasmtime.InstancePre]:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)

    def boom() -> None:
        raise ValueError("raised by the host")

    linker.define_func("host", "boom", wasmtime.FuncType([], []), boom)
    pre = linker.instantiate_pre(wasmtime.Module(engine, _HOST_CALL))
    return wasmtime.Store(engine), pre


def test_a_host_exception_surfaces_once_and_is_not_left_for_a_later_call(
    boom_instance: tuple[wasmtime.Store, wasmtime.InstancePre],
) -> None:
    store, pre = boom_instance
    instance = instantiate(pre, store)
    assert memory_size(store, instance) == 3 * 65536
    with pytest.raises(ValueError, match="raised by the host"):
        call_no_args(store, raw_export(store, instance, "_start"))
    assert host_exception() is None
    # A plain trap afterwards is that trap, not the old exception.
    trap_pre = wasmtime.Linker(store.engine).instantiate_pre(
        wasmtime.Module(store.engine, '(module (func (export "_start") unreachable))')
    )
    trapping = instantiate(trap_pre, store)
    assert memory_size(store, trapping) is None
    with pytest.raises(wasmtime.Trap) as trapped:
        call_no_args(store, raw_export(store, trapping, "_start"))
    assert trapped.value.trap_code == wasmtime.TrapCode.UNREACHABLE


def test_a_start_function_that_traps_fails_the_raw_instantiate() -> None:
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, "(module (func $s unreachable) (start $s))")
    pre = wasmtime.Linker(engine).instantiate_pre(module)
    with pytest.raises(wasmtime.Trap):
        instantiate(pre, wasmtime.Store(engine))


def test_the_last_store_is_freed_by_release_or_by_the_next_request(tmp_path: Path) -> None:
    # The runner frees a request's Store after sending its reply; whoever
    # never calls release (benches) still holds one Store at most.
    from runner.engines import http_import
    from runner.engines.engine import make_engine, profile
    from runner.engines.modules import ModuleCache, load_worker
    from runner.sandbox import Sandbox

    settings = default_engine_settings()
    engine = make_engine(settings)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    context = http_import.RequestContext()
    http_import.define(linker, context)
    cache = ModuleCache(engine, str(tmp_path / "cache"), profile(settings))
    hello = WorkerSpec("hello.wat", str(TEST_PROJECT / "hello.wat"), "wat", {}, [], NO_HTTP)
    sandbox = Sandbox(
        engine, {"hello.wat": load_worker(hello, cache, linker, write=False, http=context)}, 10, str(tmp_path)
    )
    try:
        gc.collect()
        before = {id(o) for o in gc.get_objects() if isinstance(o, wasmtime.Store)}
        stores: list[weakref.ref[wasmtime.Store]] = []
        for request_id in (1, 2):
            reply = sandbox.run(_invoke(request_id, "hello.wat"))
            assert isinstance(reply, Reply) and reply.body == b"hello"
            gc.collect()
            alive = [o for o in gc.get_objects() if isinstance(o, wasmtime.Store) and id(o) not in before]
            assert len(alive) == 1
            stores.append(weakref.ref(alive[0]))
            del alive
        assert stores[0]() is None  # freed when the second request started
        sandbox.release()
        assert stores[1]() is None
    finally:
        sandbox.close()
