"""public/ files, precedence over dynamic routes, and traversal attempts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TEST_PROJECT, ServerProcess, http


async def test_index_html_at_root(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/")
    assert response.status == 200
    assert response.text == "<h1>test home</h1>\n"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["etag"]
    assert response.headers["last-modified"].endswith("GMT")


async def test_content_type_and_folder_index(project_server: ServerProcess) -> None:
    css = await http(project_server.port, "GET", "/style.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    docs = await http(project_server.port, "GET", "/docs")
    assert docs.text == "<p>docs index</p>\n"
    docs_slash = await http(project_server.port, "GET", "/docs/")
    assert docs_slash.text == "<p>docs index</p>\n"


async def test_head_and_conditional_get(project_server: ServerProcess) -> None:
    head = await http(project_server.port, "HEAD", "/style.css")
    assert head.status == 200
    assert head.headers["content-length"] == str(len("body { color: red }\n"))
    again = await http(
        project_server.port, "GET", "/style.css", headers={"If-None-Match": head.headers["etag"]}
    )
    assert again.status == 304 and again.body == b""


async def test_other_methods_on_a_file_are_405(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "POST", "/style.css", body=b"x")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_public_file_wins_over_dynamic_route(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/items/static.txt")
    assert response.text == "static item\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_unknown_path_serves_custom_404_with_404_status(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/no/such/page")
    assert response.status == 404
    assert response.text == "<p>custom not found</p>\n"


@pytest.mark.parametrize(
    "path",
    [
        "/hello.wat",
        "/api/echo.wasm",
        "/_private/secret.wat",
        "/_hidden",
        "/_hidden.wat",
        "/public/index.html",
        "/.hidden",
        "/../README.md",
        "/..%2fREADME.md",
        "/%2e%2e/README.md",
        "/%2e%2e%2fREADME.md",
        "/%C0AE%C0AE%C0AFREADME.md",
        "/docs/../../hello.wat",
        "/docs/%2e%2e/%2e%2e/hello.wat",
        "/..%5c..%5chello.wat",
        "/style.css%00.txt",
        f"/{TEST_PROJECT}/hello.wat",
        "/etc/passwd",
        "//etc/passwd",
    ],
)
async def test_no_escape_and_no_sources(project_server: ServerProcess, path: str) -> None:
    response = await http(project_server.port, "GET", path)
    assert response.status == 404, response.text
    assert b"module" not in response.body


@pytest.fixture
def symlink_to_outside() -> Iterator[Path]:
    link = TEST_PROJECT / "public" / "escape"
    link.unlink(missing_ok=True)
    os.symlink(TEST_PROJECT, link)
    try:
        yield link
    finally:
        link.unlink()


async def test_symlink_pointing_outside_public_is_404(
    project_server: ServerProcess, symlink_to_outside: Path
) -> None:
    response = await http(project_server.port, "GET", "/escape/hello.wat")
    assert response.status == 404
