"""wws's outbound HTTP host import for compiled workers:
``(import "http" "send-http-request" (func (param i32 x 11)))``.

The ABI (the old wit-bindgen canonical ABI wws uses): the guest passes the
body, a list of header pairs, a method enum, params (ignored, as in wws) and
the URI, plus a 28-byte result area. The host allocates the response through
the guest's ``canonical_abi_realloc`` export and fills the result area:
byte 0 is 0 (ok) or 1 (error); ok: +4 body present, +8 body ptr, +12 body len,
+16 headers ptr, +20 headers len, +24 status (u16); error: +4 error kind
(:class:`runner.engines.outbound.HttpErrorKind`), +8 message ptr, +12 message len.
"""

from __future__ import annotations

import logging
import struct
import time

import wasmtime

from ipc.messages import HttpPolicy
from runner.engines.outbound import HttpErrorKind, OutboundError, send

log = logging.getLogger("runner.http")

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
_HOST_SIDE_ERROR = "There was an error processing the request on the host side."


class RequestContext:
    """What the host function needs to know about the request in flight
    (a runner runs one request at a time)."""

    def __init__(self) -> None:
        self.policy = HttpPolicy([], [], False)
        self.deadline = 0.0
        # Calls that reached runner.engines.outbound.send (the supervisor re-runs a
        # request on a KV conflict only when this stayed 0).
        self.outbound_requests = 0

    def start(self, policy: HttpPolicy, deadline: float) -> None:
        self.policy, self.deadline = policy, deadline
        self.outbound_requests = 0


class _GuestMemory:
    def __init__(self, caller: wasmtime.Caller) -> None:
        memory = caller.get("memory")
        realloc = caller.get("canonical_abi_realloc")
        if not isinstance(memory, wasmtime.Memory) or not isinstance(realloc, wasmtime.Func):
            raise ValueError("the worker does not export memory and canonical_abi_realloc")
        self._caller, self._memory, self._realloc = caller, memory, realloc

    def read(self, pointer: int, length: int) -> bytes:
        if length == 0:
            return b""
        if pointer < 0 or length < 0 or pointer + length > self._memory.data_len(self._caller):
            raise ValueError("a pointer passed to send-http-request is out of bounds")
        return bytes(self._memory.read(self._caller, pointer, pointer + length))

    def string(self, pointer: int, length: int) -> str:
        return self.read(pointer, length).decode("utf-8")

    def pairs(self, pointer: int, count: int) -> list[tuple[str, str]]:
        table = self.read(pointer, 16 * count)
        out = []
        for index in range(count):
            key_ptr, key_len, value_ptr, value_len = struct.unpack_from("<4I", table, 16 * index)
            out.append((self.string(key_ptr, key_len), self.string(value_ptr, value_len)))
        return out

    def alloc(self, data: bytes, align: int = 1) -> int:
        pointer = int(self._realloc(self._caller, 0, 0, align, max(1, len(data))))
        if not pointer:
            raise MemoryError("canonical_abi_realloc returned null")
        self._memory.write(self._caller, data, pointer)
        return pointer

    def write(self, pointer: int, data: bytes) -> None:
        self._memory.write(self._caller, data, pointer)


def define(linker: wasmtime.Linker, context: RequestContext) -> None:
    """Add ``http.send-http-request`` to ``linker``."""
    func_type = wasmtime.FuncType([wasmtime.ValType.i32()] * 11, [])

    def send_http_request(caller: wasmtime.Caller, *args: int) -> None:
        ret_ptr = args[10]
        # Host functions must never raise into wasmtime (it parks the exception
        # globally); every failure becomes wws's error result instead.
        try:
            guest = _GuestMemory(caller)
        except ValueError as exc:
            log.warning("send-http-request unusable: %s", exc)
            raise wasmtime.Trap(str(exc)) from None
        try:
            result = _call(guest, context, args)
        except OutboundError as exc:
            result = _error(guest, exc.kind, exc.message)
        except (ValueError, UnicodeDecodeError) as exc:
            result = _error(guest, HttpErrorKind.INVALID_REQUEST, str(exc))
        except Exception:
            log.exception("send-http-request failed on the host side")
            result = _error(guest, HttpErrorKind.INTERNAL_ERROR, _HOST_SIDE_ERROR)
        guest.write(ret_ptr, result)

    linker.define_func("http", "send-http-request", func_type, send_http_request, access_caller=True)


def _call(guest: _GuestMemory, context: RequestContext, args: tuple[int, ...]) -> bytes:
    # Parameter order of wws's ABI; params (6, 7) are ignored, as in wws.
    body_is_some, body_ptr, body_len, headers_ptr, headers_len, method, _, _, uri_ptr, uri_len, _ = args
    if not 0 <= method < len(METHODS):
        raise OutboundError(HttpErrorKind.INVALID_REQUEST, f"unknown method {method}")
    uri = guest.string(uri_ptr, uri_len)
    headers = guest.pairs(headers_ptr, headers_len)
    body = guest.read(body_ptr, body_len) if body_is_some else None
    started = time.monotonic()
    context.outbound_requests += 1
    response = send(context.policy, METHODS[method], uri, headers, body, context.deadline)
    elapsed_ms = (time.monotonic() - started) * 1000
    log.debug("outbound %s %s -> %d in %.1f ms", METHODS[method], uri, response.status, elapsed_ms)
    table = bytearray()
    for name, value in response.headers:
        key, val = name.encode(), value.encode("utf-8", "replace")
        table += struct.pack("<4I", guest.alloc(key), len(key), guest.alloc(val), len(val))
    headers_at = guest.alloc(bytes(table), align=4) if table else 0
    body_at = guest.alloc(response.body)
    fields = (0, 1, body_at, len(response.body), headers_at, len(response.headers), response.status)
    return struct.pack("<B3xIIIIIH2x", *fields)


def _error(guest: _GuestMemory, kind: HttpErrorKind, message: str) -> bytes:
    encoded = message.encode()
    try:
        pointer = guest.alloc(encoded)
    except Exception:
        pointer, encoded = 0, b""
    return struct.pack("<B3xIII12x", 1, int(kind), pointer, len(encoded))
