"""Baking a memory snapshot into a wasm module.

After QuickJS has initialised and evaluated a worker, its whole state is the
instance's linear memory (the only mutable global, ``__stack_pointer``, is back
at its initial value between calls). Writing that memory back into the module
as active data segments gives a module whose every fresh instance starts where
the snapshot was taken, copy-on-write and isolated, without re-running init.

Only what the rewrite needs is parsed: the memory section (minimum pages) and
the data section (replaced). Custom sections (debug info, names) are dropped.
"""

from __future__ import annotations

import re

_MAGIC = b"\x00asm\x01\x00\x00\x00"
_MEMORY, _DATA, _DATACOUNT, _CUSTOM = 5, 11, 12, 0
_PAGE = 65536
# Zero runs shorter than this stay inside a segment: fewer, larger segments
# instantiate faster than many tiny ones.
_MIN_GAP = 64
_ZERO_GAP = re.compile(rb"\x00{%d,}" % _MIN_GAP)


class BakeError(ValueError):
    pass


def _read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
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


def sections(module: bytes) -> list[tuple[int, bytes]]:
    if not module.startswith(_MAGIC):
        raise BakeError("not a core wasm module")
    pos, out = len(_MAGIC), []
    while pos < len(module):
        section_id = module[pos]
        size, start = _read_uleb(module, pos + 1)
        out.append((section_id, module[start : start + size]))
        pos = start + size
    return out


def _section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(body)) + body


def _memory_section(pages: int, original: bytes) -> bytes:
    count, pos = _read_uleb(original, 0)
    if count != 1:
        raise BakeError("expected exactly one memory")
    flags = original[pos]
    if flags not in (0, 1):
        raise BakeError("shared or 64-bit memories are not supported")
    _, pos = _read_uleb(original, pos + 1)
    body = _uleb(1) + bytes([flags]) + _uleb(pages)
    if flags == 1:
        maximum, _ = _read_uleb(original, pos)
        if maximum < pages:
            raise BakeError("snapshot is larger than the module's maximum memory")
        body += _uleb(maximum)
    return body


def _segments(snapshot: bytes) -> list[tuple[int, bytes]]:
    # A fresh memory is zero-filled already: only the runs between long zero
    # gaps need segments.
    segments: list[tuple[int, bytes]] = []
    pos = 0
    for gap in _ZERO_GAP.finditer(snapshot):
        if gap.start() > pos:
            segments.append((pos, snapshot[pos : gap.start()]))
        pos = gap.end()
    if pos < len(snapshot):
        segments.append((pos, snapshot[pos:]))
    return segments


def _data_section(snapshot: bytes) -> tuple[bytes, int]:
    segments = _segments(snapshot)
    body = bytearray(_uleb(len(segments)))
    for offset, payload in segments:
        # Active segment for memory 0: flag 0, i32.const offset, end, bytes.
        body += b"\x00\x41" + _sleb32(offset if offset < 2**31 else offset - 2**32) + b"\x0b"
        body += _uleb(len(payload)) + payload
    return bytes(body), len(segments)


def bake(module: bytes, snapshot: bytes) -> bytes:
    """``module`` with its memory replaced by ``snapshot`` (a whole number of pages).

    Raises:
        BakeError: the module uses features this rewrite does not handle
            (passive data segments, several memories).
    """
    if len(snapshot) % _PAGE:
        raise BakeError("snapshot must be whole pages")
    parts = sections(module)
    if any(section_id == _DATA and _has_passive(body) for section_id, body in parts):
        raise BakeError("modules with passive data segments cannot be baked")
    data_body, segment_count = _data_section(snapshot)
    out = bytearray(_MAGIC)
    wrote_data = False
    for section_id, body in parts:
        if section_id == _CUSTOM:
            continue
        if section_id == _MEMORY:
            out += _section(_MEMORY, _memory_section(len(snapshot) // _PAGE, body))
        elif section_id == _DATACOUNT:
            out += _section(_DATACOUNT, _uleb(segment_count))
        elif section_id == _DATA:
            out += _section(_DATA, data_body)
            wrote_data = True
        else:
            out += _section(section_id, body)
    if not wrote_data:
        raise BakeError("the module has no data section to replace")
    return bytes(out)


def _has_passive(body: bytes) -> bool:
    count, pos = _read_uleb(body, 0)
    for _ in range(count):
        flag, pos = _read_uleb(body, pos)
        if flag == 1:
            return True
        if flag == 2:
            _, pos = _read_uleb(body, pos)
        if flag in (0, 2):
            # Constant offset expression: i32.const <sleb> end.
            while body[pos] != 0x0B:
                pos += 1
            pos += 1
        length, pos = _read_uleb(body, pos)
        pos += length
    return False
