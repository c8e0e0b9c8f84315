"""The wws worker protocol (one JSON object on stdin, one on stdout).

Runs in the runner, so JSON work is spread over the pool instead of sitting in
the supervisor's event loop.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re

from ipc.messages import Invoke

# RFC 9110 token characters for header names.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def parse_response(stdout: bytes) -> KitResponse:
    """Turn the worker's stdout into a response.

    Raises:
        BadOutput: not one JSON object, or a field of the wrong type.
    """
    if not stdout.strip():
        raise BadOutput("the worker wrote nothing to stdout")
    try:
        document = json.loads(stdout)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadOutput(f"stdout is not one JSON object: {exc}") from None
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
        body = data.encode("utf-8", errors="surrogatepass")
    return KitResponse(status, _headers(document.get("headers", {})), body, _kv(document.get("kv")))


def _headers(raw: object) -> list[list[str]]:
    if not isinstance(raw, dict):
        raise BadOutput('"headers" must be an object')
    # wws starts from content-type: text/html and lets the worker replace it.
    merged: dict[str, list[str]] = {"content-type": ["content-type", "text/html"]}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise BadOutput(f"header {name!r} must have a string value")
        name = name.replace("_", "-")
        if not _HEADER_NAME.match(name):
            raise BadOutput(f"invalid header name {name!r}")
        if _BAD_VALUE_CHARS.search(value):
            raise BadOutput(f"header {name!r} has control characters in its value")
        merged[name.lower()] = [name, value]
    return list(merged.values())


def _kv(raw: object) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise BadOutput('"kv" must be an object of strings')
    return raw
