"""``python -m runner.wagi_probe``: check WAGI and serverless-wasm modules at
startup and run WAGI's ``_routes`` exports, in a child process (the supervisor
never runs guest code), so the supervisor can name the config line at fault.

Input on stdin, one JSON object: ``{"fuel", "memory_bytes", "timeout_ms",
"modules": [{"path", "kind", "entrypoints"}]}`` (kind "wagi" or "handle").
Output on stdout, one JSON array with one ``{"routes": text-or-null,
"callable": [names], "error": one-line-or-null}`` per module: ``routes`` is
what ``_routes`` printed, null without such an export; ``callable`` the
exports a sub-route may name. As in WAGI, ``_routes`` runs with stdout only
(no args, environment, stdin or volumes), but under the request limits.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import wasmtime

from runner.engines.epoch import EpochTicker
from runner.engines.modules import LoadError
from runner.engines.wasmffi import RawFunc, raw_export
from runner.executors.serverless import check_function, memory_limits
from runner.executors.wagi import WagiLinker, check_entrypoints
from runner.failures import classify, first_line

_TICK_MS = 10
_MAX_ROUTES_OUTPUT = 1 << 20


def _compile(engine: wasmtime.Engine, path: str) -> wasmtime.Module:
    try:
        source = Path(path).read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read the module: {exc.strerror}") from None
    try:
        if source.startswith(b"\0asm"):
            return wasmtime.Module(engine, source)
        return wasmtime.Module(engine, source.decode("utf-8", "replace"))
    except wasmtime.WasmtimeError as exc:
        raise LoadError(f"invalid WebAssembly module: {first_line(str(exc))}") from None


def probe(
    engine: wasmtime.Engine,
    linker: WagiLinker,
    ticker: EpochTicker,
    limits: dict[str, Any],
    entry: dict[str, Any],
) -> tuple[str | None, list[str]]:
    """What ``_routes`` printed (None without one), and the exports that take
    and return nothing.

    Raises:
        LoadError: unreadable or invalid module, missing entrypoint, unknown
            import, or a ``_routes`` that fails or prints something not UTF-8.
    """
    module = _compile(engine, entry["path"])
    if entry["kind"] == "handle":
        memory_limits(module)
        check_function(module, entry["entrypoints"][0])
        return None, []
    check_entrypoints(module, entry["entrypoints"])
    pre = linker.instantiate_pre(module)
    callable_ = sorted(
        export.name
        for export in module.exports
        if isinstance(export.type, wasmtime.FuncType)
        and not list(export.type.params)
        and not list(export.type.results)
    )
    if "_routes" not in callable_:
        return None, callable_
    with tempfile.TemporaryDirectory() as scratch:
        stdout = os.path.join(scratch, "stdout")
        store = wasmtime.Store(engine)
        store.set_fuel(limits["fuel"])
        store.set_limits(memory_size=limits["memory_bytes"], instances=4, tables=4, memories=1)
        store.set_epoch_deadline(ticker.ticks_for(limits["timeout_ms"]))
        wasi = wasmtime.WasiConfig()
        wasi.stdout_file = stdout
        store.set_wasi(wasi)
        ticker.request_started()
        try:
            instance = pre.instantiate(store)
            RawFunc(store, raw_export(store, instance, "_routes"), (), None)()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            failed = classify(exc)
            if failed is not None:
                raise LoadError(f"the _routes export failed: {failed[0]}: {failed[1]}") from None
        finally:
            ticker.request_finished()
        with open(stdout, "rb") as out:
            printed = out.read(_MAX_ROUTES_OUTPUT + 1)
    if len(printed) > _MAX_ROUTES_OUTPUT:
        raise LoadError(f"the _routes export printed more than {_MAX_ROUTES_OUTPUT} bytes")
    try:
        return printed.decode("utf-8"), callable_
    except UnicodeDecodeError:
        raise LoadError("the _routes export printed text that is not UTF-8") from None


def main() -> int:
    request = json.load(sys.stdin)
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = WagiLinker(engine)
    ticker = EpochTicker(engine, _TICK_MS)
    results: list[dict[str, Any]] = []
    for entry in request["modules"]:
        try:
            routes = probe(engine, linker, ticker, request, entry)
        except LoadError as exc:
            results.append({"routes": None, "callable": [], "error": str(exc)})
        else:
            results.append({"routes": routes[0], "callable": routes[1], "error": None})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown (wasmtime's threads), as the runner does
