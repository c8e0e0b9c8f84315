"""WAGI's CGI contract, as pure functions: the environment and argv a module
gets, and the parsing of what it prints.

The choices where WAGI 0.8.1 is buggy or random (see the README, "WAGI and
serverless-wasm"): ``CONTENT_TYPE`` carries the request's content type; the
response's header lines are applied in the order printed, a later one winning;
``SERVER_NAME``/``SERVER_PORT`` fall back to the listen address.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ipc.cgi import CgiRequest
from ipc.messages import FailureKind
from runner.executors.base import Response
from runner.failures import GuestFailure

# Request headers that never become HTTP_* variables (credentials, hop-by-hop).
_HIDDEN_HEADERS = {"authorization", "connection"}
_VISIBLE_ASCII = re.compile(r"[\t\x20-\x7e]*")
# The header block ends at the first empty line; CRs in it do not count.
_BLANK_LINE = re.compile(rb"\n\r*\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A value we can send: no control characters but tab (CR and LF cannot occur).
_SENDABLE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_STATUS = re.compile(r"[1-9][0-9]{2}")


def environment(
    request: CgiRequest,
    method: str,
    headers: list[list[str]],
    body_length: int,
    global_env: dict[str, str],
) -> list[tuple[str, str]]:
    """The module's environment: ``--env`` values, then the CGI variables over
    them, then one ``HTTP_*`` per request header over everything."""
    env = dict(global_env)
    content_type = ""
    for name, value in headers:
        if name.lower() == "content-type":
            content_type = value
    query = f"?{request.query}" if request.query else ""
    path_info = unquote(request.raw_path_info, errors="replace")
    env.update(
        {
            "AUTH_TYPE": "",
            "CONTENT_LENGTH": str(body_length),
            "CONTENT_TYPE": content_type,
            "X_FULL_URL": (
                f"{request.scheme}://{request.server_name}:{request.server_port}{request.raw_path}{query}"
            ),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "X_MATCHED_ROUTE": request.matched_route,
            "QUERY_STRING": request.query,
            "REMOTE_ADDR": request.remote_addr,
            "REMOTE_HOST": request.remote_addr,
            "REMOTE_USER": "",
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": request.script_name,
            "X_RAW_PATH_INFO": request.raw_path_info,
            "PATH_INFO": path_info,
            "PATH_TRANSLATED": path_info,
            "SERVER_NAME": request.server_name,
            "SERVER_PORT": request.server_port,
            "SERVER_PROTOCOL": request.protocol,
            "SERVER_SOFTWARE": "WAGI/1",
        }
    )
    for name, value in headers:  # a repeated header: the last one wins
        if name.lower() in _HIDDEN_HEADERS:
            continue
        shown = value if _VISIBLE_ASCII.fullmatch(value) else "CORRUPT VALUE"
        env["HTTP_" + name.upper().replace("-", "_")] = shown
    return list(env.items())


def argv(request: CgiRequest, template: str) -> list[str]:
    """WAGI's argv: the request path, then one item per ``&``-separated query
    part (not decoded); or the ``argv`` template with ``${SCRIPT_NAME}`` (the
    request path, as WAGI does) and ``${ARGS}`` replaced, split on whitespace."""
    if not template:
        return [request.raw_path, *(request.query.split("&") if request.query else [])]
    text = template.replace("${SCRIPT_NAME}", request.raw_path).replace(
        "${ARGS}", request.query.replace("&", " ")
    )
    return text.split()


def _bad(detail: str) -> GuestFailure:
    return GuestFailure(FailureKind.BAD_OUTPUT, detail)


def parse_response(stdout: bytes, max_bytes: int) -> tuple[Response, list[str]]:
    """The response a CGI module printed, and notes on lines that were skipped.

    Raises:
        GuestFailure: bad-output: more than ``max_bytes``; no blank line after
            the headers; a header block that is not UTF-8; none of
            Content-Type, Status and Location; a value with control characters.
    """
    if len(stdout) > max_bytes:
        raise _bad(f"the output of {len(stdout)} bytes exceeds the {max_bytes}-byte limit")
    end = _BLANK_LINE.search(stdout)
    if end is None:
        raise _bad("no blank line ends the CGI header block" if stdout else "the module wrote nothing")
    try:
        block = stdout[: end.start()].replace(b"\r", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("the CGI header block is not UTF-8") from None
    status, sufficient, notes = 200, False, []
    headers: dict[str, str] = {}
    for line in block.strip().split("\n"):
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon:
            if line.strip():
                notes.append(f"CGI header line without a colon skipped: {line[:80]!r}")
            continue
        if not _SENDABLE.fullmatch(value):
            raise _bad(f"the CGI header {name[:80]!r} has a value with control characters")
        # Header values travel as latin-1 strings: this keeps the module's bytes.
        value = value.encode("utf-8").decode("latin-1")
        lowered = name.lower()
        if lowered == "status":
            sufficient = True
            code = value.split(" ", 1)[0]
            # 1xx cannot be a final response: like an unparseable status.
            status = int(code) if _STATUS.fullmatch(code) and code[0] != "1" else 502
            if status == 502:
                notes.append(f"CGI Status {value[:80]!r} is not a valid status: 502")
        elif lowered == "location":
            sufficient, status = True, 302
            headers["location"] = value
        elif lowered == "content-type":
            sufficient = True
            headers["content-type"] = value
        elif _TOKEN.fullmatch(name):
            headers[lowered] = value
        else:
            notes.append(f"CGI header with an invalid name skipped: {name[:80]!r}")
    if not sufficient:
        raise _bad("the CGI headers have none of Content-Type, Status and Location")
    body = stdout[end.end() :]
    return Response(status, [[name, value] for name, value in headers.items()], body), notes
