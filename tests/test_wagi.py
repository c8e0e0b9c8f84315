"""WAGI through a real server: modules.toml, the CGI environment and argv,
_routes, volumes, every CGI response case, --env/--env-file, /healthz, the
limits and failure kinds, startup errors, and protocol = "wagi" in a folder."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES, ServerProcess, http, serving

HERE = Path(__file__).resolve().parent / "wagiproject"
MODULES = EXAMPLES / "wagi" / "_modules"

# name -> (what the module prints, the exit code it then calls proc_exit with)
CASES: dict[str, tuple[bytes, int | None]] = {
    "ok": (b"Content-Type: text/plain\n\nhello\n", None),
    "crlf": (b"Content-Type: text/plain\r\n\r\nhi\r\nthere\r\n", None),
    "status_only": (b"Status: 404 Not Found\n\nmissing\n", None),
    "location": (b"Location: /elsewhere\n\n", None),
    "location_then_status": (b"Location: /moved\nStatus: 301 Moved Permanently\n\n", None),
    "status_then_location": (b"Status: 301\nLocation: /found\n\n", None),
    "headers": (b"Content-Type: text/plain\nX-One: 1\nX-Two: a\nnot a header\nX-Two: b\n\nbody", None),
    "bad_status": (b"Status: abc\nContent-Type: text/plain\nX-Kept: yes\n\nmodule body", None),
    "informational": (b"Status: 101\n\n", None),
    "no_blank_line": (b"Content-Type: text/plain\nhello", None),
    "insufficient": (b"X-Only: this\n\nbody", None),
    "not_utf8": (b"Content-Type: text/plain\nX-Bad: \xff\xfe\n\nbody", None),
    "control_char": (b"Content-Type: text/plain\nX-Bad: a\x01b\n\nbody", None),
    "exit_zero": (b"Content-Type: text/plain\n\nthen exit(0)\n", 0),
    "exit_three": (b"Content-Type: text/plain\n\nthen exit(3)\n", 3),
}


def _wat_bytes(data: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in data)


def cgi_module(cases: dict[str, tuple[bytes, int | None]]) -> str:
    """One WAT module exporting a function per case, plus a trap and a loop."""
    data, funcs, offset = [], [], 64
    for name, (output, exit_code) in cases.items():
        data.append(f'  (data (i32.const {offset}) "{_wat_bytes(output)}")')
        body = f"(call $print (i32.const {offset}) (i32.const {len(output)}))"
        if exit_code is not None:
            body += f" (call $exit (i32.const {exit_code}))"
        funcs.append(f'  (func (export "{name}") {body})')
        offset += len(output) + 8
    return "\n".join(
        [
            "(module",
            '  (import "wasi_snapshot_preview1" "fd_write"',
            "    (func $fd_write (param i32 i32 i32 i32) (result i32)))",
            '  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))',
            '  (memory (export "memory") 1)',
            *data,
            "  (func $print (param $at i32) (param $len i32)",
            "    (i32.store (i32.const 0) (local.get $at)) (i32.store (i32.const 4) (local.get $len))",
            "    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))",
            *funcs,
            '  (func (export "_start") (call $print (i32.const 64) (i32.const 32)))',
            '  (func (export "trap") unreachable)',
            '  (func (export "spin") (loop $forever (br $forever)))',
            ")",
        ]
    )


def write_project(root: Path) -> Path:
    (root / "cgi.wat").write_text(cgi_module(CASES))
    entries = [
        ("/env/...", MODULES / "env.wasm", ""),
        ("/argv", MODULES / "env.wasm", 'argv = "prog ${SCRIPT_NAME} ${ARGS}"'),
        ("/app", MODULES / "routes.wasm", ""),
        ("/volume", MODULES / "volume.wasm", f'volumes = {{ "/data" = "{HERE / "data"}" }}'),
        ("/healthz", root / "cgi.wat", ""),  # never reached: the built-in comes first
        *((f"/cgi/{name}", root / "cgi.wat", f'entrypoint = "{name}"') for name in [*CASES, "trap", "spin"]),
    ]
    text = "".join(
        f'[[module]]\nroute = "{route}"\nmodule = "{module}"\n{extra}\n\n' for route, module, extra in entries
    )
    (root / "modules.toml").write_text(text)
    (root / "wagi.env").write_text("# globals\nFROM_FILE=file\nBOTH=from-file\nPATH_INFO=overwritten\n")
    return root / "modules.toml"


@pytest.fixture(scope="module")
def wagi_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("wagi")
    args = ["-w", "2", "--fuel", "20000000", "--timeout-ms", "2000", "--env-file", str(root / "wagi.env")]
    args += ["--env", "BOTH=from-flag", "-e", "QUOTED='quoted value'"]
    server = ServerProcess(write_project(root), args, cache_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _printed(text: str) -> tuple[list[str], dict[str, str], str]:
    args, env, body = [], {}, ""
    for line in text.split("\n"):
        if line.startswith("arg "):
            args.append(line.split(": ", 1)[1])
        elif line.startswith("env "):
            name, _, value = line[4:].partition("=")
            env[name] = value
        elif line.startswith("body: "):
            body = line[6:]
    return args, env, body


async def test_every_cgi_variable(wagi_server: ServerProcess) -> None:
    raw = (
        "POST /env/a%20b/c%3bd?x=1&y=two%20words HTTP/1.1\r\nHost: example.com:8123\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer secret\r\nX-Corrupt: café\r\n"
        'Connection: close\r\nContent-Length: 7\r\n\r\n{"k":1}'
    ).encode()
    response = await http(wagi_server.port, "POST", "/", raw=raw)
    assert response.status == 200
    args, env, body = _printed(response.text)
    assert args == ["/env/a%20b/c%3bd", "x=1", "y=two%20words"]
    assert body == '{"k":1}'
    expected = {
        "AUTH_TYPE": "",
        "CONTENT_LENGTH": "7",
        "CONTENT_TYPE": "application/json",
        "X_FULL_URL": "http://example.com:8123/env/a%20b/c%3bd?x=1&y=two%20words",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "X_MATCHED_ROUTE": "/env/...",
        "QUERY_STRING": "x=1&y=two%20words",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_USER": "",
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/env",
        "X_RAW_PATH_INFO": "/a%20b/c%3bd",
        "PATH_INFO": "/a b/c;d",
        "PATH_TRANSLATED": "/a b/c;d",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "8123",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "WAGI/1",
        "HTTP_HOST": "example.com:8123",
        "HTTP_CONTENT_TYPE": "application/json",
        "HTTP_CONTENT_LENGTH": "7",
        "HTTP_X_CORRUPT": "CORRUPT VALUE",
        # --env-file, then --env over it, then the CGI variables over both.
        "FROM_FILE": "file",
        "BOTH": "from-flag",
        "QUOTED": "quoted value",
    }
    assert env == expected  # nothing else: no Authorization, no Connection, no host variables


async def test_host_without_port_and_no_query(wagi_server: ServerProcess) -> None:
    raw = b"GET /env HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    response = await http(wagi_server.port, "GET", "/", raw=raw)
    args, env, _ = _printed(response.text)
    assert args == ["/env"]
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", str(wagi_server.port))
    assert (env["SCRIPT_NAME"], env["X_RAW_PATH_INFO"], env["QUERY_STRING"]) == ("/env", "", "")
    assert (env["CONTENT_LENGTH"], env["CONTENT_TYPE"]) == ("0", "")
    # HTTP/1.0 without a Host header: the listen address.
    raw = b"GET /env/x HTTP/1.0\r\n\r\n"
    args, env, _ = _printed((await http(wagi_server.port, "GET", "/", raw=raw)).text)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(wagi_server.port))
    assert (env["SERVER_PROTOCOL"], env["PATH_INFO"]) == ("HTTP/1.0", "/x")


async def test_argv_template(wagi_server: ServerProcess) -> None:
    args, env, _ = _printed((await http(wagi_server.port, "GET", "/argv?a=1&b=2")).text)
    assert args == ["prog", "/argv", "a=1", "b=2"]
    assert env["SCRIPT_NAME"] == "/argv"


async def test_routes_export_adds_sub_routes(wagi_server: ServerProcess) -> None:
    port = wagi_server.port
    assert (await http(port, "GET", "/app")).text == "the module's own route\n"
    assert (await http(port, "GET", "/app/hello")).text == "hello from a sub-route\n"
    for path in ("/app/items", "/app/items/", "/app/items/3/4"):
        assert (await http(port, "GET", path)).text == "items, by the wildcard sub-route\n"
    for path in ("/app/", "/app/other", "/app/hello/"):  # exact routes: the slash counts
        assert (await http(port, "GET", path)).status == 404


async def test_volume(wagi_server: ServerProcess) -> None:
    response = await http(wagi_server.port, "GET", "/volume")
    assert (response.status, response.text) == (200, "from the volume\n")


async def test_healthz_is_built_in(wagi_server: ServerProcess) -> None:
    for method in ("GET", "POST"):
        response = await http(wagi_server.port, method, "/healthz")
        assert (response.status, response.text) == (200, "OK")


@pytest.mark.parametrize(
    ("case", "status", "headers", "body"),
    [
        ("ok", 200, {"content-type": "text/plain"}, b"hello\n"),
        ("crlf", 200, {"content-type": "text/plain"}, b"hi\r\nthere\r\n"),
        ("status_only", 404, {}, b"missing\n"),
        ("location", 302, {"location": "/elsewhere"}, b""),
        ("location_then_status", 301, {"location": "/moved"}, b""),
        ("status_then_location", 302, {"location": "/found"}, b""),
        ("headers", 200, {"content-type": "text/plain", "x-one": "1", "x-two": "b"}, b"body"),
        ("bad_status", 502, {"content-type": "text/plain", "x-kept": "yes"}, b"module body"),
        ("informational", 502, {}, b""),
        ("exit_zero", 200, {"content-type": "text/plain"}, b"then exit(0)\n"),
    ],
)
async def test_cgi_responses(
    wagi_server: ServerProcess, case: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    response = await http(wagi_server.port, "GET", f"/cgi/{case}")
    assert (response.status, response.body) == (status, body)
    assert response.headers["content-length"] == str(len(body))
    assert "x-wws-failure" not in response.headers
    shown = {k: v for k, v in response.headers.items() if k not in ("content-length", "date", "connection")}
    assert shown == headers


@pytest.mark.parametrize(
    ("case", "status", "kind"),
    [
        ("no_blank_line", 500, "bad-output"),
        ("insufficient", 500, "bad-output"),
        ("not_utf8", 500, "bad-output"),
        ("control_char", 500, "bad-output"),
        ("exit_three", 500, "exit"),
        ("trap", 500, "trap"),
        ("spin", 504, "out-of-fuel"),
    ],
)
async def test_cgi_failures(wagi_server: ServerProcess, case: str, status: int, kind: str) -> None:
    response = await http(wagi_server.port, "GET", f"/cgi/{case}")
    assert (response.status, response.headers["x-wws-failure"]) == (status, kind)


async def test_a_failure_costs_only_its_request(wagi_server: ServerProcess) -> None:
    for _ in range(3):
        assert (await http(wagi_server.port, "GET", "/cgi/trap")).status == 500
        assert (await http(wagi_server.port, "GET", "/cgi/ok")).text == "hello\n"


def _startup_error(tmp_path: Path, cache_dir: Path, toml: str, *args: str) -> str:
    config = tmp_path / "modules.toml"
    config.write_text(toml)
    server = ServerProcess(config, list(args), cache_dir)
    try:
        assert server.wait_exit() == 1
        return "\n".join(server.stderr_lines)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        (
            '[[module]]\nroute = "/a"\nmodule = "missing.wasm"\n',
            ":3: the module 'missing.wasm' does not exist",
        ),
        (
            f'[[module]]\nroute = "/a"\nmodule = "{MODULES / "env.wasm"}"\nentrypoint = "nope"\n',
            ":1: module {}: the entrypoint 'nope' is not exported by the module".format(MODULES / "env.wasm"),
        ),
        (
            f'\n[[module]]\nroute = "/a"\nmodule = "{HERE / "routes_empty.wat"}"\n',
            ":2: module routes_empty.wat: the _routes export printed no routes".replace(
                "routes_empty.wat", str(HERE / "routes_empty.wat"), 1
            ),
        ),
        (
            f'[[module]]\nroute = "/a"\nmodule = "{HERE / "unknown_import.wat"}"\n',
            "unknown import: `env::nope` has not been defined",
        ),
        ('[[module]]\nroute = "a"\nmodule = "x.wasm"\n', ":2: route 'a' must start with /"),
    ],
)
def test_startup_errors_name_file_and_problem(
    tmp_path: Path, cache_dir: Path, toml: str, problem: str
) -> None:
    stderr = _startup_error(tmp_path, cache_dir, toml)
    assert f"{tmp_path / 'modules.toml'}" in stderr
    assert problem in stderr


def test_env_file_error(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "bad.env").write_text("GOOD=1\nno equals sign\n")
    toml = f'[[module]]\nroute = "/a"\nmodule = "{MODULES / "env.wasm"}"\n'
    stderr = _startup_error(tmp_path, cache_dir, toml, "--env-file", str(tmp_path / "bad.env"))
    assert f"{tmp_path / 'bad.env'}:2: expected NAME=VALUE" in stderr


async def test_protocol_wagi_in_a_wws_folder(cache_dir: Path) -> None:
    server = ServerProcess(HERE / "folder", ["-w", "1"], cache_dir)
    try:
        server.wait_ready()
        port = server.port
        assert (await http(port, "GET", "/cgi")).text == "base\n"
        assert (await http(port, "GET", "/cgi/sub")).text == "sub\n"
        assert (await http(port, "GET", "/cgi/deep/a/b")).text == "deep\n"
        hello = await http(port, "GET", "/hello")  # a wws worker beside it
        assert (hello.status, hello.text) == (201, "hello")
        assert (await http(port, "GET", "/healthz")).status == 404  # WAGI's built-in is for modules.toml
    finally:
        server.stop()


@contextlib.contextmanager
def _upstream(body: bytes) -> Iterator[str]:
    """A plain HTTP server on loopback answering every GET with ``body``; yields its origin."""

    class Upstream(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{upstream.server_address[1]}"
    finally:
        upstream.shutdown()
        upstream.server_close()


def _http_module(url: str, start: str) -> str:
    """A WAGI module with ``wasi_experimental_http``, whose ``_start`` is
    ``start``; it may call ``$get`` (a GET of ``url``, handle at address 20),
    ``$print`` and ``$print_error`` (``error NN`` with the ABI's error code)."""
    return f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "req"
    (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "body_read" (func $body_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{url}")
  (data (i32.const 512) "GET")
  (data (i32.const 1024) "Content-Type: text/plain\\0a\\0a")
  (data (i32.const 1100) "error ")
  (data (i32.const 1200) "second ok")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at)) (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $get (result i32)
    (call $req (i32.const 64) (i32.const {len(url)}) (i32.const 512) (i32.const 3)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 20)))
  (func $print_error (param $err i32)
    (i32.store8 (i32.const 1106) (i32.add (i32.const 48) (i32.div_u (local.get $err) (i32.const 10))))
    (i32.store8 (i32.const 1107) (i32.add (i32.const 48) (i32.rem_u (local.get $err) (i32.const 10))))
    (call $print (i32.const 1100) (i32.const 8)))
  (func (export "_start") (local $err i32)
    (call $print (i32.const 1024) (i32.const 26))
{start}))
"""


def _outbound_module(url: str) -> str:
    """A WAGI module that GETs ``url`` and prints the body, or ``error NN``."""
    return _http_module(
        url,
        """    (local.set $err (call $get))
    (if (local.get $err) (then (call $print_error (local.get $err)) (return)))
    (drop (call $body_read (i32.load (i32.const 20)) (i32.const 2048) (i32.const 1024) (i32.const 24)))
    (drop (call $close (i32.load (i32.const 20))))
    (call $print (i32.const 2048) (i32.load (i32.const 24)))""",
    )


async def test_outbound_http_follows_allowed_hosts(tmp_path: Path, cache_dir: Path) -> None:
    with _upstream(b"upstream says hi") as origin:
        (tmp_path / "fetch.wat").write_text(_outbound_module(f"{origin}/data"))
        entries = [
            ("/allowed", f'allowed_hosts = ["{origin}"]'),
            ("/all", 'allowed_hosts = ["insecure:allow-all"]'),
            ("/other", 'allowed_hosts = ["https://example.com"]'),
            ("/none", ""),
        ]
        (tmp_path / "modules.toml").write_text(
            "".join(f'[[module]]\nroute = "{r}"\nmodule = "fetch.wat"\n{extra}\n\n' for r, extra in entries)
        )
        async with serving(tmp_path / "modules.toml", ["-w", "1"], cache_dir) as server:
            for route in ("/allowed", "/all"):
                response = await http(server.port, "GET", route)
                assert (response.status, response.text) == (200, "upstream says hi")
            for route in ("/other", "/none"):
                response = await http(server.port, "GET", route)
                assert (response.status, response.text) == (200, "error 07")  # DESTINATION_NOT_ALLOWED


def _two_open_module(url: str) -> str:
    """A WAGI module that opens two responses from ``url`` without closing the
    first, and prints ``second ok`` or ``error NN`` for the second."""
    return _http_module(
        url,
        """    (drop (call $get))
    (local.set $err (call $get))
    (if (local.get $err) (then (call $print_error (local.get $err)) (return)))
    (call $print (i32.const 1200) (i32.const 9))""",
    )


async def test_http_max_concurrency_caps_the_responses_a_request_holds_open(
    tmp_path: Path, cache_dir: Path
) -> None:
    with _upstream(b"hi") as origin:
        (tmp_path / "two.wat").write_text(_two_open_module(f"{origin}/data"))
        entries = [("/one", 1), ("/two", 2), ("/unlimited", None)]
        (tmp_path / "modules.toml").write_text(
            "".join(
                f'[[module]]\nroute = "{route}"\nmodule = "two.wat"\nallowed_hosts = ["{origin}"]\n'
                + (f"http_max_concurrency = {cap}\n" if cap is not None else "")
                + "\n"
                for route, cap in entries
            )
        )
        async with serving(tmp_path / "modules.toml", ["-w", "1"], cache_dir) as server:
            one = await http(server.port, "GET", "/one")
            assert (one.status, one.text) == (200, "error 13")  # TOO_MANY_SESSIONS
            for route in ("/two", "/unlimited"):
                response = await http(server.port, "GET", route)
                assert (response.status, response.text) == (200, "second ok")
            # The cap is per request: the next request starts with nothing open.
            assert (await http(server.port, "GET", "/one")).text == "error 13"
            assert (await http(server.port, "GET", "/two")).text == "second ok"
