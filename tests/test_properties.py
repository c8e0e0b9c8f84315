"""Property-based tests (issue 15): random input to the four parsers that face
untrusted bytes gives a value or their own typed error, never a crash.

* the frame codec (ipc/codec.py): bytes from a runner or supervisor;
* the router (supervisor/project/routes.py): project file names and request paths;
* the worker TOML loader (supervisor/project/worker_config.py): a project's files;
* the kit output parser (runner/executors/kit_protocol.py): whatever a worker prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import string
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ipc.codec import FrameDecoder, ProtocolError, decode_body, encode
from ipc.messages import Failure, FailureKind, Invoke, Ready, Reply
from runner.executors.kit_protocol import BadOutput, parse_response
from supervisor.config import Limits
from supervisor.project.discovery import WorkerFile
from supervisor.project.routes import RouteTable, decode_unreserved, normalize_request_path
from supervisor.project.worker_config import WorkerConfigError, load_worker_config

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A signed 64-bit integer: what msgpack (and so every frame) can carry.
WIRE_INT = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=20)

# ---- the frame codec ----------------------------------------------------------

MESSAGES = st.one_of(
    st.builds(
        Invoke,
        WIRE_INT,
        TEXT,
        TEXT,
        TEXT,
        st.lists(st.lists(TEXT, min_size=2, max_size=2), max_size=3),
        st.binary(max_size=64),
        st.dictionaries(TEXT, TEXT, max_size=3),
        st.dictionaries(TEXT, TEXT, max_size=3),
        WIRE_INT,
        WIRE_INT,
        WIRE_INT,
    ),
    st.builds(
        Reply,
        WIRE_INT,
        WIRE_INT,
        st.lists(st.lists(TEXT, min_size=2, max_size=2), max_size=3),
        st.binary(max_size=64),
        st.dictionaries(TEXT, TEXT, max_size=3),
        st.lists(TEXT, max_size=3),
        WIRE_INT,
        WIRE_INT,
        st.binary(max_size=16),
    ),
    st.builds(
        Failure,
        WIRE_INT,
        st.sampled_from([k.value for k in FailureKind]),
        TEXT,
        WIRE_INT,
        WIRE_INT,
        st.binary(max_size=16),
    ),
    st.builds(Ready, WIRE_INT, WIRE_INT, WIRE_INT, st.dictionaries(TEXT, TEXT, max_size=3)),
)
# Any msgpack value: what a confused peer could put in a well-framed body.
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | WIRE_INT | st.floats() | TEXT | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TEXT | WIRE_INT, inner, max_size=4),
    max_leaves=30,
)


@EXAMPLES
@given(st.lists(MESSAGES, min_size=1, max_size=4), st.data())
def test_codec_round_trips_any_split_of_valid_frames(messages: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(decoder.feed(stream[start:end]))
    assert out == messages
    assert decoder.pending_bytes == 0


@EXAMPLES
@given(st.binary(max_size=256))
def test_codec_random_bytes_give_messages_or_protocol_error(stream: bytes) -> None:
    decoder = FrameDecoder(max_frame=1 << 16)
    try:
        decoder.feed(stream)
    except ProtocolError:
        with pytest.raises(ProtocolError):  # and the decoder stays dead
            decoder.feed(b"")


@EXAMPLES
@given(MSGPACK_VALUES)
def test_codec_any_msgpack_body_gives_a_message_or_protocol_error(value: object) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    with contextlib.suppress(ProtocolError):
        decode_body(body)
    # The same value as a would-be message of every type.
    for code in range(7):
        with contextlib.suppress(ProtocolError):
            decode_body(msgpack.packb([code, value], use_bin_type=True))


@EXAMPLES
@given(st.integers(0, 6), st.lists(MSGPACK_VALUES, max_size=12))
def test_codec_messages_with_random_fields_give_protocol_error(code: int, fields: list[object]) -> None:
    with contextlib.suppress(ProtocolError):
        decode_body(msgpack.packb([code, *fields], use_bin_type=True))


# ---- the router -----------------------------------------------------------------

SEGMENTS = st.one_of(
    st.sampled_from(
        ["index", "api", "[id]", "[...all]", "[...]", "[", "]", "[a-b]", "..", ".", "café", "%2F"]
    ),
    st.text(alphabet=string.ascii_letters + "[]._-%é", min_size=1, max_size=8),
)
WORKER_PATHS = st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda parts: "/".join(parts) + ".wasm")
REQUEST_PATHS = st.text(alphabet=string.printable + "é/%[]", max_size=40)


@EXAMPLES
@given(st.lists(WORKER_PATHS, max_size=6), st.text(max_size=8), st.lists(REQUEST_PATHS, max_size=6))
def test_router_resolves_any_request_against_any_project(
    relatives: list[str], prefix: str, requests: list[str]
) -> None:
    table = RouteTable([WorkerFile(r, Path("/p") / r, "wasm") for r in relatives], prefix)
    for raw in requests:
        path = normalize_request_path(decode_unreserved(raw.encode("utf-8", "surrogatepass")))
        assert path.startswith("/") and "//" not in path
        found = table.resolve(path)
        if found is not None:
            route, params = found
            assert route.match(path) == params


@EXAMPLES
@given(st.binary(max_size=64))
def test_router_decodes_any_raw_path(raw: bytes) -> None:
    assert isinstance(normalize_request_path(decode_unreserved(raw)), str)


# ---- the worker TOML loader -----------------------------------------------------

KEYS = st.sampled_from(
    [
        "name", "version", "vars", "data", "kv", "namespace", "folders", "from", "to", "writable",
        "features", "http_requests", "allowed_hosts", "allowed_methods", "allow_http", "limits",
        "fuel", "memory_mb", "timeout_ms", "max_concurrency", "A", "B_1", "1x", "x y", "", "A\n",
    ]
)  # fmt: skip
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12),
    st.sampled_from(["GET", "POST", ".", "..", "/", "data", "$HOME", "$", "\x00"]),
)
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


def _toml(value: object) -> str:
    """A TOML value as inline text (tables as inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, str):
        # JSON's escapes for quotes, backslashes and controls are TOML's too;
        # non-ASCII stays raw (TOML has no surrogate-pair escapes), and TOML
        # also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"


