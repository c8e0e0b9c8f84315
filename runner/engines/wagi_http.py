"""WAGI's outbound HTTP host module, ``wasi_experimental_http`` (v0.10 ABI),
over the runner's outbound client (:mod:`runner.engines.outbound`: deadline, size cap,
redirects re-checked against the policy).

Every parameter and result is an i32; pointers refer to the guest's exported
``memory``. Functions return an error code (:class:`Err`), never trap for a
bad request. The allow-list is WAGI's: no ``allowed_hosts`` means nothing is
allowed, ``insecure:allow-all`` allows every host, and otherwise only the host
of each listed URL counts (scheme and port do not). Responses are read whole
when the request is made (bounded) and handed out by handle.
"""

from __future__ import annotations

import enum
import logging
import struct
from typing import Any

import wasmtime

from ipc.messages import HttpPolicy
from runner.engines.http_import import METHODS
from runner.engines.outbound import HttpErrorKind, OutboundError, OutboundResponse, send

log = logging.getLogger("runner.engines.wagi_http")

ALLOW_ALL = "insecure:allow-all"
_MODULE = "wasi_experimental_http"


class Err(enum.IntEnum):
    OK = 0
    INVALID_HANDLE = 1
    MEMORY_NOT_FOUND = 2
    MEMORY_ACCESS = 3
    BUFFER_TOO_SMALL = 4
    HEADER_NOT_FOUND = 5
    UTF8 = 6
    DESTINATION_NOT_ALLOWED = 7
    INVALID_METHOD = 8
    INVALID_ENCODING = 9
    INVALID_URL = 10
    REQUEST_ERROR = 11
    RUNTIME_ERROR = 12
    TOO_MANY_SESSIONS = 13


class _Fail(Exception):
    def __init__(self, code: Err) -> None:
        super().__init__(code.name)
        self.code = code


class _Open:
    def __init__(self, response: OutboundResponse) -> None:
        self.response = response
        self.offset = 0


