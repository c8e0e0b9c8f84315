"""The wws kit contract for compiled workers: the request as JSON on stdin,
the response as JSON on stdout (``runner/executors/kit_protocol.py``), WASI with the worker's
``[vars]`` and ``[[folders]]``, outbound HTTP through the host import."""

from __future__ import annotations

import wasmtime

from ipc.messages import FailureKind, Invoke, WorkerSpec
from runner import failures
from runner.engines.http_import import RequestContext
from runner.engines.wasmffi import (
    EnvArrays,
    call_no_args,
    instantiate,
    memory_size,
    raw_export,
    set_stdin_bytes,
)
from runner.executors.base import Execution, GuestFiles, Response, outbound_deadline
from runner.executors.kit_protocol import BadOutput, parse_response, request_json
from runner.failures import GuestFailure


class KitExecutor:
    """Runs one compiled wws worker's requests (see :mod:`runner.executors.base`)."""

    def __init__(
        self, spec: WorkerSpec, instance_pre: wasmtime.InstancePre, entry: str | None, http: RequestContext
    ) -> None:
        self._spec = spec
        self._pre = instance_pre
        self._entry = entry  # "_start" (command), "_initialize" (reactor) or None
        self._http = http
        self._env = EnvArrays(list(spec.variables.items()))

    def execute(self, store: wasmtime.Store, invoke: Invoke, files: GuestFiles) -> Execution:
        wasi = wasmtime.WasiConfig()
        self._env.apply(wasi)
        wasi.stdout_file = files.stdout_path
        wasi.stderr_file = files.stderr_path
        for mount in self._spec.mounts:
            # Read-only unless the TOML says writable: writes fail with EPERM.
            wasi.preopen_dir(mount.host_path, mount.guest_path, mount.writable)
        set_stdin_bytes(wasi, request_json(invoke))
        store.set_wasi(wasi)
        self._http.start(self._spec.http, outbound_deadline(invoke))
        instance = None
        error: BaseException | None = None
        try:
            # Raw calls: the wrapper objects cost more than instantiating.
            instance = instantiate(self._pre, store)
            if self._entry is not None:
                # _start/_initialize take and return nothing (checked at load).
                call_no_args(store, raw_export(store, instance, self._entry))
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            error = exc
        stdout, stderr = files.read()
        outbound = self._http.outbound_requests
        if error is not None and failures.classify(error) is not None:  # not proc_exit(0)
            size = None if instance is None else memory_size(store, instance)
            return Execution(None, error, size, stderr, outbound)
        try:
            parsed = parse_response(stdout, files.max_output)
        except BadOutput as exc:
            size = None if instance is None else memory_size(store, instance)
            return Execution(None, GuestFailure(FailureKind.BAD_OUTPUT, str(exc)), size, stderr, outbound)
        response = Response(parsed.status, parsed.headers, parsed.body)
        return Execution(response, logs=stderr, outbound_requests=outbound, kv=parsed.kv)
