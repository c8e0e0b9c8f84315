"""The serverless-wasm executor: a module exporting ``handle`` (or any named
function) that builds its response through host calls.

The host ABI is serverless-wasm's: functions imported from ``env``, sizes as
i64, pointers as i32 into the linear memory the module imports as
``env.memory`` (a fresh one per request, with the import's limits, counted
against the request's memory limit). ``log`` goes to the supervisor's log,
``db_get`` reads the application's ``env`` table, and the TCP calls reach only
``host:port`` targets on the application's ``tcp_allowed`` list, bounded by
the request's deadline and :data:`TCP_MAX_BYTES`.

Where serverless-wasm panics (bad pointers, invalid UTF-8) the request traps
or is bad output instead; it never takes anything else down.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from ipc.messages import FailureKind, Invoke, WorkerSpec
from runner.engines.modules import LoadError
from runner.engines.wasmffi import export_get
from runner.executors.base import Execution, GuestFiles, Response
from runner.failures import GuestFailure

# The response-building import that marks a wws-folder .wasm as a handle module.
MARKER_IMPORT = "response_set_body"
TCP_MAX_BYTES = 16 << 20  # read plus written, per request
TCP_MAX_SOCKETS = 16
_MAX_LOG_BYTES = 64 << 10
_MAX_HEADERS = 256
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")

_I32, _I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
# name -> (params, results), exactly as serverless-wasm checks them.
SIGNATURES: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "log": ([_I32, _I64], []),
    "response_set_status_line": ([_I32, _I32, _I64], []),
    "response_set_header": ([_I32, _I64, _I32, _I64], []),
    "response_set_body": ([_I32, _I64], []),
    "tcp_connect": ([_I32, _I64], [_I32]),
    "tcp_read": ([_I32, _I32, _I64], [_I64]),
    "tcp_write": ([_I32, _I32, _I64], [_I64]),
    "db_get": ([_I32, _I64, _I32, _I64], [_I64]),
}


def is_handle_module(module: wasmtime.Module) -> bool:
    return any(item.module == "env" and item.name == MARKER_IMPORT for item in module.imports)


def _describe(types: list[wasmtime.ValType]) -> str:
    return "(" + ", ".join(str(t) for t in types) + ")"


def memory_limits(module: wasmtime.Module) -> tuple[int, int | None]:
    """The pages the module's ``env.memory`` import asks for, after checking
    every import against the ABI.

    Raises:
        LoadError: an import from another module, an unknown name, a
            wrong signature, or no ``env.memory`` import.
    """
    limits: tuple[int, int | None] | None = None
    for item in module.imports:
        where = f"{item.module}.{item.name}"
        kind = item.type
        if item.module != "env":
            raise LoadError(f"unknown import {where}: serverless-wasm modules import only from env")
        if item.name == "memory":
            if not isinstance(kind, wasmtime.MemoryType) or kind.is_64 or kind.is_shared:
                raise LoadError("env.memory must be a 32-bit, non-shared memory")
            limits = (kind.limits.min, kind.limits.max)
            continue
        expected = SIGNATURES.get(item.name or "")
        if expected is None:
            raise LoadError(f"unknown import {where}: the host provides {', '.join(SIGNATURES)} and memory")
        params, results = expected
        if (
            not isinstance(kind, wasmtime.FuncType)
            or [str(t) for t in kind.params] != [str(t) for t in params]
            or [str(t) for t in kind.results] != [str(t) for t in results]
        ):
            raise LoadError(
                f"import {where} has the wrong type: expected {_describe(params)} -> {_describe(results)}"
            )
    if limits is None:
        raise LoadError(
            "the module does not import env.memory: serverless-wasm modules must import their "
            "memory (link with --import-memory)"
        )
    return limits


class _Request:
    """What one request's host calls build up, and its open sockets."""

    def __init__(self, spec: WorkerSpec, memory: wasmtime.Memory, deadline: float) -> None:
        self.spec, self.memory, self.deadline = spec, memory, deadline
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.body: bytes | None = None
        self.logs = bytearray()
        self.failure: GuestFailure | None = None
        self.sockets: list[socket.socket | None] = []
        self.tcp_bytes = 0

    def note(self, text: str) -> None:
        line = f"{self.spec.worker_id}: {text}\n".encode("utf-8", "replace")
        if len(self.logs) + len(line) <= _MAX_LOG_BYTES:
            self.logs += line

    def fail(self, kind: FailureKind, detail: str) -> wasmtime.Trap:
        self.failure = GuestFailure(kind, detail)
        return wasmtime.Trap(detail)

    def remaining(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail(FailureKind.TIMEOUT, f"the request's deadline passed during {what}")
        return left

    def close(self) -> None:
        for sock in self.sockets:
            if sock is not None:
                sock.close()


def check_function(module: wasmtime.Module, function: str) -> None:
    """Raises:
    LoadError: ``function`` is not exported, or takes parameters."""
    exported = {export.name: export.type for export in module.exports}.get(function)
    if exported is None:
        raise LoadError(f"the function {function!r} is not exported by the module")
    if not isinstance(exported, wasmtime.FuncType) or list(exported.params):
        raise LoadError(f"the export {function!r} must be a function with no parameters")


class HandleExecutor:
    def __init__(self, spec: WorkerSpec, module: wasmtime.Module, engine: wasmtime.Engine) -> None:
        self._min_pages, self._max_pages = memory_limits(module)
        function = spec.entrypoints[0] if spec.entrypoints else "handle"
        check_function(module, function)
        self._spec, self._module, self._function = spec, module, function
        self._current: _Request | None = None
        self._linker = wasmtime.Linker(engine)
        # env.memory is redefined for every request's store.
        self._linker.allow_shadowing = True
        for name, (params, results) in SIGNATURES.items():
            impl = getattr(self, f"_{name}")
            self._linker.define_func(
                "env", name, wasmtime.FuncType(params, results), self._host(name, impl), access_caller=True
            )

    def execute(self, store: wasmtime.Store, invoke: Invoke, files: GuestFiles) -> Execution:
        limits = wasmtime.Limits(self._min_pages, self._max_pages)
        try:
            memory = wasmtime.Memory(store, wasmtime.MemoryType(limits))
        except wasmtime.WasmtimeError as exc:
            return Execution(None, exc)
        request = _Request(self._spec, memory, time.monotonic() + invoke.timeout_ms / 1000)
        self._current = request
        error: BaseException | None = None
        try:
            self._linker.define(store, "env", "memory", memory)
            instance = self._linker.instantiate(store, self._module)
            func = export_get(store, instance, self._function)
            assert isinstance(func, wasmtime.Func)  # checked at load
            func(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            error = request.failure or exc
        finally:
            self._current = None
            request.close()
        size = memory.data_len(store)
        logs = bytes(request.logs)
        if error is None and request.status is None and request.body is None:
            error = GuestFailure(FailureKind.BAD_OUTPUT, "the function set neither a status nor a body")
        if error is not None:
            return Execution(None, error, size, logs)
        # A status without a body, or a body without a status, is completed.
        response = Response(request.status or 200, request.headers, request.body or b"")
        return Execution(response, None, size, logs)

    def _host(self, name: str, impl: Callable[..., int | None]) -> Callable[..., Any]:
        def call(caller: wasmtime.Caller, *args: int) -> int | None:
            request = self._current
            if request is None:  # a start function calling in before the request began
                raise wasmtime.Trap(f"env.{name} called while no request runs")
            return impl(request, caller, *args)

        return call

    def _read(self, request: _Request, caller: wasmtime.Caller, pointer: int, length: int) -> bytes:
        start = pointer & 0xFFFFFFFF
        if length < 0 or start + length > request.memory.data_len(caller):
            raise request.fail(FailureKind.TRAP, "a pointer or length passed to the host is out of bounds")
        return bytes(request.memory.read(caller, start, start + length)) if length else b""

    def _text(self, request: _Request, caller: wasmtime.Caller, pointer: int, length: int, what: str) -> str:
        try:
            return self._read(request, caller, pointer, length).decode("utf-8")
        except UnicodeDecodeError:
            raise request.fail(FailureKind.BAD_OUTPUT, f"the {what} is not UTF-8") from None

    def _log(self, request: _Request, caller: wasmtime.Caller, pointer: int, length: int) -> None:
        data = self._read(request, caller, pointer, min(length, _MAX_LOG_BYTES))
        request.note(data.decode("utf-8", "replace"))

    def _response_set_status_line(
        self, request: _Request, caller: wasmtime.Caller, status: int, pointer: int, length: int
    ) -> None:
        status &= 0xFFFFFFFF
        self._text(
            request, caller, pointer, length, "reason phrase"
        )  # checked, not sent (HTTP/1.1 ignores it)
        if not 200 <= status <= 999:
            raise request.fail(
                FailureKind.BAD_OUTPUT, f"status {status} is not a final HTTP status (200-999)"
            )
        request.status = status

    def _response_set_header(self, request: _Request, caller: wasmtime.Caller, *args: int) -> None:
        name = self._text(request, caller, args[0], args[1], "header name")
        value = self._text(request, caller, args[2], args[3], "header value").strip(" \t")
        value = value.encode("utf-8").decode("latin-1")  # keep the module's bytes
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise request.fail(FailureKind.BAD_OUTPUT, f"invalid header {name[:80]!r}")
        if len(request.headers) >= _MAX_HEADERS:
            raise request.fail(FailureKind.BAD_OUTPUT, f"more than {_MAX_HEADERS} headers")
        request.headers.append([name, value])

    def _response_set_body(
        self, request: _Request, caller: wasmtime.Caller, pointer: int, length: int
    ) -> None:
        request.body = self._read(request, caller, pointer, length)

    def _db_get(self, request: _Request, caller: wasmtime.Caller, *args: int) -> int:
        key = self._read(request, caller, args[0], args[1]).decode("utf-8", "replace")
        value = request.spec.variables.get(key)
        if value is None:
            return -1
        data = value.encode()
        capacity = max(0, args[3])
        self._write(request, caller, args[2], data[:capacity])
        return len(data)

    def _write(self, request: _Request, caller: wasmtime.Caller, pointer: int, data: bytes) -> None:
        start = pointer & 0xFFFFFFFF
        if start + len(data) > request.memory.data_len(caller):
            raise request.fail(FailureKind.TRAP, "a buffer passed to the host is out of bounds")
        if data:
            request.memory.write(caller, data, start)

    def _tcp_connect(self, request: _Request, caller: wasmtime.Caller, pointer: int, length: int) -> int:
        target = self._text(request, caller, pointer, length, "TCP address").strip()
        if target not in request.spec.tcp_allowed:
            request.note(f"tcp_connect to {target!r} refused: not in this application's tcp_allowed list")
            return -1
        if len(request.sockets) >= TCP_MAX_SOCKETS:
            return -2
        host, _, port = target.rpartition(":")
        timeout = request.remaining("tcp_connect")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        except TimeoutError:
            raise request.fail(
                FailureKind.TIMEOUT, f"tcp_connect to {target} did not finish by the deadline"
            ) from None
        except (OSError, ValueError) as exc:
            request.note(f"tcp_connect to {target} failed: {exc}")
            return -1
        request.sockets.append(sock)
        return len(request.sockets) - 1

    def _socket(self, request: _Request, fd: int) -> socket.socket | None:
        return request.sockets[fd] if 0 <= fd < len(request.sockets) else None

    def _tcp_read(
        self, request: _Request, caller: wasmtime.Caller, fd: int, pointer: int, length: int
    ) -> int:
        sock = self._socket(request, fd)
        if sock is None or length < 0:
            return -1
        room = TCP_MAX_BYTES - request.tcp_bytes
        if room <= 0:
            request.note(f"tcp_read refused: the request moved {TCP_MAX_BYTES} bytes over TCP")
            return -1
        self._write(request, caller, pointer, b"")  # check the pointer before waiting
        sock.settimeout(request.remaining("tcp_read"))
        try:
            data = sock.recv(min(length, room, 1 << 20))
        except TimeoutError:
            raise request.fail(
                FailureKind.TIMEOUT, "tcp_read: the peer sent nothing before the deadline"
            ) from None
        except OSError as exc:
            request.note(f"tcp_read failed: {exc}")
            return -1
        request.tcp_bytes += len(data)
        self._write(request, caller, pointer, data)
        return len(data)

    def _tcp_write(
        self, request: _Request, caller: wasmtime.Caller, fd: int, pointer: int, length: int
    ) -> int:
        sock = self._socket(request, fd)
        if sock is None:
            return -1
        data = self._read(request, caller, pointer, length)
        if request.tcp_bytes + len(data) > TCP_MAX_BYTES:
            request.note(f"tcp_write refused: the request would move over {TCP_MAX_BYTES} bytes over TCP")
            return -1
        sock.settimeout(request.remaining("tcp_write"))
        try:
            sent = sock.send(data)
        except TimeoutError:
            raise request.fail(
                FailureKind.TIMEOUT, "tcp_write: the peer took nothing before the deadline"
            ) from None
        except OSError as exc:
            request.note(f"tcp_write failed: {exc}")
            return -1
        request.tcp_bytes += sent
        return sent
