"""Running one request inside a fresh wasm instance, under fuel, memory and
wall-clock limits: the Store is made here, the worker's executor (one per
contract, ``runner/executors/base.py``) runs the guest, and ``runner/failures.py``
turns whatever ended it into a FailureKind."""

from __future__ import annotations

import os
import shutil
import time

import wasmtime

from ipc.messages import Failure, FailureKind, Invoke, Reply
from runner.engines.epoch import EpochTicker
from runner.engines.modules import LoadedWorker
from runner.executors import base as executor
from runner.executors.base import GuestFiles
from runner.executors.kit_protocol import (
    DEFAULT_MAX_OUTPUT,
)

# The tail of a worker's stderr that travels back for the supervisor's log.
STDERR_TAIL = 4096


class Sandbox:
    """Owns the engine-wide pieces of a runner and runs requests one at a time.

    Guest stdout and stderr go to two files private to this runner, reused
    (truncated by wasmtime on open) for every request: no temp file per request.
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        workers: dict[str, LoadedWorker],
        tick_ms: int,
        scratch_dir: str,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self._engine = engine
        self._workers = workers
        self._ticker = EpochTicker(engine, tick_ms)
        self._scratch = os.path.join(scratch_dir, str(os.getpid()))
        os.makedirs(self._scratch, mode=0o700, exist_ok=True)
        self._stdout_path = os.path.join(self._scratch, "stdout")
        self._stderr_path = os.path.join(self._scratch, "stderr")
        # wasmtime reopens (and truncates) these paths for every request; our
        # descriptors stay open on the same files, so reading back the output
        # is one pread instead of open/read/close.
        self._stdout_fd = os.open(self._stdout_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._stderr_fd = os.open(self._stderr_path, os.O_RDWR | os.O_CREAT, 0o600)
        # Worker output past max_output_bytes is bad-output, well before the IPC frame limit.
        self._files = GuestFiles(self._stdout_path, self._stderr_path, self._read_outputs, max_output_bytes)
        self._retired: wasmtime.Store | None = None

    def close(self) -> None:
        self._retired = None
        os.close(self._stdout_fd)
        os.close(self._stderr_fd)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def release(self) -> None:
        """Free the last request's Store: its instances, memory slot and the
        guest's open files. The runner calls this once the reply is on its
        way, so the teardown (about a tenth of a small request) does not delay
        the reply; the next request frees it first in any case."""
        self._retired = None

    def run(self, invoke: Invoke) -> Reply | Failure:
        # The ticker must not park while a request runs, however long it is.
        self._ticker.request_started()
        try:
            return self._run(invoke)
        finally:
            self._ticker.request_finished()

    def _run(self, invoke: Invoke) -> Reply | Failure:
        self._retired = None  # one request's Store alive at a time, at most
        started = time.perf_counter()
        worker = self._workers.get(invoke.worker_id)
        if worker is None:
            return Failure(
                invoke.request_id, FailureKind.LOAD_ERROR, "worker is not loaded in this runner", 0, 0, b""
            )
        store = self._retired = wasmtime.Store(self._engine)
        store.set_fuel(invoke.fuel)
        store.set_limits(memory_size=invoke.memory_bytes, instances=4, tables=4, memories=1)
        store.set_epoch_deadline(self._ticker.ticks_for(invoke.timeout_ms))
        return executor.run(worker.executor, store, invoke, self._files, started)

    def _read_outputs(self) -> tuple[bytes, bytes]:
        stdout = _pread_all(self._stdout_fd)
        stderr = os.pread(self._stderr_fd, STDERR_TAIL, 0)
        if len(stderr) == STDERR_TAIL:  # more than the tail: keep its end
            size = os.fstat(self._stderr_fd).st_size
            stderr = os.pread(self._stderr_fd, STDERR_TAIL, max(0, size - STDERR_TAIL))
        return stdout, stderr


_FIRST_READ = 1 << 16


def _pread_all(fd: int) -> bytes:
    # A small first read (the usual case: one call, no mmap for the buffer),
    # then the rest at its known size.
    data = os.pread(fd, _FIRST_READ, 0)
    if len(data) < _FIRST_READ:
        return data
    size = os.fstat(fd).st_size
    return data + os.pread(fd, max(0, size - len(data)), len(data))
