"""Running one request inside a fresh wasm instance, under fuel, memory and
wall-clock limits, and turning every way that can fail into a FailureKind."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import wasmtime

from ipc.messages import Failure, FailureKind, Invoke, Reply
from runner.epoch import EpochTicker
from runner.kit import BadOutput, parse_response, request_json
from runner.modules import LoadedWorker
from runner.wasmffi import export_get, set_stdin_bytes

# One table from wasmtime's trap codes to what we tell the client.
_TRAP_KINDS = {
    wasmtime.TrapCode.OUT_OF_FUEL: FailureKind.OUT_OF_FUEL,
    wasmtime.TrapCode.INTERRUPT: FailureKind.TIMEOUT,
}
_WASM_PAGE = 65536
# The tail of a worker's stderr that travels back for the supervisor's log.
STDERR_TAIL = 4096


@dataclasses.dataclass(slots=True)
class _Outcome:
    kind: FailureKind | None = None
    detail: str = ""


class Sandbox:
    """Owns the engine-wide pieces of a runner and runs requests one at a time.

    Guest stdout and stderr go to two files private to this runner, reused
    (truncated by wasmtime on open) for every request: no temp file per request.
    """

    def __init__(
        self, engine: wasmtime.Engine, workers: dict[str, LoadedWorker], tick_ms: int, scratch_dir: str
    ) -> None:
        self._engine = engine
        self._workers = workers
        self._ticker = EpochTicker(engine, tick_ms)
        self._scratch = os.path.join(scratch_dir, str(os.getpid()))
        os.makedirs(self._scratch, mode=0o700, exist_ok=True)
        self._stdout_path = os.path.join(self._scratch, "stdout")
        self._stderr_path = os.path.join(self._scratch, "stderr")

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    def run(self, invoke: Invoke) -> Reply | Failure:
        started = time.perf_counter()
        worker = self._workers.get(invoke.worker_id)
        if worker is None:
            return Failure(
                invoke.request_id, FailureKind.LOAD_ERROR, "worker is not loaded in this runner", 0, 0, b""
            )
        store = wasmtime.Store(self._engine)
        store.set_fuel(invoke.fuel)
        store.set_limits(memory_size=invoke.memory_bytes, instances=4, tables=4, memories=1)
        store.set_epoch_deadline(self._ticker.ticks_for(invoke.timeout_ms))
        wasi = wasmtime.WasiConfig()
        set_stdin_bytes(wasi, request_json(invoke))
        wasi.stdout_file = self._stdout_path
        wasi.stderr_file = self._stderr_path
        store.set_wasi(wasi)
        outcome = _Outcome()
        self._ticker.request_started()
        try:
            instance = self._execute(store, worker, outcome)
        finally:
            self._ticker.request_finished()
        fuel_used = invoke.fuel - store.get_fuel()
        stdout, stderr = self._read_outputs()
        elapsed_us = int((time.perf_counter() - started) * 1e6)
        if outcome.kind is None:
            try:
                response = parse_response(stdout)
            except BadOutput as exc:
                outcome = _Outcome(FailureKind.BAD_OUTPUT, str(exc))
            else:
                return Reply(
                    invoke.request_id,
                    response.status,
                    response.headers,
                    response.body,
                    response.kv,
                    fuel_used,
                    elapsed_us,
                    stderr,
                )
        if outcome.kind in (FailureKind.TRAP, FailureKind.BAD_OUTPUT, FailureKind.EXIT) and _at_memory_limit(
            store, instance, invoke.memory_bytes
        ):
            # The guest's allocator hit the limit (memory.grow returned -1) and
            # it aborted; say so instead of reporting the abort itself.
            outcome = _Outcome(
                FailureKind.MEMORY_LIMIT,
                f"memory limit of {invoke.memory_bytes} bytes reached ({outcome.detail})",
            )
        assert outcome.kind is not None
        return Failure(invoke.request_id, outcome.kind, outcome.detail, fuel_used, elapsed_us, stderr)

    def _execute(
        self, store: wasmtime.Store, worker: LoadedWorker, outcome: _Outcome
    ) -> wasmtime.Instance | None:
        instance: wasmtime.Instance | None = None
        try:
            instance = worker.instance_pre.instantiate(store)
            if worker.entry is not None:
                entry = export_get(store, instance, worker.entry)
                if not isinstance(entry, wasmtime.Func):
                    raise wasmtime.WasmtimeError(f"{worker.entry} is not a function")
                entry(store)
        except wasmtime.ExitTrap as exc:
            if exc.code != 0:
                outcome.kind, outcome.detail = FailureKind.EXIT, f"the worker exited with code {exc.code}"
        except wasmtime.Trap as exc:
            code = exc.trap_code
            outcome.kind = _TRAP_KINDS.get(code, FailureKind.TRAP) if code is not None else FailureKind.TRAP
            outcome.detail = f"wasm trap: {code.name.lower() if code is not None else _first_line(str(exc))}"
        except wasmtime.WasmtimeError as exc:
            message = _first_line(str(exc))
            if "memory" in message and "limit" in message:
                outcome.kind = FailureKind.MEMORY_LIMIT
            else:
                outcome.kind = FailureKind.TRAP
            outcome.detail = message
        return instance

    def _read_outputs(self) -> tuple[bytes, bytes]:
        with open(self._stdout_path, "rb") as out:
            stdout = out.read()
        with open(self._stderr_path, "rb") as err:
            err.seek(0, os.SEEK_END)
            size = err.tell()
            err.seek(max(0, size - STDERR_TAIL))
            stderr = err.read()
        return stdout, stderr


def _at_memory_limit(store: wasmtime.Store, instance: wasmtime.Instance | None, limit: int) -> bool:
    if instance is None:
        return False
    memory = export_get(store, instance, "memory")
    if not isinstance(memory, wasmtime.Memory):
        return False
    return memory.data_len(store) + _WASM_PAGE > limit


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else "unknown error"
