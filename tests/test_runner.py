"""The runner process on its own: the handshake, its exit codes, and the module cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipc.codec import FrameDecoder, encode
from ipc.messages import PROTOCOL_VERSION, Configure, Failure, HttpPolicy, Invoke, Ready, Reply, WorkerSpec
from tests.helpers import TEST_PROJECT

RUNNER = [sys.executable, "-I", "-m", "runner"]

NO_HTTP = HttpPolicy([], ["GET", "POST", "PUT", "PATCH", "DELETE"], False)


def _configure(
    tmp_path: Path, workers: list[WorkerSpec], *, prepare: bool = False, version: int = PROTOCOL_VERSION
) -> Configure:
    return Configure(0, version, workers, str(tmp_path / "cache"), str(tmp_path), prepare, 10, 1 << 20)


def _talk(frames: bytes) -> tuple[int, list[object], str]:
    result = subprocess.run(RUNNER, input=frames, capture_output=True, timeout=60)
    return result.returncode, list(FrameDecoder().feed(result.stdout)), result.stderr.decode()


def _invoke(request_id: int, worker_id: str) -> Invoke:
    return Invoke(request_id, worker_id, "GET", "http://x/", [], b"", {}, {}, 10_000_000, 16 << 20, 1000)


def test_eof_before_configure_exits_0() -> None:
    assert _talk(b"")[0] == 0


def test_garbage_frame_exits_4() -> None:
    code, _, stderr = _talk(b"\x00\x00\x00\x02\xc1\xc1")
    assert code == 4
    assert "invalid configure frame" in stderr


def test_wrong_protocol_version_exits_3(tmp_path: Path) -> None:
    code, replies, _ = _talk(encode(_configure(tmp_path, [], version=PROTOCOL_VERSION + 1)))
    assert (code, replies) == (3, [])


def test_serves_requests_in_order_and_exits_on_eof(tmp_path: Path) -> None:
    hello = WorkerSpec("hello.wat", str(TEST_PROJECT / "hello.wat"), "wat", {}, [], NO_HTTP)
    trap = WorkerSpec("trap.wat", str(TEST_PROJECT / "trap.wat"), "wat", {}, [], NO_HTTP)
    frames = (
        encode(_configure(tmp_path, [hello, trap]))
        + encode(_invoke(1, "hello.wat"))
        + encode(_invoke(2, "trap.wat"))
    )
    code, replies, _ = _talk(frames)
    assert code == 0
    ready, first, second = replies
    assert isinstance(ready, Ready) and ready.load_errors == {}
    assert isinstance(first, Reply) and (first.request_id, first.status, first.body) == (1, 201, b"hello")
    assert first.fuel_used > 0
    assert isinstance(second, Failure) and (second.request_id, second.kind) == (2, "trap")
    # Its scratch folder is gone with it.
    assert not any(p.is_dir() and p.name.isdigit() for p in tmp_path.iterdir())


def test_prepare_reports_load_errors_and_fills_the_cache(tmp_path: Path) -> None:
    (tmp_path / "broken.wasm").write_bytes(b"not wasm")
    good = WorkerSpec("hello.wat", str(TEST_PROJECT / "hello.wat"), "wat", {}, [], NO_HTTP)
    bad = WorkerSpec("broken.wasm", str(tmp_path / "broken.wasm"), "wasm", {}, [], NO_HTTP)
    code, replies, _ = _talk(encode(_configure(tmp_path, [good, bad], prepare=True)))
    assert code == 0
    (ready,) = replies
    assert isinstance(ready, Ready)
    assert list(ready.load_errors) == ["broken.wasm"]
    assert ready.load_errors["broken.wasm"].startswith("invalid WebAssembly module")
    entries = list((tmp_path / "cache").glob("*.cwasm"))
    assert len(entries) == 1
    assert len(entries[0].name.split("-")[0]) == 64  # keyed by the module's sha256


def test_corrupt_cache_entry_is_recompiled(tmp_path: Path) -> None:
    good = WorkerSpec("hello.wat", str(TEST_PROJECT / "hello.wat"), "wat", {}, [], NO_HTTP)
    _talk(encode(_configure(tmp_path, [good], prepare=True)))
    (entry,) = (tmp_path / "cache").glob("*.cwasm")
    entry.write_bytes(b"\x7fELF but not really")
    code, replies, _ = _talk(encode(_configure(tmp_path, [good], prepare=True)))
    assert code == 0 and isinstance(replies[0], Ready) and replies[0].load_errors == {}
    assert entry.read_bytes()[:4] == b"\x7fELF" and entry.stat().st_size > 100
    code, replies, _ = _talk(encode(_configure(tmp_path, [good])) + encode(_invoke(1, "hello.wat")))
    assert isinstance(replies[1], Reply) and replies[1].body == b"hello"


@pytest.mark.parametrize("worker", ["both.wat"])
def test_module_both_command_and_reactor_is_refused(tmp_path: Path, worker: str) -> None:
    (tmp_path / worker).write_text('(module (func (export "_start")) (func (export "_initialize")))')
    spec = WorkerSpec(worker, str(tmp_path / worker), "wat", {}, [], NO_HTTP)
    _, replies, _ = _talk(encode(_configure(tmp_path, [spec], prepare=True)))
    assert "both _start and _initialize" in replies[0].load_errors[worker]  # type: ignore[attr-defined]
