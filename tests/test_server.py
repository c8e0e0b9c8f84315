"""The test project (tests/project) through a real supervisor, real runners and real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.helpers import TEST_PROJECT, ServerProcess, http, serving


async def test_compiled_worker_status_and_headers(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/hello")
    assert response.status == 201
    assert response.text == "hello"
    assert response.headers["content-type"] == "text/html"  # wws's default
    assert response.headers["x-test"] == "yes"  # "_" in header names becomes "-"


async def test_reactor_worker_runs_its_initializer(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/reactor")
    assert (response.status, response.text) == (201, "from a reactor")


async def test_dynamic_route_params(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/items/42")
    assert response.status == 200
    assert "Hello, user 42" in response.text


async def test_dynamic_params_are_percent_decoded_and_escaped_by_the_worker(
    project_server: ServerProcess,
) -> None:
    response = await http(project_server.port, "GET", "/items/%3Cb%3E")
    assert "Hello, user &lt;b&gt;" in response.text


async def test_catch_all_params_keep_slashes(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/files/a/b/c")
    assert "Hello, user a/b/c" in response.text


async def test_request_reaches_the_worker(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "POST", "/api/echo?x=1", body=b'say "hi"')
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == (
        f'method=POST\nurl=http://127.0.0.1:{project_server.port}/api/echo?x=1\nbody=say "hi"\n'
    )


async def test_trailing_and_repeated_slashes_are_trimmed(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "//api//echo/")
    assert response.status == 200
    assert "url=http://127.0.0.1:" in response.text and "/api/echo\n" in response.text


async def test_worker_sees_no_host_environment(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/env")
    assert (response.status, response.text) == (200, "0")


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/trap", 500, "trap"),
        ("/bad", 500, "bad-output"),
        ("/exit", 500, "exit"),
        ("/grow", 500, "memory-limit"),
    ],
)
async def test_failures_answer_with_their_kind_and_no_detail(
    project_server: ServerProcess, path: str, status: int, kind: str
) -> None:
    mark = len(project_server.stderr_lines)
    response = await http(project_server.port, "GET", path)
    assert response.status == status
    assert response.headers["x-wws-failure"] == kind
    # The client sees a fixed page; the log has the detail and the worker's file.
    assert "wasm" not in response.text and "/" not in response.text.replace("</p>", "")
    project_server.wait_for(rf"worker {path} \({path[1:]}\.wat\) failed: {kind}", start=mark)


async def test_declared_body_over_the_limit_is_413_before_upload(project_server: ServerProcess) -> None:
    head = f"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {257 << 10}\r\nConnection: close\r\n\r\n"
    response = await http(project_server.port, "POST", "/api/echo", raw=head.encode())
    assert response.status == 413
    assert response.headers["x-wws-failure"] == "body-too-large"


async def test_streamed_body_over_the_limit_is_413(project_server: ServerProcess) -> None:
    chunk = b"x" * 4096
    pieces = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 64 + [b"1\r\nx\r\n0\r\n\r\n"]
    head = b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    response = await http(project_server.port, "POST", "/api/echo", raw=head + b"".join(pieces))
    assert response.status == 413


async def test_body_at_the_limit_is_accepted(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "POST", "/api/echo", body=b"y" * (256 << 10))
    assert response.status == 200


async def test_malformed_http_is_400(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/", raw=b"NOT HTTP AT ALL\r\n\r\n")
    assert response.status == 400
    # The server is unharmed.
    assert (await http(project_server.port, "GET", "/hello")).status == 201


async def test_infinite_loop_is_504_while_other_routes_keep_answering(project_server: ServerProcess) -> None:
    healthy: list[int] = []
    loop_done = trio.Event()

    async def keep_asking() -> None:
        while not loop_done.is_set():
            healthy.append((await http(project_server.port, "GET", "/hello")).status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_asking)
        with trio.fail_after(10):
            response = await http(project_server.port, "GET", "/loop")
        loop_done.set()
    assert response.status == 504
    assert response.headers["x-wws-failure"] in ("out-of-fuel", "timeout")
    assert healthy and set(healthy) == {201}


async def test_timeout_limit_stops_a_loop_with_plenty_of_fuel(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "1", "--timeout-ms", "300"], cache_dir) as server:
        with trio.fail_after(5):
            response = await http(server.port, "GET", "/loop")
        assert response.status == 504
        assert response.headers["x-wws-failure"] == "timeout"
        await trio.to_thread.run_sync(lambda: server.wait_for(r"failed: timeout: wasm trap: interrupt"))


async def test_stuck_host_call_is_killed_at_the_supervisor_deadline(project_server: ServerProcess) -> None:
    mark = len(project_server.stderr_lines)
    with trio.fail_after(10):
        response = await http(project_server.port, "GET", "/sleep")
    assert response.status == 504
    assert response.headers["x-wws-failure"] == "timeout"
    match = project_server.wait_for(
        r"runner (\d+) lost during request \d+: no answer within .*runner killed", start=mark
    )
    project_server.wait_for(r"killed by SIGKILL", start=mark)
    assert match
    # A replacement runner serves the next requests.
    for _ in range(4):
        assert (await http(project_server.port, "GET", "/hello")).status == 201


async def test_base64_body_and_status_fallback(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/b64")
    assert response.status == 200
    assert response.body == b"\x00\x01\x02\x03\xff"
    assert response.headers["content-type"] == "application/octet-stream"


async def test_nothing_survives_between_requests(project_server: ServerProcess) -> None:
    bodies = {(await http(project_server.port, "GET", "/counter")).text for _ in range(6)}
    assert bodies == {"11"}


async def test_percent_encoded_non_ascii_route(project_server: ServerProcess) -> None:
    response = await http(project_server.port, "GET", "/unicode/caf%C3%A9")
    assert response.status == 201


async def test_server_unharmed_after_each_failure(project_server: ServerProcess) -> None:
    for path in ("/grow", "/trap", "/bad", "/exit", "/loop"):
        assert (await http(project_server.port, "GET", path)).status >= 500
        assert (await http(project_server.port, "GET", "/hello")).status == 201


async def test_worker_stderr_is_logged_with_its_route(project_server: ServerProcess) -> None:
    mark = len(project_server.stderr_lines)
    response = await http(project_server.port, "GET", "/noisy")
    assert (response.status, response.text) == (200, "ok")
    project_server.wait_for(r"\[/noisy\] noisy worker says hi$", start=mark)
