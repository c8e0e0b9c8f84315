"""The daemon half, through the real server: sd_notify messages on a real
notify socket, reloads under load with zero failed requests, --watch, the
configuration file, JSON logs, TLS and HTTP/2, CORS, and the systemd unit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from tests.helpers import REPO, ServerProcess, http, serving

HERE = Path(__file__).resolve().parent
HELLO = (HERE / "hardproject" / "hello.wat").read_text()


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "site"
    project.mkdir()
    for name in ("hello.wat", "echo.wat"):
        shutil.copy(HERE / "hardproject" / name, project / name)
    return project


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start))
    return match.group(1) if match.groups() else match.group(0)


class NotifyListener:
    """A notify socket read from the start by a thread (the queue of a Unix
    datagram socket holds only a few messages: watchdog pings would fill it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._messages: list[str] = []
        self._cursor = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self._sock.recv(4096).decode()
            except OSError:
                return
            with self._cond:
                self._messages.append(message)
                self._cond.notify_all()

    def next_state(self, timeout: float = 60) -> str:
        """The next message that is not a watchdog ping."""
        with self._cond:
            while True:
                while self._cursor < len(self._messages):
                    message = self._messages[self._cursor]
                    self._cursor += 1
                    if message != "WATCHDOG=1":
                        return message
                if not self._cond.wait(timeout):
                    raise AssertionError(f"no notify message in {timeout} s; got {self._messages}")

    def pings(self) -> int:
        with self._cond:
            return self._messages.count("WATCHDOG=1")

    def wait_for_pings(self, count: int, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._messages.count("WATCHDOG=1") >= count, timeout):
                raise AssertionError(f"fewer than {count} watchdog pings: {self._messages}")

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def notify_listener(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    try:
        yield listener
    finally:
        listener.close()


@pytest.mark.parametrize("frontends", ["1", "2"])
async def test_notify_messages_in_order_with_watchdog_pings(
    tmp_path: Path, cache_dir: Path, notify_listener: NotifyListener, frontends: str
) -> None:
    env = {"NOTIFY_SOCKET": notify_listener.path, "WATCHDOG_USEC": "200000"}
    args = ["-w", "2", "--frontends", frontends]
    server = ServerProcess(_project(tmp_path), args, cache_dir, env=env)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        ready = await trio.to_thread.run_sync(notify_listener.next_state)
        assert ready.startswith("READY=1\nSTATUS=serving 2 routes")
        pings = notify_listener.pings()
        await trio.to_thread.run_sync(notify_listener.wait_for_pings, pings + 3)
        server.signal(signal.SIGHUP)
        reloading = await trio.to_thread.run_sync(notify_listener.next_state)
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert (await trio.to_thread.run_sync(notify_listener.next_state)).startswith(
            "READY=1\nSTATUS=serving generation 2"
        )
        server.signal(signal.SIGTERM)
        assert (await trio.to_thread.run_sync(notify_listener.next_state)).startswith("STOPPING=1")
        assert await trio.to_thread.run_sync(server.wait_exit) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("frontends", ["1", "2"])
async def test_five_reloads_under_load_fail_no_request(
    tmp_path: Path, cache_dir: Path, frontends: str
) -> None:
    project = _project(tmp_path)
    args = ["-w", "2", "--frontends", frontends, "--log-level", "debug"]
    async with serving(project, args, cache_dir) as server:
        failures: list[str] = []
        served = 0
        stop = trio.Event()

        async def load() -> None:
            nonlocal served
            while not stop.is_set():
                try:
                    response = await http(server.port, "GET", "/echo")
                except OSError as exc:
                    failures.append(repr(exc))
                    continue
                served += 1
                if response.status != 200:
                    failures.append(f"{response.status} {response.headers.get('x-wws-failure')}")

        async def reload(expect: str) -> None:
            mark = len(server.lines)
            server.signal(signal.SIGHUP)
            await _wait_log(server, expect, start=mark)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(load)
            # 1. a worker added
            shutil.copy(HERE / "hardproject" / "nocontent.wat", project / "added.wat")
            await reload(r"reloaded")
            assert (await http(server.port, "GET", "/added")).status == 204
            # 2. a worker changed
            (project / "hello.wat").write_text(
                HELLO.replace('\\"data\\":\\"hello\\"', '\\"data\\":\\"hello again\\"')
            )
            await reload(r"reloaded")
            assert (await http(server.port, "GET", "/hello")).text == "hello again"
            # 3. a worker removed
            (project / "added.wat").unlink()
            await reload(r"reloaded")
            assert (await http(server.port, "GET", "/added")).status == 404
            # 4. a broken TOML: the old generation keeps serving
            (project / "hello.toml").write_text("[limits\nfuel = 1\n")
            await reload(r"reload failed, .*keep.* serving: .*hello\.toml")
            assert (await http(server.port, "GET", "/hello")).text == "hello again"
            # 5. fixed again
            (project / "hello.toml").unlink()
            await reload(r"reloaded")
            stop.set()
        assert served > 20
        assert failures == []


async def test_watch_reloads_on_an_edit(tmp_path: Path, cache_dir: Path) -> None:
    project = _project(tmp_path)
    async with serving(project, ["-w", "1", "--watch"], cache_dir) as server:
        await _wait_log(server, r"watching .*: a change reloads the project")
        mark = len(server.lines)
        shutil.copy(HERE / "hardproject" / "nocontent.wat", project / "fresh.wat")
        await _wait_log(server, r"reloaded", start=mark)
        assert (await http(server.port, "GET", "/fresh")).status == 204


async def test_config_file_holds_options_and_flags_override_it(tmp_path: Path, cache_dir: Path) -> None:
    config = tmp_path / "wws.toml"
    config.write_text('workers = 1\nprefix = "/app"\nlog-format = "json"\nno-access-log = false\n')
    async with serving(
        _project(tmp_path), ["--config", str(config), "--prefix", "/api"], cache_dir
    ) as server:
        assert (await http(server.port, "GET", "/api/hello")).status == 201
        assert (await http(server.port, "GET", "/app/hello")).status == 404
        # JSON logs: every line of the stream parses (the startup lines too).
        records = [json.loads(line) for line in server.stdout_lines if line.strip()]
        assert {"time", "level", "logger", "message"} <= set(records[0])
        assert any("Start serving requests" in r["message"] for r in records)


def test_an_unknown_key_in_the_config_file_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "wws.toml"
    config.write_text("wrokers = 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", str(tmp_path), "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{config}: unknown option 'wrokers'" in result.stderr


async def test_tls_and_http2(tmp_path: Path, cache_dir: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    args = ["-w", "1", "--certfile", str(certfile), "--keyfile", str(keyfile)]
    async with serving(_project(tmp_path), args, cache_dir) as server:
        context = ssl.create_default_context()
        ca.configure_trust(context)

        def get(http2: bool) -> httpx.Response:
            with httpx.Client(http2=http2, verify=context) as client:
                return client.get(f"https://127.0.0.1:{server.port}/hello")

        one = await trio.to_thread.run_sync(get, False)
        two = await trio.to_thread.run_sync(get, True)
        assert (one.status_code, one.http_version, one.text) == (201, "HTTP/1.1", "hello")
        assert (two.status_code, two.http_version, two.text) == (201, "HTTP/2", "hello")


async def test_cors_headers_and_preflight(tmp_path: Path, cache_dir: Path) -> None:
    args = ["-w", "1", "--cors", "https://a.example", "--cors", "https://b.example"]
    async with serving(_project(tmp_path), args, cache_dir) as server:
        response = await http(server.port, "GET", "/hello", headers={"Origin": "https://a.example"})
        assert response.headers["access-control-allow-origin"] == "https://a.example,https://b.example"
        preflight = await http(
            server.port,
            "OPTIONS",
            "/echo",
            headers={
                "Origin": "https://a.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "x-token",
            },
        )
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-methods"] == "PUT"
        assert preflight.headers["access-control-allow-headers"] == "x-token"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "systemd-unit", str(_project(tmp_path)), "-p", "8080"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    unit = result.stdout
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes"):
        assert line in unit
    assert "\nMemoryDenyWriteExecute=yes" not in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax cannot be verified here")
    path = tmp_path / "wws-supervisor.service"
    path.write_text(unit)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert verify.returncode == 0, verify.stderr
