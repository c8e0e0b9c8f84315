"""A heap snapshot as a code-free module that wasmtime maps copy-on-write
however sparse the heap is.

wasmtime turns a module's data segments into one memory image, mapped
copy-on-write at each instantiation, only when that image is small (under
``Config.memory_guaranteed_dense_image_size``, 16 MiB by default) or dense:
its span (first to last initialised byte) under twice the bytes the segments
hold. Otherwise it copies every segment at each instantiation, in compiled
wasm that burns fuel. :func:`runner.wasmbake.heap_module` writes one segment
per run of non-zero pages; for a Ruby heap (27 MB of them spread over a 59 MB
span) that fallback cost 28 M fuel and 15-40 ms per request. One segment
over the whole span is dense by construction.

The price is disk: the compiled image holds the whole span, zeros included
(59 MB for a Ruby hello worker instead of 28 MB). Memory is unaffected:
pages a request does not touch are never read.
"""

from __future__ import annotations

_MAGIC = b"\x00asm\x01\x00\x00\x00"
_MEMORY_SECTION, _EXPORT_SECTION, _DATA_SECTION = 5, 7, 11
_KIND_MEMORY = 2
_I32_CONST, _END = 0x41, 0x0B
WASM_PAGE = 65536
_HOST_PAGE = 4096
_ZERO_PAGE = bytes(_HOST_PAGE)


class DenseHeapError(ValueError):
    """The snapshot cannot be a heap module (size or alignment)."""


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(body)) + body


def _span(snapshot: bytes) -> tuple[int, int]:
    """The host pages from the first non-zero one to the last, as offsets."""
    view = memoryview(snapshot)
    pages = range(0, len(snapshot), _HOST_PAGE)
    # Only the two ends matter: what lies between is kept, zeros and all.
    first = next((o for o in pages if view[o : o + _HOST_PAGE] != _ZERO_PAGE), None)
    if first is None:
        return 0, 0
    last = next(o for o in reversed(pages) if view[o : o + _HOST_PAGE] != _ZERO_PAGE)
    return first, min(len(snapshot), last + _HOST_PAGE)


def dense_heap_module(snapshot: bytes, max_pages: int | None) -> bytes:
    """A module with no code: one memory of the snapshot's size, exported as
    "memory", whose one data segment holds the snapshot's non-zero span.

    Raises:
        DenseHeapError: the snapshot is not whole wasm pages, or larger than
            ``max_pages``.
    """
    if len(snapshot) % WASM_PAGE:
        raise DenseHeapError("a heap snapshot must be whole wasm pages")
    pages = len(snapshot) // WASM_PAGE
    if max_pages is not None and pages > max_pages:
        raise DenseHeapError("the snapshot is larger than the module's maximum memory")
    start, end = _span(snapshot)
    limits = b"\x01" + _uleb(pages) + _uleb(max_pages) if max_pages is not None else b"\x00" + _uleb(pages)
    payload = memoryview(snapshot)[start:end]
    data_head = _uleb(0)
    if end > start:
        # Active segment for memory 0: flag 0, (i32.const start) end, bytes.
        offset = start if start < 2**31 else start - 2**32
        data_head = _uleb(1) + b"\x00" + bytes([_I32_CONST]) + _sleb(offset) + bytes([_END])
        data_head += _uleb(len(payload))
    export = _uleb(1) + _uleb(len(b"memory")) + b"memory" + bytes([_KIND_MEMORY]) + _uleb(0)
    head = (
        _MAGIC
        + _section(_MEMORY_SECTION, _uleb(1) + limits)
        + _section(_EXPORT_SECTION, export)
        + bytes([_DATA_SECTION])
        + _uleb(len(data_head) + len(payload))
        + data_head
    )
    # One copy of a heap that may be tens of megabytes.
    return b"".join((head, payload))
