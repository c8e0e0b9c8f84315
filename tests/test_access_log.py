"""The access log through a real server: one line per request, even when the
client closes the moment it has the answer; status ``-`` for a client that
left before there was anything to answer."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from tests.helpers import TEST_PROJECT, http, serving


async def test_each_answered_request_is_logged_once_with_its_status(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "2"], cache_dir) as server:
        # Connection: close clients close as soon as the body is complete:
        # that used to race hypercorn's own bookkeeping into a second line.
        for _ in range(60):
            assert (await http(server.port, "GET", "/hello")).status == 201
        assert (await http(server.port, "GET", "/hello?last")).status == 201
        await trio.to_thread.run_sync(lambda: server.wait_for(r'"GET /hello\?last 1.1" 201'))
        lines = [line for line in server.lines if "wws.access" in line and "GET /hello" in line]
        assert len(lines) == 61
        assert all(re.search(r'" 201 \d+ [\d.]+s$', line) for line in lines), lines


async def test_a_client_gone_before_its_answer_is_logged_once_without_a_status(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, ["-w", "2"], cache_dir) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        # Gone halfway through its body: there is nothing to answer.
        await stream.send_all(b"POST /hello?gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
        await stream.aclose()
        await trio.to_thread.run_sync(lambda: server.wait_for(r'"POST /hello\?gone 1.1" - -'))
        # The worker never saw the truncated body as if it were whole.
        assert any("left before its body arrived; not run" in line for line in server.lines)
        assert (await http(server.port, "GET", "/hello?after")).status == 201
        await trio.to_thread.run_sync(lambda: server.wait_for(r'"GET /hello\?after 1.1" 201'))
        gone = [line for line in server.lines if "/hello?gone" in line and "wws.access" in line]
        assert len(gone) == 1, gone
