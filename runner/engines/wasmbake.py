"""Splitting an interpreter module from its memory, and heaps as tiny modules.

An interpreter such as QuickJS is about 1 MB of code; a worker's own state is
its initialised linear memory. Baking each worker's memory into a full copy of
the interpreter made every worker pay a full compile (over a second) and carry
its own machine code. Instead:

* :func:`split_memory` rewrites the interpreter ONCE so that it *imports* its
  linear memory (``wws.memory``) and carries no data segments of its own; it
  is compiled once per interpreter version and shared by every worker;
* :func:`heap_module` builds, per worker, a module with no code at all: one
  memory whose active data segments are the worker's heap snapshot, exported.
  Compiling it takes milliseconds, and wasmtime maps it copy-on-write from the
  compiled file, so a fresh instance starts where the snapshot was taken.

Per request: instantiate the heap module, then the shared interpreter against
its memory. The interpreter's mutable globals are exported by the rewrite as
``__wws_global_<index>``, so the snapshot step can check that they are back at
their initial values (``__stack_pointer`` is, between calls) or record them.

Only what the rewrite needs is parsed. Custom sections (debug info, names) are
dropped.
"""

from __future__ import annotations

import dataclasses

_MAGIC = b"\x00asm\x01\x00\x00\x00"
_CUSTOM, _IMPORT, _MEMORY, _GLOBAL, _EXPORT, _DATA, _DATACOUNT = 0, 2, 5, 6, 7, 11, 12
_KIND_FUNC, _KIND_TABLE, _KIND_MEMORY, _KIND_GLOBAL = 0, 1, 2, 3
_I32, _I64 = 0x7F, 0x7E
_I32_CONST, _I64_CONST, _END = 0x41, 0x42, 0x0B
PAGE = 65536
MEMORY_IMPORT = ("wws", "memory")
GLOBAL_EXPORT_PREFIX = "__wws_global_"
_HOST_PAGE = 4096
_ZERO_PAGE = bytes(_HOST_PAGE)


class BakeError(ValueError):
    """The module uses something this rewrite does not handle."""


@dataclasses.dataclass(frozen=True, slots=True)
class MutableGlobal:
    export_name: str
    value_type: str  # "i32" or "i64"
    initial: int | None  # None when the initialiser is not a constant


@dataclasses.dataclass(frozen=True, slots=True)
class SplitModule:
    engine: bytes  # imports wws.memory, no data segments
    blank_heap: bytes  # the original memory and data segments, exported as "memory"
    min_pages: int
    max_pages: int | None
    mutable_globals: tuple[MutableGlobal, ...]


def _read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise BakeError("truncated module")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _read_sleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise BakeError("truncated module")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos


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


def _sleb32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _name(text: str) -> bytes:
    encoded = text.encode()
    return _uleb(len(encoded)) + encoded


def sections(module: bytes) -> list[tuple[int, bytes]]:
    if not module.startswith(_MAGIC):
        raise BakeError("not a core wasm module")
    pos, out = len(_MAGIC), []
    while pos < len(module):
        section_id = module[pos]
        size, start = _read_uleb(module, pos + 1)
        if start + size > len(module):
            raise BakeError("truncated module")
        out.append((section_id, module[start : start + size]))
        pos = start + size
    return out


def _section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(body)) + body


def _read_limits(data: bytes, pos: int) -> tuple[int, int | None, int]:
    flags = data[pos]
    if flags not in (0, 1):
        raise BakeError("shared or 64-bit memories are not supported")
    minimum, pos = _read_uleb(data, pos + 1)
    maximum = None
    if flags == 1:
        maximum, pos = _read_uleb(data, pos)
    return minimum, maximum, pos


def _limits(minimum: int, maximum: int | None) -> bytes:
    if maximum is None:
        return b"\x00" + _uleb(minimum)
    return b"\x01" + _uleb(minimum) + _uleb(maximum)


def _memory(body: bytes) -> tuple[int, int | None]:
    count, pos = _read_uleb(body, 0)
    if count != 1:
        raise BakeError("expected exactly one memory")
    minimum, maximum, _ = _read_limits(body, pos)
    return minimum, maximum


