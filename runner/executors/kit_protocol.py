"""The wws worker protocol (one JSON object on stdin, one on stdout).

Runs in the runner, so JSON work is spread over the pool instead of sitting in
the supervisor's event loop.

Everything a worker writes is hostile input: :func:`parse_response` either
returns a response that the runner can frame and the supervisor can send
(every string UTF-8 encodable, header names tokens, header values latin-1
without control characters, the whole output under the output cap), or
raises :class:`BadOutput`. It raises nothing else, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re

from ipc.messages import Invoke

# RFC 9110 token characters for header names.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header values travel as latin-1 (obs-text allowed); controls other than tab
# would split or corrupt the header block.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Leading and trailing whitespace is not part of a field value (RFC 9110 5.5),
# and the HTTP layer refuses to send it.
_FIELD_WHITESPACE = " \t"
# The supervisor's default (PoolSettings.max_output_bytes); the runner gets the
# real value in Configure. Well under ipc.codec's frame limit, so a response
# that passes the cap always fits in a Reply frame.
DEFAULT_MAX_OUTPUT = 16 << 20


# json.dumps with options builds an encoder per call; this one is built once.
_REQUEST_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class BadOutput(Exception):
    """The worker's stdout is not a valid wws response."""


@dataclasses.dataclass(frozen=True, slots=True)
class KitResponse:
    status: int
    headers: list[list[str]]
    body: bytes
    kv: dict[str, str] | None


def request_json(invoke: Invoke, seed: str | None = None) -> bytes:
    # wws sends bodies as UTF-8 text and non-UTF-8 bodies as "".
    try:
        body = invoke.body.decode("utf-8")
    except UnicodeDecodeError:
        body = ""
    headers: dict[str, str] = {}
    for name, value in invoke.headers:
        headers[name.lower()] = value  # duplicates collapse, last wins, as in wws
    document: dict[str, object] = {
        "url": invoke.url,
        "method": invoke.method,
        "headers": headers,
        "body": body,
        "kv": invoke.kv,
        "params": invoke.params,
    }
    if seed is not None:
        document["seed"] = seed  # fresh entropy for JS workers restored from a snapshot
    return _REQUEST_ENCODER.encode(document).encode()


def load_json(output: bytes, max_bytes: int) -> object:
    """Decode a worker's JSON output, bounded in size and depth.

    Raises:
        BadOutput: over ``max_bytes``, not JSON, nested past the interpreter's
            recursion limit, or holding an integer too long to convert.
    """
    if len(output) > max_bytes:
        raise BadOutput(f"the output of {len(output)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(output)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and integers past
    # sys.get_int_max_str_digits(); RecursionError is the json module's own
    # depth check (it recurses in C, guarded by the recursion limit).
    except RecursionError:
        raise BadOutput("the output is JSON nested too deeply") from None
    except ValueError as exc:
        if len(output) == max_bytes:
            # The runner's file size limit cut the output at exactly this size.
            raise BadOutput(f"the output reached the {max_bytes}-byte limit and was cut short") from None
        raise BadOutput(f"stdout is not one JSON object: {_short(exc)}") from None


def parse_response(stdout: bytes, max_bytes: int) -> KitResponse:
    """Turn the worker's stdout into a response.

    Raises:
        BadOutput: not one JSON object of at most ``max_bytes``, or a field of
            the wrong type or with text that cannot be sent.
    """
    if not stdout.strip():
        raise BadOutput("the worker wrote nothing to stdout")
    return response_from(load_json(stdout, max_bytes))


def response_from(document: object) -> KitResponse:
    """Check a decoded wws response document and build the response.

    Raises:
        BadOutput: a field of the wrong type or with text that cannot be sent.
    """
    if not isinstance(document, dict):
        raise BadOutput("stdout is JSON but not an object")
    data = document.get("data")
    if not isinstance(data, str):
        raise BadOutput('"data" must be a string')
    status = document.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool):
        raise BadOutput('"status" must be an integer')
    if not 200 <= status <= 999:
        status = 200  # wws's fallback for out-of-range statuses
    if document.get("base64", False) is True:
        try:
            body = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadOutput('"data" is marked base64 but does not decode') from None
    else:
        body = utf8(data, '"data"')
    return KitResponse(status, _headers(document.get("headers", {})), body, _kv(document.get("kv")))


def utf8(text: str, what: str) -> bytes:
    """``text`` as UTF-8.

    Raises:
        BadOutput: ``text`` holds a lone surrogate (JSON's ``"\\ud800"``, or a
            JavaScript string cut in the middle of a pair), which has no UTF-8
            form and would fail later, when the reply is framed.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadOutput(f"{what} is not valid Unicode: {_short(exc)}") from None


def _headers(raw: object) -> list[list[str]]:
    if not isinstance(raw, dict):
        raise BadOutput('"headers" must be an object')
    # wws starts from content-type: text/html and lets the worker replace it.
    merged: dict[str, list[str]] = {"content-type": ["content-type", "text/html"]}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise BadOutput(f"header {_shown(name)} must have a string value")
        name = name.replace("_", "-")
        if not _HEADER_NAME.fullmatch(name):
            raise BadOutput(f"invalid header name {_shown(name)}")
        value = value.strip(_FIELD_WHITESPACE)
        if not _HEADER_VALUE.fullmatch(value):
            raise BadOutput(
                f"header {name!r} has a value with control characters or characters outside latin-1"
            )
        merged[name.lower()] = [name, value]
    return list(merged.values())


def _kv(raw: object) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise BadOutput('"kv" must be an object of strings')
    for key, value in raw.items():
        utf8(key, "a KV key")
        utf8(value, f"the KV value of {_shown(key)}")
    return raw


def _shown(text: str) -> str:
    # repr() escapes surrogates and controls, so the message itself can be
    # framed and logged; long names are cut.
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _short(exc: Exception) -> str:
    return printable(str(exc)[:200])


def printable(text: str) -> str:
    """``text`` with lone surrogates as ``\\udXXX`` escapes, so it can be framed
    and logged (for error details and logs, never for response data)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
