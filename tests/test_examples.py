"""examples/ served as a user would: `wws-supervisor examples/`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES, REPO, ServerProcess, http


@pytest.fixture(scope="module")
def examples_server(cache_dir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(EXAMPLES, ["-w", "2"], cache_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_startup_lists_every_route(examples_server: ServerProcess) -> None:
    out = "\n".join(examples_server.stdout_lines)
    port = examples_server.port
    for route, file in [
        ("/hello", "hello.wat"),
        ("/c/echo", "c/echo.wasm"),
        ("/users/[id]", "users/[id].wasm"),
    ]:
        assert f"    - http://127.0.0.1:{port}{route}\n      => {EXAMPLES}/{file}" in out
    assert out.splitlines()[0] == f"⚙️  Preparing the project from: {EXAMPLES}"


async def test_every_example_answers(examples_server: ServerProcess) -> None:
    port = examples_server.port
    home = await http(port, "GET", "/")
    assert home.status == 200 and "wws-supervisor examples" in home.text
    hello = await http(port, "GET", "/hello")
    assert hello.status == 200 and "Hello from WebAssembly text" in hello.text
    user = await http(port, "GET", "/users/ada")
    assert user.status == 200 and "Hello, user ada" in user.text
    echo = await http(port, "POST", "/c/echo?greeting=hi", body=b"ping")
    assert echo.status == 200 and "method=POST" in echo.text and "body=ping" in echo.text
    about = await http(port, "GET", "/about")
    assert about.status == 200 and "<h1>About</h1>" in about.text
    css = await http(port, "GET", "/style.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"


async def test_sources_are_not_served(examples_server: ServerProcess) -> None:
    for path in ("/_src/user.c", "/_src/kit.h", "/_src/build.sh", "/hello.wat", "/c/echo.wasm"):
        assert (await http(examples_server.port, "GET", path)).status == 404
    # Under a dynamic route the file name is just a parameter value.
    as_param = await http(examples_server.port, "GET", "/users/[id].wasm")
    assert b"\x00asm" not in as_param.body
    assert "Hello, user [id].wasm" in as_param.text


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_compiled_examples_rebuild_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("ziglang")
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    built = [copy / "users" / "[id].wasm", copy / "c" / "echo.wasm"]
    for wasm in built:
        wasm.unlink()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(copy / "_src" / "build.sh")], check=True, env=env, cwd=REPO, timeout=600)
    for wasm in built:
        original = EXAMPLES / wasm.relative_to(copy)
        assert _digest(wasm) == _digest(original), f"{original} is not what its source builds"