def _imported_globals(body: bytes) -> int:
    """How many globals the import section brings in (they come first in the
    global index space); rejects a module that already imports a memory."""
    count, pos = _read_uleb(body, 0)
    globals_seen = 0
    for _ in range(count):
        for _field in range(2):
            length, pos = _read_uleb(body, pos)
            pos += length
        kind = body[pos]
        pos += 1
        if kind == _KIND_FUNC:
            _, pos = _read_uleb(body, pos)
        elif kind == _KIND_TABLE:
            _, _, pos = _read_limits(body, pos + 1)
        elif kind == _KIND_MEMORY:
            raise BakeError("the module already imports a memory")
        elif kind == _KIND_GLOBAL:
            globals_seen += 1
            pos += 2
        else:
            raise BakeError(f"unknown import kind {kind}")
    return globals_seen


def _mutable_globals(body: bytes, first_index: int) -> list[tuple[int, MutableGlobal]]:
    count, pos = _read_uleb(body, 0)
    found = []
    for local in range(count):
        value_type, mutable = body[pos], body[pos + 1]
        pos += 2
        initial: int | None = None
        opcode = body[pos]
        if opcode in (_I32_CONST, _I64_CONST):
            initial, pos = _read_sleb(body, pos + 1)
        while body[pos] != _END:  # any other constant expression: skip it
            pos += 1
        pos += 1
        if mutable:
            if value_type not in (_I32, _I64):
                raise BakeError("only i32 and i64 mutable globals can be carried")
            index = first_index + local
            kind = "i32" if value_type == _I32 else "i64"
            found.append((index, MutableGlobal(f"{GLOBAL_EXPORT_PREFIX}{index}", kind, initial)))
    return found


def _data_count(body: bytes) -> tuple[int, bool]:
    """Segment count, and whether any passive segment holds data. Empty
    passive segments (what Wizer leaves of the ones it applied) are kept:
    they behave like the dropped segments the rewrite leaves anyway."""
    count, pos = _read_uleb(body, 0)
    for _ in range(count):
        flag, pos = _read_uleb(body, pos)
        if flag == 2:
            _, pos = _read_uleb(body, pos)
        if flag != 1:  # constant offset expression: i32.const N end, or another
            if body[pos] == _I32_CONST:
                _, pos = _read_sleb(body, pos + 1)
            while body[pos] != _END:
                pos += 1
            pos += 1
        length, pos = _read_uleb(body, pos)
        if flag == 1 and length:
            return count, True
        pos += length
    return count, False


def split_memory(module: bytes) -> SplitModule:
    """Rewrite ``module`` to import its memory, and build the blank heap that
    holds its original memory and data.

    Raises:
        BakeError: not exactly one memory of its own, passive data segments,
            or mutable globals other than i32/i64.
    """
    parts = sections(module)
    by_id = {section_id: body for section_id, body in parts}
    if _MEMORY not in by_id:
        raise BakeError("the module defines no memory")
    minimum, maximum = _memory(by_id[_MEMORY])
    data = by_id.get(_DATA, b"\x00")
    segment_count, passive = _data_count(data)
    if passive:
        raise BakeError("modules with passive data segments holding data cannot be split")
    first_global = _imported_globals(by_id[_IMPORT]) if _IMPORT in by_id else 0
    mutable = _mutable_globals(by_id[_GLOBAL], first_global) if _GLOBAL in by_id else []
    memory_import = (
        _name(MEMORY_IMPORT[0]) + _name(MEMORY_IMPORT[1]) + bytes([_KIND_MEMORY]) + _limits(minimum, maximum)
    )
    extra_exports = b"".join(
        _name(g.export_name) + bytes([_KIND_GLOBAL]) + _uleb(index) for index, g in mutable
    )
    out = bytearray(_MAGIC)
    have_import = _IMPORT in by_id
    for section_id, body in parts:
        if section_id in (_CUSTOM, _MEMORY):
            continue
        if section_id > _IMPORT and section_id != _DATACOUNT and not have_import:
            out += _section(_IMPORT, _uleb(1) + memory_import)
            have_import = True
        if section_id == _IMPORT:
            count, pos = _read_uleb(body, 0)
            out += _section(_IMPORT, _uleb(count + 1) + body[pos:] + memory_import)
        elif section_id == _EXPORT:
            count, pos = _read_uleb(body, 0)
            out += _section(_EXPORT, _uleb(count + len(mutable)) + body[pos:] + extra_exports)
        elif section_id == _DATA:
            # Keep the segment count (a data count section may promise it):
            # empty passive segments behave like dropped active ones.
            out += _section(_DATA, _uleb(segment_count) + b"\x01\x00" * segment_count)
        else:
            out += _section(section_id, body)
    if _EXPORT not in by_id and mutable:
        raise BakeError("the module has no export section")
    blank = (
        _MAGIC
        + _section(_MEMORY, _uleb(1) + _limits(minimum, maximum))
        + _section(_EXPORT, _uleb(1) + _name("memory") + bytes([_KIND_MEMORY]) + _uleb(0))
        + _section(_DATA, data)
    )
    return SplitModule(bytes(out), blank, minimum, maximum, tuple(g for _, g in mutable))


