from __future__ import annotations

import msgpack
import pytest

from ipc.codec import HEADER, FrameDecoder, ProtocolError, encode
from ipc.messages import (
    PROTOCOL_VERSION,
    Configure,
    Failure,
    FailureKind,
    HttpPolicy,
    Invoke,
    Mount,
    Ready,
    Reply,
    WorkerSpec,
    from_wire,
    to_wire,
)

SAMPLES = [
    Configure(
        0,
        PROTOCOL_VERSION,
        [
            WorkerSpec(
                "a.wasm",
                "/p/a.wasm",
                "wasm",
                {"K": "v"},
                [Mount("/p/data", "/data", False)],
                HttpPolicy(["*.example.com"], ["GET"], True),
            )
        ],
        "/cache",
        "/scratch",
        False,
        10,
        1 << 20,
    ),
    Ready(0, PROTOCOL_VERSION, 1234, {"bad.wasm": "invalid"}),
    Invoke(
        7, "a.wasm", "POST", "http://h/a", [["host", "h"]], b"\x00\xffbody", {"id": "1"}, {}, 10, 1 << 20, 100
    ),
    Reply(7, 200, [["content-type", "text/html"]], b"\x89PNG", {"k": "v"}, ["gone"], 12, 300, b"log line"),
    Failure(7, FailureKind.OUT_OF_FUEL.value, "wasm trap: out_of_fuel", 10, 400, b""),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode(message)) == [message]  # type: ignore[arg-type]


def test_frames_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    for message in SAMPLES:
        frame = encode(message)  # type: ignore[arg-type]
        # Nothing comes out before the last byte of a frame arrives...
        for index in range(len(frame) - 1):
            assert decoder.feed(frame[index : index + 1]) == []
            assert decoder.pending_bytes == index + 1
        # ...and the last byte gives exactly that one message.
        assert decoder.feed(frame[-1:]) == [message]
        assert decoder.pending_bytes == 0


def test_several_frames_in_one_chunk_and_a_split_tail() -> None:
    stream = b"".join(encode(m) for m in SAMPLES)  # type: ignore[arg-type]
    decoder = FrameDecoder()
    assert decoder.feed(stream[:-3]) == SAMPLES[:-1]
    assert decoder.feed(stream[-3:]) == SAMPLES[-1:]


def test_bodies_travel_as_bytes() -> None:
    invoke = SAMPLES[2]
    (decoded,) = FrameDecoder().feed(encode(invoke))  # type: ignore[arg-type]
    assert isinstance(decoded, Invoke)
    assert decoded.body == b"\x00\xffbody"


def test_oversized_frame_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_frame=1024)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(HEADER.pack(1025))
    # The decoder stays dead: the stream is out of step.
    with pytest.raises(ProtocolError):
        decoder.feed(encode(SAMPLES[1]))  # type: ignore[arg-type]


def test_encoding_an_oversized_message_is_refused() -> None:
    big = Reply(1, 200, [], b"x" * 2048, {}, [], 0, 0, b"")
    with pytest.raises(ProtocolError, match="exceeds"):
        encode(big, max_frame=1024)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte msgpack never uses
        msgpack.packb({"not": "an array"}),
        msgpack.packb([99, 0]),  # unknown message type
        msgpack.packb([2, 0, PROTOCOL_VERSION]),  # too few fields
        msgpack.packb([2, 0, PROTOCOL_VERSION, "pid", {}]),  # pid of the wrong type
        msgpack.packb([2, 0, PROTOCOL_VERSION, 5, {"k": 1}]),  # map values must be strings
        msgpack.packb([4, True, 200, [], b"", {}, [], 0, 0, b""]),  # bool posing as an int
        msgpack.packb([1, 2]) + b"trailing",
    ],
)
def test_garbage_frames_raise_protocol_error(body: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(HEADER.pack(len(body)) + body)


def test_wire_order_is_the_dataclass_order() -> None:
    ready = Ready(0, PROTOCOL_VERSION, 42, {})
    assert to_wire(ready) == [Ready.TYPE, 0, PROTOCOL_VERSION, 42, {}]
    assert from_wire([Ready.TYPE, 0, PROTOCOL_VERSION, 42, {}]) == ready


def test_every_frame_carries_a_request_id() -> None:
    for message in SAMPLES:
        assert to_wire(message)[1] == message.request_id  # type: ignore[attr-defined]
