"""How every answer is written: the status and fixed body each failure kind
gets (no host detail ever reaches a client), worker replies with our own
framing, CORS preflights, plain answers, and the ASGI lifespan handshake."""

from __future__ import annotations

from typing import Any

from ipc.messages import FailureKind, Reply

# What each failure tells the client. Bodies are fixed text: no host detail.
FAILURE_STATUS: dict[FailureKind, int] = {
    FailureKind.OUT_OF_FUEL: 504,
    FailureKind.TIMEOUT: 504,
    FailureKind.MEMORY_LIMIT: 500,
    FailureKind.TRAP: 500,
    FailureKind.BAD_OUTPUT: 500,
    FailureKind.SCRIPT_ERROR: 500,
    FailureKind.KV_LIMIT: 500,
    FailureKind.KV_UNAVAILABLE: 503,
    FailureKind.KV_CONFLICT: 409,
    FailureKind.KV_CONTENDED: 503,
    FailureKind.EXIT: 500,
    FailureKind.LOAD_ERROR: 500,
    FailureKind.INTERNAL: 500,
    FailureKind.RUNNER_DIED: 502,
    FailureKind.OVERLOADED: 503,
    FailureKind.BODY_TOO_LARGE: 413,
    FailureKind.BODY_TIMEOUT: 408,
}
FAILURE_BODY = b"<p>There was an error running this function</p>"
_FAILURE_BODIES = {
    FailureKind.OUT_OF_FUEL: b"<p>The function used up its CPU budget</p>",
    FailureKind.TIMEOUT: b"<p>The function did not finish in time</p>",
    FailureKind.MEMORY_LIMIT: b"<p>The function ran out of memory</p>",
    FailureKind.OVERLOADED: b"<p>The server is busy, please retry shortly</p>",
    FailureKind.BODY_TOO_LARGE: b"<p>The request body is too large</p>",
    FailureKind.BODY_TIMEOUT: b"<p>The request body did not arrive in time</p>",
}
# The connection cannot be trusted after these: close it once answered.
_CLOSE_AFTER = {FailureKind.BODY_TOO_LARGE, FailureKind.BODY_TIMEOUT}
# Statuses whose responses never carry a body or a content-length (RFC 9110 8.6).
_BODILESS_STATUSES = {204, 304}


def is_preflight(scope: dict[str, Any]) -> bool:
    if scope["method"] != "OPTIONS":
        return False
    return any(name == b"access-control-request-method" for name, _ in scope["headers"])


async def preflight(scope: dict[str, Any], send: Any, origins: bytes) -> None:
    # A browser asks before a cross-origin call with a custom method or
    # header: allow what it asks for, for the configured origins.
    asked = dict(scope["headers"])
    headers = [
        (b"access-control-allow-origin", origins),
        (b"access-control-allow-methods", asked.get(b"access-control-request-method", b"GET")),
        (b"access-control-max-age", b"600"),
    ]
    if b"access-control-request-headers" in asked:
        headers.append((b"access-control-allow-headers", asked[b"access-control-request-headers"]))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def send_reply(send: Any, reply: Reply, cors: bytes | None = None) -> None:
    headers = [
        (name.encode("latin-1"), value.encode("latin-1", "replace"))
        for name, value in reply.headers
        if name.lower() not in ("content-length", "transfer-encoding", "connection")
    ]
    body = reply.body
    if reply.status in _BODILESS_STATUSES or reply.status < 200:
        body = b""  # these statuses carry no body, and so no length either
    else:
        # Our own length: a worker's framing headers could desynchronise the connection.
        headers.append((b"content-length", str(len(body)).encode()))
    if cors and not any(name.lower() == "access-control-allow-origin" for name, _ in reply.headers):
        headers.append((b"access-control-allow-origin", cors))  # as wws: unless the worker set its own
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_failure(send: Any, kind: FailureKind, cors: bytes | None = None) -> None:
    extra = [(b"x-wws-failure", kind.value.encode())]
    if cors:
        extra.append((b"access-control-allow-origin", cors))
    if kind in (FailureKind.OVERLOADED, FailureKind.KV_CONTENDED):
        extra.append((b"retry-after", b"1"))
    if kind in _CLOSE_AFTER:
        extra.append((b"connection", b"close"))
    await plain(send, FAILURE_STATUS[kind], _FAILURE_BODIES.get(kind, FAILURE_BODY), extra, b"text/html")


async def plain(
    send: Any,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/plain; charset=utf-8",
    head: bool = False,
) -> None:
    """A complete answer with a fixed body (none for HEAD, but its length)."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def lifespan(receive: Any, send: Any) -> None:
    # hypercorn crashes at startup if an app returns early from the lifespan
    # scope, so answer both events properly.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