class WagiHttp:
    """The state of the request in flight (a runner runs one at a time)."""

    def __init__(self) -> None:
        self._policy = HttpPolicy([], [], True)
        self._deadline = 0.0
        self._max_open = 0
        self._open: dict[int, _Open] = {}
        self._next = 0
        self.requests = 0

    def start(self, policy: HttpPolicy, max_open: int, deadline: float) -> None:
        self._policy, self._max_open, self._deadline = policy, max_open, deadline
        self._open.clear()
        self.requests = 0

    def finish(self) -> None:
        self._open.clear()

    def define(self, linker: wasmtime.Linker) -> None:
        """Add the five functions to ``linker``."""
        i32 = wasmtime.ValType.i32()
        table = {
            "req": (10, self._req),
            "close": (1, self._close),
            "body_read": (4, self._body_read),
            "header_get": (6, self._header_get),
            "headers_get_all": (4, self._headers_get_all),
        }
        for name, (arity, impl) in table.items():
            linker.define_func(
                _MODULE, name, wasmtime.FuncType([i32] * arity, [i32]), _guarded(impl), access_caller=True
            )

    def _req(self, memory: _Memory, *args: int) -> None:
        url_ptr, url_len, method_ptr, method_len, headers_ptr, headers_len, body_ptr, body_len = args[:8]
        status_out, handle_out = args[8], args[9]
        url = memory.text(url_ptr, url_len)
        method = memory.text(method_ptr, method_len).upper()
        if method not in METHODS:
            raise _Fail(Err.INVALID_METHOD)
        headers = []
        for line in memory.text(headers_ptr, headers_len).split("\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip():
                headers.append((name.strip(), value.strip()))
        body = memory.read(body_ptr, body_len) if body_len else None
        if self._max_open and len(self._open) >= self._max_open:
            raise _Fail(Err.TOO_MANY_SESSIONS)
        policy = self._policy
        if ALLOW_ALL in policy.allowed_hosts:
            from urllib.parse import urlsplit

            try:
                host = urlsplit(url).hostname or ""
            except ValueError:
                raise _Fail(Err.INVALID_URL) from None
            policy = HttpPolicy([host], list(METHODS), True)
        self.requests += 1
        try:
            response = send(policy, method, url, headers, body, self._deadline)
        except OutboundError as exc:
            log.info("outbound %s %s refused or failed: %s", method, url, exc.message)
            if exc.kind is HttpErrorKind.NOT_ALLOWED:
                raise _Fail(Err.DESTINATION_NOT_ALLOWED) from None
            if "invalid URI" in exc.message:
                raise _Fail(Err.INVALID_URL) from None
            raise _Fail(Err.REQUEST_ERROR) from None
        handle = self._next
        self._next += 1
        self._open[handle] = _Open(response)
        memory.write(status_out, struct.pack("<H", response.status))
        memory.write(handle_out, struct.pack("<I", handle))

    def _get(self, handle: int) -> _Open:
        found = self._open.get(handle & 0xFFFFFFFF)
        if found is None:
            raise _Fail(Err.INVALID_HANDLE)
        return found

    def _close(self, memory: _Memory, handle: int) -> None:
        self._get(handle)
        del self._open[handle & 0xFFFFFFFF]

    def _body_read(self, memory: _Memory, handle: int, buf_ptr: int, buf_len: int, nread_out: int) -> None:
        entry = self._get(handle)
        chunk = entry.response.body[entry.offset : entry.offset + (buf_len & 0xFFFFFFFF)]
        memory.write(buf_ptr, chunk)
        entry.offset += len(chunk)
        memory.write(nread_out, struct.pack("<I", len(chunk)))

    def _header_get(self, memory: _Memory, *args: int) -> None:
        handle, name_ptr, name_len, val_ptr, val_len, nwritten_out = args
        entry = self._get(handle)
        name = memory.text(name_ptr, name_len).lower()
        for key, value in entry.response.headers:
            if key == name:
                _write_bounded(memory, val_ptr, val_len, nwritten_out, value.encode("utf-8", "replace"))
                return
        raise _Fail(Err.HEADER_NOT_FOUND)

    def _headers_get_all(
        self, memory: _Memory, handle: int, buf_ptr: int, buf_len: int, nwritten_out: int
    ) -> None:
        entry = self._get(handle)
        text = "".join(f"{key}:{value}\n" for key, value in entry.response.headers)
        _write_bounded(memory, buf_ptr, buf_len, nwritten_out, text.encode("utf-8", "replace"))


def _write_bounded(memory: _Memory, pointer: int, capacity: int, nwritten_out: int, data: bytes) -> None:
    if len(data) > capacity & 0xFFFFFFFF:
        raise _Fail(Err.BUFFER_TOO_SMALL)
    memory.write(pointer, data)
    memory.write(nwritten_out, struct.pack("<I", len(data)))


class _Memory:
    def __init__(self, caller: wasmtime.Caller) -> None:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise _Fail(Err.MEMORY_NOT_FOUND)
        self._caller, self._memory = caller, memory

    def _span(self, pointer: int, length: int) -> tuple[int, int]:
        # i32 arguments arrive signed: pointers and lengths are unsigned.
        start, size = pointer & 0xFFFFFFFF, length & 0xFFFFFFFF
        if start + size > self._memory.data_len(self._caller):
            raise _Fail(Err.MEMORY_ACCESS)
        return start, size

    def read(self, pointer: int, length: int) -> bytes:
        start, size = self._span(pointer, length)
        return bytes(self._memory.read(self._caller, start, start + size)) if size else b""

    def text(self, pointer: int, length: int) -> str:
        try:
            return self.read(pointer, length).decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(Err.UTF8) from None

    def write(self, pointer: int, data: bytes) -> None:
        start, _ = self._span(pointer, len(data))
        if data:
            self._memory.write(self._caller, data, start)


def _guarded(impl: Any) -> Any:
    def call(caller: wasmtime.Caller, *args: int) -> int:
        # Host functions must not raise into wasmtime (it parks exceptions
        # globally): every failure is an error code for the guest.
        try:
            impl(_Memory(caller), *args)
        except _Fail as exc:
            return int(exc.code)
        except Exception:
            log.exception("wasi_experimental_http failed on the host side")
            return int(Err.RUNTIME_ERROR)
        return int(Err.OK)

    return call
