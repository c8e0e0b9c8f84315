"""--prefix and --ignore through a real server."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers import TEST_PROJECT, http, serving


async def test_prefix_mounts_routes_and_public(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "1", "--prefix", "app/"], cache_dir) as server:
        port = server.port
        assert f"    - http://127.0.0.1:{port}/app/hello" in server.stdout_lines
        assert (await http(port, "GET", "/app/hello")).status == 201
        assert (await http(port, "GET", "/app/items/7")).text.count("Hello, user 7") == 1
        assert (await http(port, "GET", "/app/style.css")).status == 200
        assert (await http(port, "GET", "/app")).text == "<h1>test home</h1>\n"
        assert (await http(port, "GET", "/hello")).status == 404
        assert (await http(port, "GET", "/style.css")).status == 404


async def test_ignore_globs_drop_workers(cache_dir: Path) -> None:
    async with serving(
        TEST_PROJECT, ["-w", "1", "--ignore", "**/items/**", "--ignore", "h*.wat"], cache_dir
    ) as server:
        port = server.port
        routes = [line for line in server.stdout_lines if line.startswith("    - ")]
        assert not any("/items/" in line or line.endswith("/hello") for line in routes)
        assert any(line.endswith("/reactor") for line in routes)
        assert (await http(port, "GET", "/hello")).status == 404
        # The public file under items/ is still served: --ignore only affects workers.
        assert (await http(port, "GET", "/items/static.txt")).status == 200


async def test_access_log(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "1", "--access-log"], cache_dir) as server:
        port = server.port
        assert (await http(port, "GET", "/hello?x=1")).status == 201
        await trio.to_thread.run_sync(
            lambda: server.wait_for(r'wws\.access: 127\.0\.0\.1:\d+ "GET /hello\?x=1 1\.1" 201 5 ')
        )