PATHISH = st.sampled_from(["data", ".", "..", "/", "/etc", "missing", "data\x00x", "", "../..", "\\data"])
NAMES = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=6)
# Numbers past what a frame carries, and the edges around it.
BIG = st.sampled_from([1, 2**31, 2**43, 2**53, 2**63 - 1, 2**63, 2**64, 10**30])


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Mostly a value of the right type, sometimes any value in its place.
    return st.integers(0, 4).flatmap(lambda n: SCALARS if n == 0 else valid)


def _table(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _maybe(st.fixed_dictionaries({}, optional=fields))


# Each top-level key of a worker TOML, with random types and values at each
# level; the loader must check every one of them.
SCHEMA_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": _maybe(NAMES),
    "version": _maybe(NAMES),
    "vars": _maybe(st.dictionaries(KEYS | NAMES, _maybe(NAMES), max_size=3)),
    "data": _table(kv=_table(namespace=_maybe(NAMES))),
    "folders": _maybe(
        st.lists(_table(**{"from": PATHISH, "to": PATHISH, "writable": _maybe(st.booleans())}), max_size=2)
    ),
    "features": _table(
        http_requests=_table(
            allowed_hosts=_maybe(st.lists(_maybe(NAMES), max_size=2)),
            allowed_methods=_maybe(st.lists(_maybe(st.sampled_from(["GET", "get", "BREW"])), max_size=2)),
            allow_http=_maybe(st.booleans()),
        )
    ),
    "limits": _table(
        **{key: _maybe(BIG | st.integers()) for key in ("fuel", "memory_mb", "timeout_ms", "max_concurrency")}
    ),
}
SCHEMA_DOCUMENTS = st.fixed_dictionaries({}, optional=SCHEMA_FIELDS)
# One key alone reaches its checks far more often than a whole document,
# where an earlier key is usually already wrong.
ONE_KEY_DOCUMENTS = st.sampled_from(sorted(SCHEMA_FIELDS)).flatmap(
    lambda key: st.fixed_dictionaries({key: SCHEMA_FIELDS[key]})
)


@pytest.fixture(scope="module")
def toml_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("toml-project")
    (project / "data").mkdir()
    return project


def _load(project: Path, text: str | bytes) -> None:
    toml = project / "w.toml"
    if isinstance(text, bytes):
        toml.write_bytes(text)
    else:
        toml.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_worker_config(project / "w.wasm", project, Limits())
    except WorkerConfigError as exc:
        message = str(exc)
        assert message.startswith(str(toml))  # the error names the file
        return
    # What loads must fit the wire: every limit travels in each Invoke.
    for number in (config.limits.fuel, config.limits.memory_bytes, config.limits.timeout_ms):
        assert 0 < number < 2**63
    # Variable names become WASI environment entries and JS globals.
    assert all(re.fullmatch("[A-Za-z_][A-Za-z0-9_]*", name) for name in config.variables)
    assert all(isinstance(value, str) for value in config.variables.values())