def _runs(snapshot: bytes) -> list[tuple[int, int]]:
    # A fresh memory is zero-filled already: only runs of non-zero host pages
    # need segments. Whole pages cost nothing extra (wasmtime's copy-on-write
    # image is page-granular anyway) and comparing pages is far faster than
    # searching for zero runs byte by byte. Offsets only: the bytes are
    # sliced once, when the layout is chosen.
    runs: list[tuple[int, int]] = []
    view = memoryview(snapshot)
    start = None
    for offset in range(0, len(snapshot), _HOST_PAGE):
        empty = view[offset : offset + _HOST_PAGE] == _ZERO_PAGE
        if empty and start is not None:
            runs.append((start, offset))
            start = None
        elif not empty and start is None:
            start = offset
    if start is not None:
        runs.append((start, len(snapshot)))
    return runs


# wasmtime maps a module's data segments copy-on-write as one memory image
# only when the image is small (``Config.memory_guaranteed_dense_image_size``,
# 16 MiB by default) or dense: its span (first to last initialised byte) under
# twice the bytes the segments hold. Otherwise it copies every segment at each
# instantiation, in fuel-metered code: for a Ruby heap (27 MB of non-zero
# pages over a 59 MB span) that was 28 M fuel and 15-40 ms per request.
_ALWAYS_AN_IMAGE = 16 << 20


def _mapped_as_image(runs: list[tuple[int, int]]) -> bool:
    if not runs:
        return True
    span = runs[-1][1] - runs[0][0]
    return span <= _ALWAYS_AN_IMAGE or span < 2 * sum(end - start for start, end in runs)


def heap_module(snapshot: bytes, max_pages: int | None) -> bytes:
    """A module with no code: one memory holding ``snapshot`` (whole pages),
    exported as "memory", laid out so wasmtime maps it copy-on-write: one
    segment per run of non-zero pages, or, when those would be too sparse to
    be mapped, one segment over the whole non-zero span (zeros included: the
    cache file is written with holes, so they cost no disk).

    Raises:
        BakeError: the snapshot is not whole pages or is over ``max_pages``.
    """
    if len(snapshot) % PAGE:
        raise BakeError("snapshot must be whole pages")
    pages = len(snapshot) // PAGE
    if max_pages is not None and pages > max_pages:
        raise BakeError("snapshot is larger than the module's maximum memory")
    runs = _runs(snapshot)
    if not _mapped_as_image(runs):
        runs = [(runs[0][0], runs[-1][1])]
    segments = [(start, snapshot[start:end]) for start, end in runs]
    data = [_uleb(len(segments))]
    for offset, payload in segments:
        # Active segment for memory 0: flag 0, i32.const offset, end, bytes.
        data += [b"\x00\x41" + _sleb32(offset if offset < 2**31 else offset - 2**32) + b"\x0b"]
        data += [_uleb(len(payload)), payload]
    body_size = sum(len(part) for part in data)
    # Joined once: a heap may be tens of megabytes.
    return b"".join(
        (
            _MAGIC,
            _section(_MEMORY, _uleb(1) + _limits(pages, max_pages)),
            _section(_EXPORT, _uleb(1) + _name("memory") + bytes([_KIND_MEMORY]) + _uleb(0)),
            bytes([_DATA]),
            _uleb(body_size),
            *data,
        )
    )


def add_export(module: bytes, name: str, kind: int, index: int) -> bytes:
    """``module`` with one more export (``kind``: 0 function, 1 table,
    2 memory, 3 global), e.g. an interpreter's function table, which a
    snapshot's callers need and the build does not export.

    Raises:
        BakeError: the module has no export section.
    """
    parts = sections(module)
    if not any(section_id == _EXPORT for section_id, _ in parts):
        raise BakeError("the module has no export section")
    out = bytearray(_MAGIC)
    for section_id, body in parts:
        if section_id == _EXPORT:
            count, pos = _read_uleb(body, 0)
            body = _uleb(count + 1) + body[pos:] + _name(name) + bytes([kind]) + _uleb(index)
        out += _section(section_id, body)
    return bytes(out)
