"""Outbound HTTP from workers to a loopback upstream: allowed, and denied by
host, method and scheme with wws's messages; redirects; a slow upstream cut at
the worker's deadline. Both the compiled host import and JavaScript fetch()."""

from __future__ import annotations

import http.server as http_server
import shutil
import threading
import time
import time as clock
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ipc.messages import HttpPolicy
from runner.engines.outbound import MAX_RESPONSE_BYTES, HttpErrorKind, OutboundError, host_allowed, send
from tests.helpers import EXAMPLES, ServerProcess, http

PROXY_JS = """
addEventListener("fetch", (event) => {
  event.respondWith((async () => {
    const h = event.request.headers;
    try {
      const init = { method: h.get("x-verb") || "GET", body: event.request.body || undefined };
      const r = await fetch(h.get("x-target"), init);
      return new Response(`status=${r.status}\\n${await r.text()}`);
    } catch (e) {
      return new Response(e.message, { status: 502 });
    }
  })());
});
"""

_HTTP = "[features.http_requests]\n"
_LOCAL = 'allowed_hosts = ["127.0.0.1"]\n'
POLICIES = {
    "allowed": _HTTP + _LOCAL + "allow_http = true\n",
    "wildcard": _HTTP + 'allowed_hosts = ["*.0.0.1"]\nallow_http = true\n',
    "wronghost": _HTTP + 'allowed_hosts = ["example.com"]\nallow_http = true\n',
    "onlyget": _HTTP + _LOCAL + 'allowed_methods = ["GET"]\nallow_http = true\n',
    "httpsonly": _HTTP + _LOCAL,
    "slow": _HTTP + _LOCAL + "allow_http = true\n[limits]\ntimeout_ms = 800\n",
}
METHOD_NUMBER = {"GET": "0", "POST": "1"}


