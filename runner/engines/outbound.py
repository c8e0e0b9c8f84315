"""Outbound HTTP for workers, enforced in the runner: the worker's policy
(``[features.http_requests]``), a timeout inside the request's deadline, a cap
on the response size, and a bounded number of redirects (each hop checked
against the policy again).

Errors use wws's kinds and messages, so a worker sees exactly what it would
under wws (the numbers are the ``http-error`` enum of wws's host ABI).
"""

from __future__ import annotations

import dataclasses
import enum
import http.client
import time
from urllib.parse import urljoin, urlsplit

from ipc.messages import HttpPolicy

MAX_REDIRECTS = 10
MAX_RESPONSE_BYTES = 16 << 20
# Never wait longer than this for one outbound request, whatever the deadline.
MAX_TIMEOUT_S = 30.0


class HttpErrorKind(enum.IntEnum):
    INVALID_REQUEST = 0
    INVALID_REQUEST_BODY = 1
    INVALID_RESPONSE_BODY = 2
    NOT_ALLOWED = 3
    INTERNAL_ERROR = 4
    TIMEOUT = 5
    REDIRECT_LOOP = 6

    @property
    def label(self) -> str:
        """The name wws's JavaScript fetch() puts in brackets."""
        return _LABELS[self]


_LABELS = {
    HttpErrorKind.INVALID_REQUEST: "Invalid Request",
    HttpErrorKind.INVALID_REQUEST_BODY: "Invalid Request Body",
    HttpErrorKind.INVALID_RESPONSE_BODY: "Invalid Response Body",
    HttpErrorKind.NOT_ALLOWED: "Not allowed",
    HttpErrorKind.INTERNAL_ERROR: "Internal Error",
    HttpErrorKind.TIMEOUT: "Request Timeout",
    HttpErrorKind.REDIRECT_LOOP: "Redirect Loop",
}


class OutboundError(Exception):
    def __init__(self, kind: HttpErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class OutboundResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == host:
            return True
        # "*.example.com" covers any subdomain, not example.com itself.
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


def check_policy(policy: HttpPolicy, method: str, uri: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path+query of ``uri`` if the policy allows it.

    Raises:
        OutboundError: the URI does not parse, or the policy refuses it (with
            wws's messages, checked in wws's order).
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise OutboundError(HttpErrorKind.INVALID_REQUEST, f"invalid URI: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError(
            HttpErrorKind.INVALID_REQUEST, f"invalid URI {uri!r}: an absolute http(s) URL is needed"
        )
    host = parts.hostname
    if not host_allowed(host, policy.allowed_hosts):
        raise OutboundError(
            HttpErrorKind.NOT_ALLOWED,
            f"The host '{host}' is not allowed for this worker. Please, update the worker configuration.",
        )
    if parts.scheme == "http" and not policy.allow_http:
        raise OutboundError(
            HttpErrorKind.NOT_ALLOWED,
            "The URI must use HTTPS. You can allow http requests in the worker configuration",
        )
    if method not in policy.allowed_methods:
        raise OutboundError(
            HttpErrorKind.NOT_ALLOWED,
            f"The method '{method}' is not allowed for this worker. Please, update the configuration.",
        )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), target


def send(
    policy: HttpPolicy,
    method: str,
    uri: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    deadline: float,
) -> OutboundResponse:
    """Make the request, following redirects.

    Raises:
        OutboundError: refused by the policy, timed out at the deadline, too
            many redirects, a response over the size cap, or a network error.
    """
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, target = check_policy(policy, method, uri)
        remaining = min(deadline - time.monotonic(), MAX_TIMEOUT_S)
        if remaining <= 0:
            raise OutboundError(HttpErrorKind.TIMEOUT, "the request's deadline passed before the call")
        response = _exchange(scheme, host, port, method, target, headers, body, remaining, deadline)
        location = dict(response.headers).get("location")
        if response.status in (301, 302, 303, 307, 308) and location:
            uri = urljoin(uri, location)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
            continue
        return response
    raise OutboundError(HttpErrorKind.REDIRECT_LOOP, f"more than {MAX_REDIRECTS} redirects")


def _exchange(
    scheme: str,
    host: str,
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    timeout: float,
    deadline: float,
) -> OutboundResponse:
    connection_type = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_type(host, port, timeout=timeout)
    reply: http.client.HTTPResponse | None = None
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() not in ("host", "content-length", "connection", "transfer-encoding"):
                connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.putheader("Connection", "close")
        connection.endheaders(body or b"")
        reply = connection.getresponse()
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise OutboundError(HttpErrorKind.TIMEOUT, "the response did not finish before the deadline")
            chunk = reply.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise OutboundError(
                    HttpErrorKind.INVALID_RESPONSE_BODY,
                    f"the response body is over {MAX_RESPONSE_BYTES} bytes",
                )
            chunks.append(chunk)
        response_headers = [(name.lower(), value) for name, value in reply.getheaders()]
        return OutboundResponse(reply.status, response_headers, b"".join(chunks))
    except TimeoutError:
        raise OutboundError(HttpErrorKind.TIMEOUT, "operation timed out") from None
    except (OSError, http.client.HTTPException) as exc:
        raise OutboundError(HttpErrorKind.INVALID_REQUEST, f"error sending request: {exc}") from None
    finally:
        if reply is not None:
            reply.close()  # its socket file, which connection.close() leaves open
        connection.close()
