"""Framing for :mod:`ipc.messages`: no I/O here, only bytes in and messages out.

A frame is a 4-byte big-endian body length followed by a msgpack body. The
length comes first so an oversized frame is refused from its header, before
any of it is buffered. Any malformed frame makes the decoder unusable
(:class:`ProtocolError`): the peer that sent it cannot be trusted to be in
step any more, so the caller must drop the connection and the process behind it.
"""

from __future__ import annotations

import struct

import msgpack

from ipc.messages import Message, WireError, from_wire, to_wire

HEADER = struct.Struct(">I")
# Large enough for a 1 MiB body plus headers several times over; the supervisor
# refuses request bodies long before this.
DEFAULT_MAX_FRAME = 64 << 20


class ProtocolError(Exception):
    """The byte stream is not a sequence of valid frames."""


def encode(message: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame holding ``message``.

    Raises:
        ProtocolError: the encoded message is larger than ``max_frame``.
    """
    body: bytes = msgpack.packb(to_wire(message), use_bin_type=True)
    if len(body) > max_frame:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {max_frame}-byte limit")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes | memoryview) -> Message:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    try:
        return from_wire(obj)
    except (WireError, TypeError) as exc:
        raise ProtocolError(f"invalid message: {exc}") from None


class FrameDecoder:
    """Feed it bytes as they arrive; it hands back every complete message."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add ``data`` and return the messages it completes, oldest first.

        Raises:
            ProtocolError: a frame is oversized or malformed. Every later call
                raises the same error.
        """
        if self._broken is not None:
            raise self._broken
        if not self._buffer and len(data) >= HEADER.size:
            # The usual case, one whole frame in one read: decoded in place,
            # without going through the buffer.
            (length,) = HEADER.unpack_from(data)
            if length <= self._max_frame and len(data) == HEADER.size + length:
                try:
                    return [decode_body(memoryview(data)[HEADER.size :])]
                except ProtocolError as exc:
                    self._broken = exc
                    raise
        self._buffer += data
        messages: list[Message] = []
        try:
            while len(self._buffer) >= HEADER.size:
                (length,) = HEADER.unpack_from(self._buffer)
                if length > self._max_frame:
                    raise ProtocolError(f"frame of {length} bytes exceeds the {self._max_frame}-byte limit")
                end = HEADER.size + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[HEADER.size : end])
                del self._buffer[:end]
                messages.append(decode_body(body))
        except ProtocolError as exc:
            self._broken = exc
            self._buffer.clear()
            raise
        return messages

    @property
    def pending_bytes(self) -> int:
        """Bytes received that do not yet complete a frame."""
        return len(self._buffer)