class _Upstream(http_server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/hello":
            self._send(200, b"hi from upstream", [("x-up", "1")])
        elif self.path == "/redirect":
            self._send(302, b"", [("location", "/hello")])
        elif self.path == "/loop":
            self._send(302, b"", [("location", "/loop")])
        elif self.path == "/big":
            self._send(200, b"x" * (MAX_RESPONSE_BYTES + 1), [])
        elif self.path == "/offsite":
            self._send(302, b"", [("location", "http://example.com/")])
        elif self.path == "/slow":
            time.sleep(5)  # the upstream being slow is the point of this route
            self._send(200, b"too late", [])
        else:
            self._send(404, b"no such upstream path", [])

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self._send(200, b"POST:" + body, [])

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def outbound_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[ServerProcess]:
    project = tmp_path_factory.mktemp("outbound")
    for name, policy in POLICIES.items():
        for kind in ("js", "c"):
            (project / kind).mkdir(exist_ok=True)
            toml = 'version = "1"\n' + policy
            (project / kind / f"{name}.toml").write_text(toml)
        (project / "js" / f"{name}.js").write_text(PROXY_JS)
        shutil.copy(EXAMPLES / "c" / "fetch.wasm", project / "c" / f"{name}.wasm")
    server = ServerProcess(project, ["-w", "2", "--timeout-ms", "5000"], cache_dir)
    try:
        server.wait_ready(timeout=180)
        yield server
    finally:
        server.stop()


async def _call(
    server: ServerProcess, kind: str, worker: str, target: str, verb: str = "GET", body: bytes = b""
) -> str:
    headers = {"x-target": target, "x-verb": verb, "x-method": METHOD_NUMBER[verb]}
    response = await http(
        server.port, "POST" if body else "GET", f"/{kind}/{worker}", headers=headers, body=body
    )
    return response.text


@pytest.fixture(params=["js", "c"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _error(kind: str, label: str, number: int, message: str) -> str:
    return f"[{label}] {message}" if kind == "js" else f"error={number} {message}"


async def test_allowed_get_and_post(outbound_server: ServerProcess, upstream: str, kind: str) -> None:
    assert (
        await _call(outbound_server, kind, "allowed", f"{upstream}/hello") == "status=200\nhi from upstream"
    )
    posted = await _call(outbound_server, kind, "allowed", f"{upstream}/echo", "POST", b"payload")
    assert posted == "status=200\nPOST:payload"


async def test_wildcard_host(outbound_server: ServerProcess, upstream: str, kind: str) -> None:
    assert (
        await _call(outbound_server, kind, "wildcard", f"{upstream}/hello") == "status=200\nhi from upstream"
    )


async def test_redirects_are_followed_and_bounded(
    outbound_server: ServerProcess, upstream: str, kind: str
) -> None:
    assert (
        await _call(outbound_server, kind, "allowed", f"{upstream}/redirect")
        == "status=200\nhi from upstream"
    )
    looped = await _call(outbound_server, kind, "allowed", f"{upstream}/loop")
    assert looped == _error(kind, "Redirect Loop", 6, "more than 10 redirects")


async def test_denied_by_host(outbound_server: ServerProcess, upstream: str, kind: str) -> None:
    assert await _call(outbound_server, kind, "wronghost", f"{upstream}/hello") == _error(
        kind,
        "Not allowed",
        3,
        "The host '127.0.0.1' is not allowed for this worker. Please, update the worker configuration.",
    )


async def test_denied_by_method(outbound_server: ServerProcess, upstream: str, kind: str) -> None:
    assert await _call(outbound_server, kind, "onlyget", f"{upstream}/echo", "POST", b"x") == _error(
        kind,
        "Not allowed",
        3,
        "The method 'POST' is not allowed for this worker. Please, update the configuration.",
    )


async def test_denied_by_scheme(outbound_server: ServerProcess, upstream: str, kind: str) -> None:
    assert await _call(outbound_server, kind, "httpsonly", f"{upstream}/hello") == _error(
        kind,
        "Not allowed",
        3,
        "The URI must use HTTPS. You can allow http requests in the worker configuration",
    )


async def test_slow_upstream_is_cut_at_the_deadline(
    outbound_server: ServerProcess, upstream: str, kind: str
) -> None:
    with trio.fail_after(4):  # the upstream takes 5 s; the worker's deadline is 0.8 s
        text = await _call(outbound_server, kind, "slow", f"{upstream}/slow")
    assert text.startswith(_error(kind, "Request Timeout", 5, ""))


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("api.example.com", ["api.example.com"], True),
        ("API.example.com", ["api.example.com"], True),
        ("a.example.com", ["*.example.com"], True),
        ("a.b.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("badexample.com", ["*.example.com"], False),
        ("example.com.evil.net", ["example.com"], False),
        ("anything", [], False),
    ],
)
def test_host_matching(host: str, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


LOCAL_POLICY = HttpPolicy(["127.0.0.1"], ["GET", "POST"], True)


def test_response_size_is_capped(upstream: str) -> None:
    with pytest.raises(OutboundError) as caught:
        send(LOCAL_POLICY, "GET", f"{upstream}/big", [], None, clock.monotonic() + 10)
    assert caught.value.kind is HttpErrorKind.INVALID_RESPONSE_BODY
    assert str(MAX_RESPONSE_BYTES) in caught.value.message


def test_every_redirect_hop_is_checked_against_the_policy(upstream: str) -> None:
    with pytest.raises(OutboundError) as caught:
        send(LOCAL_POLICY, "GET", f"{upstream}/offsite", [], None, clock.monotonic() + 10)
    assert caught.value.kind is HttpErrorKind.NOT_ALLOWED
    assert "'example.com' is not allowed" in caught.value.message


def test_response_headers_and_body_come_back(upstream: str) -> None:
    response = send(
        LOCAL_POLICY, "GET", f"{upstream}/hello", [("x-client", "1")], None, clock.monotonic() + 10
    )
    assert (response.status, response.body) == (200, b"hi from upstream")
    assert ("x-up", "1") in response.headers
