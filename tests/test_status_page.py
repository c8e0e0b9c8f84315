"""The admin status page in headless Chromium (Debian's ``chromium``): it
renders, what it shows matches the JSON API, it asks for the token when one
is needed, and nothing is logged to its console.

Chromium is driven through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes, read
from fd 3 and written to fd 4), so no extra client library is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import TEST_PROJECT, ServerProcess, http
from tests.test_admin import admin_port

_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root here
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-pipe",
]
_TIMEOUT_S = 30.0
_REFRESHED = """new Promise((resolve) => {
  const check = () =>
    Number(document.body.dataset.refreshes || 0) >= %d ? resolve(true) : setTimeout(check, 20);
  check();
})"""
_TABLES = """JSON.stringify({
  summary: document.getElementById("summary").textContent,
  routes: [...document.querySelectorAll("#routes tr")].map((tr) => ({
    route: tr.dataset.route, cells: [...tr.cells].map((td) => td.textContent)})),
  runners: [...document.querySelectorAll("#runners tr")].map((tr) => ({
    pid: tr.dataset.pid, cells: [...tr.cells].map((td) => td.textContent)})),
  failures: [...document.querySelectorAll("#failures tr")].map(
    (tr) => [...tr.cells].map((td) => td.textContent)),
  login: getComputedStyle(document.getElementById("login")).display,
})"""


class Browser:
    """Headless Chromium and one page in it, over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        executable = shutil.which("chromium")
        if executable is None:
            raise AssertionError("the status page tests need Debian's chromium: bash tests/run installs it")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def wire_fds() -> None:  # in the child: its fd 3 reads our commands, its fd 4 takes replies
            os.dup2(commands_read, 3)
            os.dup2(replies_write, 4)

        self.proc = subprocess.Popen(
            [executable, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,
            # Listed by their numbers in the child: descriptors not listed are
            # closed after preexec_fn has moved the pipes there.
            pass_fds=(3, 4),
            start_new_session=True,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._ids = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> Any:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._ids:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self._replies], [], [], max(0.0, left))
            if not readable:
                raise AssertionError("Chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "timeout": 20_000},
            session=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        seen = len(self.events)
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + _TIMEOUT_S
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
            self.events.append(self._receive(deadline))

    def wait_refreshes(self, count: int) -> None:
        assert self.evaluate(_REFRESHED % count) is True

    def tables(self) -> dict[str, Any]:
        return dict(json.loads(self.evaluate(_TABLES)))

    def console_problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and errors the browser logged."""
        problems = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                problems.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                problems.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                problems.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return problems

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._commands)  # Chromium exits when its pipe closes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._replies)


@contextlib.contextmanager
def browser(tmp_path: Path) -> Iterator[Browser]:
    instance = Browser(tmp_path / "chromium-profile")
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def admin_server(cache_dir: Path) -> Iterator[ServerProcess]:
    args = ["-w", "2", "--fuel", "50000000", "--timeout-ms", "1500", "--admin", "127.0.0.1:0"]
    server = ServerProcess(TEST_PROJECT, [*args, "--admin-token", "page-token"], cache_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


_AUTH = {"Authorization": "Bearer page-token"}


async def _authed(port: int, path: str) -> Any:
    response = await http(port, "GET", path, headers=_AUTH)
    assert response.status == 200
    return json.loads(response.body)


async def test_the_page_shows_what_the_api_says(admin_server: ServerProcess, tmp_path: Path) -> None:
    server = admin_server
    admin = admin_port(server)
    for _ in range(3):
        assert (await http(server.port, "GET", "/hello")).status == 201
    assert (await http(server.port, "GET", "/trap")).status == 500
    with browser(tmp_path) as chromium:
        # The token travels in the fragment, which never reaches the server's logs.
        await trio.to_thread.run_sync(
            chromium.open, f"http://127.0.0.1:{admin}/?refresh=200#token=page-token"
        )
        # Two refreshes: the second one has rates, and the state file has caught up.
        await trio.to_thread.run_sync(chromium.wait_refreshes, 3)
        shown = await trio.to_thread.run_sync(chromium.tables)
        workers = (await _authed(admin, "/api/v1/workers"))["workers"]
        runners = (await _authed(admin, "/api/v1/runners"))["runners"]
        requests = await _authed(admin, "/api/v1/requests")
        assert shown["login"] == "none"
        assert [row["route"] for row in shown["routes"]] == [w["route"] for w in workers]
        counts = {entry["route"]: entry for entry in requests["routes"]}
        for row, worker in zip(shown["routes"], workers, strict=True):
            cells = row["cells"]
            assert cells[:3] == [worker["route"], worker["file"], worker["kind"]]
            assert cells[3:6] == [str(worker["limits"][k]) for k in ("fuel", "memory_mb", "timeout_ms")]
            entry = counts.get(worker["route"], {"requests": 0, "failures": 0})
            assert cells[6] == str(entry["requests"]) and cells[8] == str(entry["failures"])
        assert {row["route"]: row["cells"][6] for row in shown["routes"]}["/hello"] == "3"
        assert [row["pid"] for row in shown["runners"]] == [str(r["pid"]) for r in runners]
        for row, runner in zip(shown["runners"], runners, strict=True):
            assert row["cells"][2:6] == [
                str(runner["slot"]),
                str(runner["pid"]),
                runner["state"],
                str(runner["requests_served"]),
            ]
        assert sum(int(row["cells"][5]) for row in shown["runners"]) == 4
        assert [row[2:] for row in shown["failures"]] == [["/trap", "GET /trap", "500", "trap"]]
        assert "2 runners up" in shown["summary"]
        assert chromium.console_problems() == []


async def test_the_page_asks_for_the_token(admin_server: ServerProcess, tmp_path: Path) -> None:
    admin = admin_port(admin_server)
    with browser(tmp_path) as chromium:
        await trio.to_thread.run_sync(chromium.open, f"http://127.0.0.1:{admin}/?refresh=200")
        shown_before = await trio.to_thread.run_sync(
            chromium.evaluate,
            """new Promise((resolve) => {
              const check = () => getComputedStyle(document.getElementById("login")).display === "block"
                ? resolve(document.getElementById("summary").textContent) : setTimeout(check, 20);
              check();
            })""",
        )
        assert shown_before == "This admin listener needs its token."
        await trio.to_thread.run_sync(
            chromium.evaluate,
            """document.getElementById("token").value = "page-token";
               document.getElementById("login").requestSubmit(); true""",
        )
        await trio.to_thread.run_sync(chromium.wait_refreshes, 1)
        shown = await trio.to_thread.run_sync(chromium.tables)
        assert shown["login"] == "none" and len(shown["runners"]) == 2
        # Only the refused calls were logged (as failed loads), and no script error.
        problems = chromium.console_problems()
        assert problems and all("401" in problem for problem in problems), problems
    assert len((await _authed(admin, "/api/v1/runners"))["runners"]) == 2
