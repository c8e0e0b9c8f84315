"""Every message that crosses the supervisor <-> runner pipes, defined once.

A message is a frozen dataclass. On the wire it is a msgpack array
``[type_code, request_id, field, field, ...]`` whose field order is the order of
the dataclass fields below: this module is the one place that order lives.
Nested dataclasses travel as arrays too. ``from_wire`` checks every field's type,
so a confused or hostile peer produces :class:`ipc.codec.ProtocolError`, never
a half-built message.

The conversation:

* supervisor -> runner, once: :class:`Configure` (protocol version, the workers).
* runner -> supervisor, once: :class:`Ready` (or the runner exits with
  ``BOOT_FAILED``).
* then, one at a time: :class:`Invoke` -> :class:`Reply` | :class:`Failure`,
  with the same ``request_id``.
* the supervisor closes the runner's stdin to ask it to exit.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar

PROTOCOL_VERSION = 4

# A runner's exit status, part of the protocol: the supervisor reads them.
RUNNER_EXIT_OK = 0
RUNNER_EXIT_BOOT_FAILED = 3
# A frame it could not read (never ours): whatever followed it was not run.
RUNNER_EXIT_PROTOCOL_ERROR = 4


class FailureKind(enum.StrEnum):
    """Why a request produced no worker response. The value is what clients see
    in the ``x-wws-failure`` header."""

    OUT_OF_FUEL = "out-of-fuel"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory-limit"
    TRAP = "trap"
    BAD_OUTPUT = "bad-output"
    SCRIPT_ERROR = "script-error"
    KV_LIMIT = "kv-limit"
    KV_UNAVAILABLE = "kv-unavailable"
    # A key the request wrote changed meanwhile and the request made outbound
    # HTTP calls, so it is not run again (the calls would be repeated).
    KV_CONFLICT = "kv-conflict"
    # A key the request wrote kept changing under it, every attempt.
    KV_CONTENDED = "kv-contended"
    EXIT = "exit"
    LOAD_ERROR = "load-error"
    RUNNER_DIED = "runner-died"
    OVERLOADED = "overloaded"
    BODY_TOO_LARGE = "body-too-large"
    # The client did not send its whole body within --body-timeout-ms.
    BODY_TIMEOUT = "body-timeout"
    INTERNAL = "internal"


@dataclasses.dataclass(frozen=True, slots=True)
class Mount:
    """A host folder preopened for the worker (``[[folders]]``), in TOML order."""

    host_path: str
    guest_path: str
    writable: bool


@dataclasses.dataclass(frozen=True, slots=True)
class HttpPolicy:
    """``[features.http_requests]``: what outbound HTTP the worker may make."""

    allowed_hosts: list[str]  # exact names, or "*.example.com" for subdomains
    allowed_methods: list[str]
    allow_http: bool


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A worker as the runner sees it: what to load and how to run it."""

    worker_id: str
    path: str
    kind: str  # "wasm", "wat", "js", "py", "rb", "wagi" or "handle"
    # [vars] from the worker's TOML: WASI environment, or JS globals.
    variables: dict[str, str]
    # The first mount is WASI fd 3, which Zig workers use as their cwd.
    mounts: list[Mount]
    http: HttpPolicy
    # Kinds "wagi" and "handle" (serverless-wasm; "wasm"/"wat" files that import
    # env.response_set_body are run as one too). variables is then WAGI's
    # environment, or the application's env table for db_get.
    # Exports the worker's routes call: WAGI entrypoints, the handle function.
    entrypoints: list[str] = dataclasses.field(default_factory=list)
    argv: str = ""  # WAGI argv template ("" = path and query items)
    max_outbound: int = 0  # WAGI http_max_concurrency: open responses (0 = no limit)
    tcp_allowed: list[str] = dataclasses.field(default_factory=list)  # handle: host:port targets
    # Kinds "py" and "rb": the installed runtime's .wasm ("" when it is not
    # installed: the worker fails to load), and wws's polyfill flavour ("3-1",
    # or "3", the older one without base64 bodies).
    runtime: str = ""
    flavour: str = "3-1"


