"""The WAGI executor: a WASI command run as a CGI script.

Per request: a fresh instance (in the sandbox's fresh, limited Store) with the
CGI environment (:mod:`runner.executors.cgi`), argv from the path and query, the body
on stdin, stdout captured and parsed as a CGI response, stderr relayed to the
supervisor's log, the module's volumes preopened, and WAGI's outbound HTTP
functions (:mod:`runner.engines.wagi_http`) under the module's ``allowed_hosts``.

Unlike WAGI 0.8.1, a module that printed a valid response and then called
``proc_exit(0)`` succeeds; any other exit code is the ``exit`` failure.
"""

from __future__ import annotations

import logging
import time

import wasmtime

from ipc.cgi import CgiParamsError, CgiRequest
from ipc.messages import FailureKind, Invoke, WorkerSpec
from runner.engines.modules import LoadError
from runner.engines.wagi_http import WagiHttp
from runner.engines.wasmffi import RawFunc, export_get, raw_export, set_stdin_bytes
from runner.executors import cgi
from runner.executors.base import Execution, GuestFiles
from runner.failures import GuestFailure, first_line

log = logging.getLogger("runner.executors.wagi")


def check_entrypoints(module: wasmtime.Module, names: list[str]) -> None:
    """Raises:
    LoadError: an entrypoint is not exported, or is not a function
        taking and returning nothing."""
    exports = {export.name: export.type for export in module.exports}
    for name in names:
        found = exports.get(name)
        if found is None:
            raise LoadError(f"the entrypoint {name!r} is not exported by the module")
        if not isinstance(found, wasmtime.FuncType) or list(found.params) or list(found.results):
            raise LoadError(f"the entrypoint {name!r} must be a function with no parameters and no results")


class WagiLinker:
    """WASI plus ``wasi_experimental_http``: one per engine, shared by every
    WAGI worker of a runner (requests run one at a time)."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.http = WagiHttp()
        self.linker = wasmtime.Linker(engine)
        self.linker.define_wasi()
        self.http.define(self.linker)

    def instantiate_pre(self, module: wasmtime.Module) -> wasmtime.InstancePre:
        """Raises:
        LoadError: an import neither WASI nor WAGI provides."""
        try:
            return self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"cannot link the module: {first_line(str(exc))}") from None


class WagiExecutor:
    def __init__(self, spec: WorkerSpec, module: wasmtime.Module, linker: WagiLinker) -> None:
        check_entrypoints(module, spec.entrypoints or ["_start"])
        # Sub-routes found by _routes name their own entrypoints: any export
        # that takes and returns nothing can be one.
        self._callable = {
            export.name
            for export in module.exports
            if isinstance(export.type, wasmtime.FuncType)
            and not list(export.type.params)
            and not list(export.type.results)
        }
        self._spec = spec
        self._pre = linker.instantiate_pre(module)
        self._http = linker.http

    def execute(self, store: wasmtime.Store, invoke: Invoke, files: GuestFiles) -> Execution:
        spec = self._spec
        try:
            request = CgiRequest.from_params(invoke.params)
        except CgiParamsError as exc:
            return Execution(None, GuestFailure(FailureKind.INTERNAL, str(exc)))
        if request.entrypoint not in self._callable:
            detail = f"the entrypoint {request.entrypoint!r} is not an export without parameters"
            return Execution(None, GuestFailure(FailureKind.INTERNAL, detail))
        wasi = wasmtime.WasiConfig()
        wasi.argv = cgi.argv(request, spec.argv)
        wasi.env = cgi.environment(request, invoke.method, invoke.headers, len(invoke.body), spec.variables)
        set_stdin_bytes(wasi, invoke.body)
        wasi.stdout_file = files.stdout_path
        wasi.stderr_file = files.stderr_path
        for mount in spec.mounts:
            wasi.preopen_dir(mount.host_path, mount.guest_path, mount.writable)
        store.set_wasi(wasi)
        self._http.start(spec.http, spec.max_outbound, time.monotonic() + invoke.timeout_ms / 1000)
        instance: wasmtime.Instance | None = None
        error: BaseException | None = None
        try:
            instance = self._pre.instantiate(store)
            RawFunc(store, raw_export(store, instance, request.entrypoint), (), None)()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if not (isinstance(exc, wasmtime.ExitTrap) and exc.code == 0):
                error = exc
        finally:
            self._http.finish()
        stdout, stderr = files.read()
        size = _memory_size(store, instance)
        outbound = self._http.requests
        if error is not None:
            return Execution(None, error, size, stderr, outbound)
        try:
            response, notes = cgi.parse_response(stdout, files.max_output)
        except GuestFailure as exc:
            return Execution(None, exc, size, stderr, outbound)
        logs = stderr + "".join(f"{note}\n" for note in notes).encode("utf-8", "replace")
        return Execution(response, None, size, logs, outbound)


def _memory_size(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int | None:
    if instance is None:
        return None
    memory = export_get(store, instance, "memory")
    return memory.data_len(store) if isinstance(memory, wasmtime.Memory) else None
