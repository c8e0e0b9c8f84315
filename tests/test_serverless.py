"""serverless-wasm through a real server: the [[applications]] config, every
host-ABI import (TCP allowed, denied and cut at the deadline), complete
responses, the limits and failure kinds, startup errors, and handle modules
in a wws folder."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES, ServerProcess, http

HERE = Path(__file__).resolve().parent / "serverlessproject"
HANDLE = HERE / "handle.wat"


class Peer:
    """A TCP service on loopback: answers "pong:" + what it read, or (slow)
    accepts and never answers until the test ends."""

    def __init__(self, slow: bool = False) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._slow = slow
        self._done = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = conn.recv(100)
                if self._slow:
                    self._done.wait()
                else:
                    conn.sendall(b"pong:" + data)

    def close(self) -> None:
        self._done.set()
        self._listener.close()


def _application(url_path: str, function: str, extra: str = "", method: str = "GET") -> str:
    return (
        f'[[applications]]\nfile_path = "{HANDLE}"\nmethod = "{method}"\nurl_path = "{url_path}"\n'
        f'function = "{function}"\n{extra}\n'
    )


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[Peer, Peer]]:
    echo, slow = Peer(), Peer(slow=True)
    yield echo, slow
    echo.close()
    slow.close()


@pytest.fixture(scope="module")
def handle_server(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, peers: tuple[Peer, Peer]
) -> Iterator[ServerProcess]:
    echo, slow = peers
    to_echo, to_slow = f"127.0.0.1:{echo.port}", f"127.0.0.1:{slow.port}"
    config = 'listen_address = "127.0.0.1:8080"\n\n' + "".join(
        [
            _application("/hello", "hello"),
            _application("/hello", "body_only", method="POST"),
            *(_application(f"/{name}", name) for name in ("status_only", "body_only", "nothing")),
            _application("/db", "db", 'env = { "/env/backend" = "backend-1:8181" }'),
            _application("/tcp", "tcp", f'env = {{ "/target" = "{to_echo}" }}\ntcp_allowed = ["{to_echo}"]'),
            _application("/tcp/denied", "tcp", f'env = {{ "/target" = "{to_echo}" }}'),
            _application(
                "/tcp/slow", "tcp", f'env = {{ "/target" = "{to_slow}" }}\ntcp_allowed = ["{to_slow}"]'
            ),
            *(_application(f"/{name}", name) for name in ("bad_status", "out_of_bounds", "spin", "grow")),
        ]
    )
    path = tmp_path_factory.mktemp("serverless") / "config.toml"
    path.write_text(config)
    args = ["-w", "2", "--fuel", "50000000", "--memory-mb", "16", "--timeout-ms", "1000"]
    server = ServerProcess(path, args, cache_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def test_every_response_call_and_log(handle_server: ServerProcess) -> None:
    mark = len(handle_server.stderr_lines)
    response = await http(handle_server.port, "GET", "/hello?query=ignored")
    assert (response.status, response.body) == (200, b"hello\n")
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-length"] == "6"  # ours, not the module's 999
    assert response.headers["x-dup"] == "b"  # the test client keeps the last; both were sent
    handle_server.wait_for(r"\[/hello\] .*handle\.wat:hello: hi from wasm", start=mark)


async def test_repeated_headers_are_all_sent(handle_server: ServerProcess) -> None:
    raw = f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{handle_server.port}\r\nConnection: close\r\n\r\n"
    response = await http(handle_server.port, "GET", "/", raw=raw.encode())
    assert response.status == 200
    # The helper keeps one value per name; count the raw lines instead.
    import trio

    stream = await trio.open_tcp_stream("127.0.0.1", handle_server.port)
    async with stream:
        await stream.send_all(raw.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\nx-dup: ") == 2
    assert head.index(b"x-dup: a") < head.index(b"x-dup: b")
    assert head.count(b"content-length") == 1


async def test_routes_match_method_and_path(handle_server: ServerProcess) -> None:
    port = handle_server.port
    assert (await http(port, "POST", "/hello")).body == b"just a body"
    assert (await http(port, "PUT", "/hello")).status == 404
    assert (await http(port, "GET", "/hello/")).status == 404


async def test_status_or_body_alone_is_completed(handle_server: ServerProcess) -> None:
    status_only = await http(handle_server.port, "GET", "/status_only")
    assert (status_only.status, status_only.body, status_only.headers["content-length"]) == (201, b"", "0")
    body_only = await http(handle_server.port, "GET", "/body_only")
    assert (body_only.status, body_only.body, body_only.headers["content-length"]) == (
        200,
        b"just a body",
        "11",
    )
    nothing = await http(handle_server.port, "GET", "/nothing")
    assert (nothing.status, nothing.headers["x-wws-failure"]) == (500, "bad-output")


async def test_db_get_reads_the_env_table(handle_server: ServerProcess) -> None:
    response = await http(handle_server.port, "GET", "/db")
    assert (response.status, response.body, response.headers["x-missing"]) == (200, b"backend-1:8181", "yes")


async def test_tcp_allowed(handle_server: ServerProcess, peers: tuple[Peer, Peer]) -> None:
    response = await http(handle_server.port, "GET", "/tcp")
    assert (response.status, response.body) == (200, b"pong:ping\n")


async def test_tcp_denied_by_default(handle_server: ServerProcess, peers: tuple[Peer, Peer]) -> None:
    echo, _ = peers
    before = echo.connections
    mark = len(handle_server.stderr_lines)
    response = await http(handle_server.port, "GET", "/tcp/denied")
    assert (response.status, response.body) == (502, b"refused")  # the module saw -1 and said so
    handle_server.wait_for(r"tcp_connect to .* refused: not in this application's tcp_allowed", start=mark)
    assert echo.connections == before


async def test_slow_tcp_peer_is_cut_at_the_deadline(handle_server: ServerProcess) -> None:
    started = time.monotonic()
    response = await http(handle_server.port, "GET", "/tcp/slow")
    elapsed = time.monotonic() - started
    assert (response.status, response.headers["x-wws-failure"]) == (504, "timeout")
    assert 0.9 < elapsed < 3.0  # --timeout-ms 1000


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/bad_status", 500, "bad-output"),
        ("/out_of_bounds", 500, "trap"),
        ("/spin", 504, "out-of-fuel"),
        ("/grow", 500, "memory-limit"),
    ],
)
async def test_failures(handle_server: ServerProcess, path: str, status: int, kind: str) -> None:
    response = await http(handle_server.port, "GET", path)
    assert (response.status, response.headers["x-wws-failure"]) == (status, kind)
    # The next request gets a fresh instance and memory.
    assert (await http(handle_server.port, "GET", "/hello")).status == 200


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        (HERE / "own_memory.wat", "does not import env.memory"),
        (HERE / "unknown_import.wat", "unknown import env.nope"),
        (HANDLE, "the function 'missing' is not exported by the module"),
        (HERE / "absent.wasm", "the module"),
    ],
)
def test_startup_errors_name_file_and_problem(
    tmp_path: Path, cache_dir: Path, module: Path, problem: str
) -> None:
    config = tmp_path / "config.toml"
    function = "missing" if module == HANDLE else "handle"
    config.write_text(
        f'[[applications]]\nfile_path = "{module}"\nmethod = "GET"\nurl_path = "/"\nfunction = "{function}"\n'
    )
    server = ServerProcess(config, [], cache_dir)
    try:
        assert server.wait_exit() == 1
        stderr = "\n".join(server.stderr_lines)
    finally:
        server.stop()
    assert f"{config}:" in stderr
    assert problem in stderr


async def test_example_config(cache_dir: Path) -> None:
    server = ServerProcess(EXAMPLES / "serverless" / "config.toml", ["-w", "1"], cache_dir)
    try:
        server.wait_ready()
        response = await http(server.port, "GET", "/hello")
        assert (response.status, response.text) == (200, "Hello world from wasm!\n")
    finally:
        server.stop()


async def test_handle_module_in_a_wws_folder(cache_dir: Path) -> None:
    server = ServerProcess(HERE / "folder", ["-w", "1"], cache_dir)
    try:
        server.wait_ready()
        response = await http(server.port, "POST", "/handle")
        assert (response.status, response.text) == (202, "from a handle module in a folder\n")
        hello = await http(server.port, "GET", "/hello")  # a wws worker beside it
        assert (hello.status, hello.text) == (201, "hello")
    finally:
        server.stop()