@dataclasses.dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the runner's engine allocates linear memories (``runner.engines.engine``).
    The supervisor plans it once, so every runner builds the same engine and
    compiled modules load in all of them."""

    mode: str  # "pooled", "pooled-bounded" or "on-demand"
    memory_reservation: int
    memory_guard_size: int
    pool_slots: int  # memory slots; 0 on demand
    max_memory_bytes: int


def default_engine_settings() -> EngineSettings:
    """The layout when nothing limits the address space: 4 GiB pooled slots."""
    return EngineSettings("pooled", 4 << 30, 32 << 20, 8, 4 << 30)


@dataclasses.dataclass(frozen=True, slots=True)
class Configure:
    TYPE: ClassVar[int] = 1
    request_id: int
    protocol_version: int
    workers: list[WorkerSpec]
    cache_dir: str
    # The runner keeps its guest stdout/stderr files in scratch_dir/<pid>; the
    # supervisor removes that folder after reaping the runner, however it died.
    scratch_dir: str
    # prepare=True: compile into the cache, report load errors, then exit.
    prepare: bool
    epoch_tick_ms: int
    max_output_bytes: int
    engine: EngineSettings = dataclasses.field(default_factory=default_engine_settings)


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    TYPE: ClassVar[int] = 2
    request_id: int
    protocol_version: int
    pid: int
    # worker_id -> one-line reason; only workers that failed to load.
    load_errors: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Invoke:
    TYPE: ClassVar[int] = 3
    request_id: int
    worker_id: str
    method: str
    url: str
    headers: list[list[str]]
    body: bytes
    params: dict[str, str]
    kv: dict[str, str]
    fuel: int
    memory_bytes: int
    timeout_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    TYPE: ClassVar[int] = 4
    request_id: int
    status: int
    headers: list[list[str]]
    body: bytes
    # What the worker changed in its KV snapshot; applied only on success.
    kv_set: dict[str, str]
    kv_deleted: list[str]
    fuel_used: int
    elapsed_us: int
    stderr: bytes
    # Outbound HTTP requests the worker attempted (host import or fetch()). A
    # request that made none can be run again when its KV write conflicts.
    outbound_requests: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    TYPE: ClassVar[int] = 5
    request_id: int
    kind: str  # a FailureKind value
    detail: str
    fuel_used: int
    elapsed_us: int
    stderr: bytes


Message = Configure | Ready | Invoke | Reply | Failure
MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (Configure, Ready, Invoke, Reply, Failure)
}


class WireError(ValueError):
    """A frame decoded as msgpack but is not a valid message."""


Converter = Callable[[Any], Any]


_SCALARS = (int, str, bytes, bool)
# Converters that only check their value and return it unchanged: the decoder
# built it for this message alone, so checking in place spares a copy of every
# header list and KV map on the hot path.
_CHECKS_ONLY: set[Converter] = set()


def _list_checker(item_type: Any, convert_item: Converter) -> Converter:
    if item_type in _SCALARS:

        def check_scalar_list(value: Any) -> Any:
            if not isinstance(value, list):
                raise WireError(f"expected an array, got {type(value).__name__}")
            for item in value:
                if type(item) is not item_type:
                    raise WireError(f"expected {item_type.__name__}, got {type(item).__name__}")
            return value

        _CHECKS_ONLY.add(check_scalar_list)
        return check_scalar_list

    def check_list(value: Any) -> Any:
        if not isinstance(value, list):
            raise WireError(f"expected an array, got {type(value).__name__}")
        for item in value:
            convert_item(item)
        return value

    _CHECKS_ONLY.add(check_list)
    return check_list


def _dict_checker(key_type: Any, value_type: Any) -> Converter:
    def check_dict(value: Any) -> Any:
        if not isinstance(value, dict):
            raise WireError(f"expected a map, got {type(value).__name__}")
        for key, item in value.items():
            if type(key) is not key_type:
                raise WireError(f"expected {key_type.__name__}, got {type(key).__name__}")
            if type(item) is not value_type:
                raise WireError(f"expected {value_type.__name__}, got {type(item).__name__}")
        return value

    _CHECKS_ONLY.add(check_dict)
    return check_dict


def _converter(tp: Any) -> Converter:
    """Build a function that checks a decoded msgpack value against ``tp`` and
    rebuilds nested dataclasses. Built once per field at import time."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [_converter(arg) for arg in typing.get_args(tp) if arg is not type(None)]
        allows_none = type(None) in typing.get_args(tp)

        def convert_union(value: Any) -> Any:
            if value is None and allows_none:
                return None
            return options[0](value)

        return convert_union
    if origin is list:
        (item_type,) = typing.get_args(tp)
        convert_item = _converter(item_type)
        if item_type in _SCALARS or convert_item in _CHECKS_ONLY:
            return _list_checker(item_type, convert_item)

        def convert_list(value: Any) -> Any:
            if not isinstance(value, list):
                raise WireError(f"expected an array, got {type(value).__name__}")
            return [convert_item(item) for item in value]

        return convert_list
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if key_type in _SCALARS and value_type in _SCALARS:
            return _dict_checker(key_type, value_type)
        convert_key, convert_value = _converter(key_type), _converter(value_type)

        def convert_dict(value: Any) -> Any:
            if not isinstance(value, dict):
                raise WireError(f"expected a map, got {type(value).__name__}")
            return {convert_key(k): convert_value(v) for k, v in value.items()}

        return convert_dict
    if dataclasses.is_dataclass(tp):
        return lambda value: _build(typing.cast(type[Any], tp), value)
    if tp in _SCALARS:
        # bool is an int subclass; keep them apart so a flag can't pose as a count.
        def convert_scalar(value: Any) -> Any:
            if type(value) is not tp:
                raise WireError(f"expected {tp.__name__}, got {type(value).__name__}")
            return value

        return convert_scalar
    raise TypeError(f"unsupported wire type {tp!r}")


