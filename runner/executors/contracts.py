"""Where executors are chosen for compiled modules: one line per contract.
A module none of them claims speaks the wws kit protocol (``runner/executors/kit.py``);
scripts get theirs in ``runner/engines/modules.py`` (JavaScript, Python, Ruby)."""

from __future__ import annotations

import wasmtime

from ipc.messages import WorkerSpec
from runner.executors.base import Executor
from runner.executors.serverless import HandleExecutor, is_handle_module
from runner.executors.wagi import WagiExecutor, WagiLinker

_wagi_linkers: dict[int, WagiLinker] = {}


def executor_for(spec: WorkerSpec, module: wasmtime.Module, engine: wasmtime.Engine) -> Executor | None:
    """The executor for ``spec``, or None for a wws kit worker.

    Raises:
        LoadError: the module does not fit its contract (imports, exports).
    """
    if spec.kind == "wagi":
        linker = _wagi_linkers.get(id(engine))
        if linker is None:
            linker = _wagi_linkers[id(engine)] = WagiLinker(engine)
        return WagiExecutor(spec, module, linker)
    # In a wws folder, a module that builds its response through host calls.
    if spec.kind == "handle" or (spec.kind in ("wasm", "wat") and is_handle_module(module)):
        return HandleExecutor(spec, module, engine)
    return None