@EXAMPLES
@given(st.dictionaries(KEYS, TOML_VALUES, max_size=6))
def test_toml_loader_structured_documents(toml_project: Path, document: dict[str, object]) -> None:
    text = "\n".join(f"{_toml(key)} = {_toml(value)}" for key, value in document.items())
    _load(toml_project, text)


@EXAMPLES
@given(st.one_of(SCHEMA_DOCUMENTS, ONE_KEY_DOCUMENTS))
# What this test found, kept as fixed cases: a fuel the wire cannot carry, a
# memory limit whose byte count it cannot carry, a NUL in a folder (a
# ValueError from the OS layer), and a variable name with a newline ("$"
# matches before a final newline).
@example(document={"limits": {"fuel": 2**63}})
@example(document={"limits": {"memory_mb": 2**43}})
@example(document={"folders": [{"from": "data\x00x", "to": "/data"}]})
@example(document={"vars": {"A\n": "x"}})
def test_toml_loader_schema_shaped_documents(toml_project: Path, document: dict[str, object]) -> None:
    text = "\n".join(f"{_toml(key)} = {_toml(value)}" for key, value in document.items())
    _load(toml_project, text)


@EXAMPLES
@given(st.text(alphabet=string.printable + "é\x00\ud800[]{}=\"'", max_size=120))
def test_toml_loader_random_text(toml_project: Path, text: str) -> None:
    _load(toml_project, text)


@EXAMPLES
@given(st.binary(max_size=64))
def test_toml_loader_random_bytes(toml_project: Path, raw: bytes) -> None:
    _load(toml_project, raw)


# ---- the kit output parser ------------------------------------------------------

# Any code point, lone surrogates included: JSON can spell them ("\ud800") and
# JavaScript strings can hold them.
# Hypothesis rarely draws those by chance, so they are mixed in on purpose,
# with the other characters a header cannot carry.
ANY_TEXT = st.lists(
    st.characters(blacklist_categories=()) | st.sampled_from(["\ud800", "\udfff", "\x00", "\n", "é", "€"]),
    max_size=10,
).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
HEADER_NAMES = st.text(alphabet=string.ascii_letters + "-_", min_size=1, max_size=8) | ANY_TEXT


def _mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Mostly the right type, so the checks behind the type checks are reached.
    return st.integers(0, 4).flatmap(lambda n: other if n == 0 else valid)


FIELDS = st.fixed_dictionaries(
    {"data": _mostly(ANY_TEXT, JSON_VALUES)},
    optional={
        "status": _mostly(st.integers(), JSON_VALUES),
        "base64": _mostly(st.booleans(), JSON_VALUES),
        "headers": _mostly(
            st.dictionaries(HEADER_NAMES, _mostly(ANY_TEXT, JSON_VALUES), max_size=4), JSON_VALUES
        ),
        "kv": _mostly(st.dictionaries(ANY_TEXT, _mostly(ANY_TEXT, JSON_VALUES), max_size=4), JSON_VALUES),
    },
)


def _check_output(stdout: bytes) -> None:
    try:
        response = parse_response(stdout, 1 << 16)
    except BadOutput as exc:
        str(exc).encode("utf-8")  # the message itself can be framed
        return
    # What parses can be framed and sent: the reply encodes, headers are latin-1.
    encode(Reply(1, response.status, response.headers, response.body, response.kv or {}, [], 0, 0, b""))
    assert 200 <= response.status <= 999
    for name, value in response.headers:
        name.encode("ascii")
        value.encode("latin-1")
        assert value == value.strip()


@EXAMPLES
@given(FIELDS)
def test_kit_parser_documents(document: dict[str, object]) -> None:
    # ensure_ascii=True writes lone surrogates as \ud800 escapes, as workers may.
    _check_output(json.dumps(document).encode())


@EXAMPLES
@given(st.binary(max_size=200))
def test_kit_parser_random_bytes(stdout: bytes) -> None:
    _check_output(stdout)


@EXAMPLES
@given(st.text(alphabet='{}[]":,0123456789.eE-+ \\u\ud800abtrufnls', max_size=200))
def test_kit_parser_json_like_text(text: str) -> None:
    _check_output(text.encode("utf-8", "surrogatepass"))


@EXAMPLES
@given(st.integers(1, 3000), st.sampled_from(["[", '{"a":', '{"data":"x","kv":']))
def test_kit_parser_deep_nesting(depth: int, opener: str) -> None:
    _check_output((opener * depth).encode())


@EXAMPLES
@given(st.integers(1, 6000))
def test_kit_parser_long_status(digits: int) -> None:
    # Past 4,300 digits Python refuses to convert a decimal string to an int.
    _check_output(b'{"data":"x","status":' + b"9" * digits + b"}")
