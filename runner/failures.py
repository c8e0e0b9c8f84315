"""The one place that turns what ended a guest's request (a trap, a wasmtime
error, an exit, a contract violation) into a :class:`FailureKind`."""

from __future__ import annotations

import wasmtime

from ipc.messages import FailureKind

_WASM_PAGE = 65536

# wasmtime's trap codes that mean "a limit was hit", not "the guest is broken".
_TRAP_KINDS = {
    wasmtime.TrapCode.OUT_OF_FUEL: FailureKind.OUT_OF_FUEL,
    wasmtime.TrapCode.INTERRUPT: FailureKind.TIMEOUT,
}


class GuestFailure(Exception):
    """A request failed in a way its contract defines: output the contract
    cannot turn into a response, a host call past its deadline, ...; raised by
    executors and host functions, classified as its own ``kind``."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def classify(exc: BaseException) -> tuple[FailureKind, str] | None:
    """The failure ``exc`` stands for, or None for ``proc_exit(0)`` (a clean
    exit is not a failure; what the guest wrote before it still counts)."""
    if isinstance(exc, GuestFailure):
        return exc.kind, exc.detail
    if isinstance(exc, wasmtime.ExitTrap):
        if exc.code == 0:
            return None
        return FailureKind.EXIT, f"the worker exited with code {exc.code}"
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        kind = _TRAP_KINDS.get(code, FailureKind.TRAP) if code is not None else FailureKind.TRAP
        return kind, f"wasm trap: {code.name.lower() if code is not None else first_line(str(exc))}"
    message = first_line(str(exc))
    memory = "memory" in message and "limit" in message
    return (FailureKind.MEMORY_LIMIT if memory else FailureKind.TRAP), message


def near_memory_limit(size: int | None, limit: int) -> bool:
    """Whether a guest whose linear memory ended at ``size`` bytes most likely
    failed because a ``memory.grow`` was refused.

    A refused grow leaves no trace we can read (the store limiter has no
    callback in the C API), so judge by size. Allocators grow in steps of many
    pages: by the request (dlmalloc, Rust), by its power of two (Zig), or by
    doubling the heap (AssemblyScript, TinyGo). So one that aborted with over
    half the limit in use most likely had its grow refused.
    """
    if size is None:
        return False
    return size + _WASM_PAGE > limit or size > limit // 2