_FIELD_CONVERTERS: dict[type[Any], list[Converter]] = {}


def _field_converters(cls: type[Any]) -> list[Converter]:
    convs = _FIELD_CONVERTERS.get(cls)
    if convs is None:
        hints = typing.get_type_hints(cls)
        convs = [_converter(hints[f.name]) for f in dataclasses.fields(cls)]
        _FIELD_CONVERTERS[cls] = convs
    return convs


def _build(cls: type[Any], values: Any) -> Any:
    if not isinstance(values, list):
        raise WireError(f"{cls.__name__}: expected an array")
    convs = _field_converters(cls)
    if len(values) != len(convs):
        raise WireError(f"{cls.__name__}: expected {len(convs)} fields, got {len(values)}")
    return cls(*[conv(value) for conv, value in zip(convs, values, strict=True)])


def _flatten(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_flatten(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, list):
        return [_flatten(item) for item in value]
    return value


def _holds_dataclass(tp: Any) -> bool:
    if dataclasses.is_dataclass(tp):
        return True
    return any(_holds_dataclass(arg) for arg in typing.get_args(tp))


# Per message class: (field name, needs flattening). Only fields that can hold
# a nested dataclass are walked; the hot messages (Invoke, Reply) have none.
_WIRE_FIELDS: dict[type[Any], tuple[tuple[str, bool], ...]] = {}
# Per message class without nested fields: all its fields in order, read in
# one C call (the hot path: an Invoke and a Reply or Failure per request).
_FLAT_FIELDS: dict[type[Any], Callable[[Any], tuple[Any, ...]]] = {}


def to_wire(message: Message) -> list[Any]:
    """The msgpack-ready array for ``message``."""
    flat = _FLAT_FIELDS.get(type(message))
    if flat is not None:
        return [message.TYPE, *flat(message)]
    fields = _WIRE_FIELDS[type(message)]
    return [
        message.TYPE,
        *(_flatten(getattr(message, name)) if nested else getattr(message, name) for name, nested in fields),
    ]


def from_wire(obj: Any) -> Message:
    """Check and rebuild a message from a decoded msgpack value.

    Raises:
        WireError: the value is not a well-formed message of a known type.
    """
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise WireError("a frame must be an array starting with a message type")
    cls = MESSAGE_TYPES.get(obj[0])
    if cls is None:
        raise WireError(f"unknown message type {obj[0]}")
    return typing.cast(Message, _build(cls, obj[1:]))


# Build every converter now, so a bad annotation fails at import, not mid-request.
for _cls in (Mount, HttpPolicy, WorkerSpec, EngineSettings, *MESSAGE_TYPES.values()):
    _field_converters(_cls)
for _cls in MESSAGE_TYPES.values():
    _hints = typing.get_type_hints(_cls)
    _WIRE_FIELDS[_cls] = tuple((f.name, _holds_dataclass(_hints[f.name])) for f in dataclasses.fields(_cls))
    if not any(nested for _, nested in _WIRE_FIELDS[_cls]) and len(_WIRE_FIELDS[_cls]) > 1:
        # attrgetter of two names or more returns a tuple.
        _FLAT_FIELDS[_cls] = operator.attrgetter(*(name for name, _ in _WIRE_FIELDS[_cls]))
