"""The lean arbiter (``--frontends 2``): the started process replaces itself
with ``python -m supervisor.arbiter_main`` (same pid) that imports no serving
stack; reloads go through a throwaway prepare process; the admin listener
lives in the arbiter; the handover's and the prepare process's messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import trio

from supervisor.handover import AdminOrder, ArbiterOrder, read_order
from supervisor.prepare_child import Prepared, PrepareFailed, error_answer, parse_answer
from tests.helpers import REPO, ServerProcess, http, serving

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "hardproject"
# What the process that lives as long as the server must not hold.
_HEAVY_PACKAGES = {"hypercorn", "h11", "h2", "wsproto", "prometheus_client", "wasmtime", "msgpack", "psutil"}
_HEAVY_MODULES = {
    "supervisor.admin",
    "supervisor.cli",
    "supervisor.compiling",
    "supervisor.frontend",
    "supervisor.pool",
    "supervisor.project",
    "supervisor.runners",
}


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start))
    return match.group(1) if match.groups() else match.group(0)


def _proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def _front_end_pids(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children() if "supervisor.frontend" in child.cmdline()}


def test_the_arbiter_program_imports_no_serving_stack() -> None:
    code = "import json, sys, supervisor.arbiter_main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    modules = set(json.loads(result.stdout))
    heavy = {name for name in modules if name.split(".")[0] in _HEAVY_PACKAGES or name in _HEAVY_MODULES}
    assert heavy == set()


async def test_the_started_process_becomes_the_lean_arbiter(cache_dir: Path) -> None:
    async with serving(PROJECT, ["-w", "4", "--frontends", "2"], cache_dir) as server:
        pid = server.proc.pid  # what systemd knows as MAINPID
        command = _proc(pid, "cmdline").split("\0")
        assert command[1:4] == ["-I", "-m", "supervisor.arbiter_main"]
        assert "wasmtime" not in _proc(pid, "maps")
        assert len(_front_end_pids(pid)) == 2
        assert (await http(server.port, "GET", "/hello")).status == 201
        # The startup lines came once, in order, across the exec.
        assert sum("Start serving requests" in line for line in server.lines) == 1
        loaded = [i for i, line in enumerate(server.lines) if "Workers loaded in" in line]
        routes = [i for i, line in enumerate(server.lines) if line.startswith("    - http://")]
        assert len(loaded) == 1 and routes and loaded[0] < min(routes)
        server.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(server.wait_exit) == 0


async def test_reloads_go_through_the_prepare_process(tmp_path: Path, cache_dir: Path) -> None:
    project = tmp_path / "site"
    project.mkdir()
    (project / "hello.wat").write_bytes((PROJECT / "hello.wat").read_bytes())
    options = tmp_path / "wws.toml"
    options.write_text('workers = 4\nlog-format = "json"\n')
    args = ["--config", str(options), "--frontends", "2"]
    async with serving(project, args, cache_dir) as server:
        pid = server.proc.pid
        first = _front_end_pids(pid)
        old = [psutil.Process(old_pid) for old_pid in first]
        # A configuration that cannot be read: the old front ends keep serving.
        options.write_text("wrokers = 2\n")
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        await _wait_log(
            server, r"reload failed, the front ends keep serving: the configuration cannot be read", mark
        )
        assert _front_end_pids(pid) == first
        assert (await http(server.port, "GET", "/hello")).status == 201
        # A worker added and the runner count changed: new front ends serve both.
        options.write_text('workers = 6\nlog-format = "json"\n')
        (project / "echo.wat").write_bytes((PROJECT / "echo.wat").read_bytes())
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        await _wait_log(server, r"reloaded: every front end serves generation 2", mark)
        assert (await http(server.port, "GET", "/echo", body=b"hi")).status == 200
        assert sum("ready with 3 runner(s)" in line for line in server.lines[mark:]) == 2
        # The old front ends drain and go; the prepare process is gone too,
        # and the arbiter still has no wasmtime.
        _, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs(old, timeout=30))
        assert not alive
        assert len(_front_end_pids(pid)) == 2
        assert _front_end_pids(pid) == {child.pid for child in psutil.Process(pid).children()}
        assert "wasmtime" not in _proc(pid, "maps")
        # Every log line is a JSON record, the arbiter's too (argparse's
        # usage and complaint about the broken file are not log lines).
        records = [json.loads(line) for line in server.lines if line.startswith("{")]
        others = [line for line in server.lines if not line.startswith("{")]
        assert not [line for line in others if " INFO " in line or "Start serving" in line]
        assert any("Start serving requests" in record["message"] for record in records)
        assert any(record["logger"] == "supervisor.arbiter" for record in records)


async def test_the_admin_listener_runs_in_the_arbiter(cache_dir: Path) -> None:
    args = ["-w", "4", "--frontends", "2", "--admin", "127.0.0.1:0"]
    async with serving(PROJECT, args, cache_dir) as server:
        admin = int(await _wait_log(server, r"Admin listener at http://127\.0\.0\.1:(\d+)/"))
        listening = {c.laddr.port for c in psutil.Process(server.proc.pid).net_connections("tcp")}
        assert admin in listening
        assert (await http(admin, "GET", "/healthz")).status == 200
        assert (await http(admin, "GET", "/readyz")).status == 200
        server.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(server.wait_exit) == 0


def test_the_order_crosses_the_exec_as_json() -> None:
    order = ArbiterOrder(
        argv=["site", "--frontends", "2"],
        socket_fds=[5, 6],
        broken=["a.js"],
        workers=4,
        max_connections=100,
        graceful_timeout_s=10.0,
        log_level="info",
        log_format="text",
        started=12.5,
        ready_lines=["🚀 Start serving requests at http://127.0.0.1:1\n"],
        ready_status="serving 1 routes",
        admin=AdminOrder(7, "/tmp/m", 2, None, True),
    )
    assert ArbiterOrder.from_json(order.to_json()) == order
    without_admin = ArbiterOrder(**{**order.__dict__, "admin": None})
    assert ArbiterOrder.from_json(without_admin.to_json()) == without_admin


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"argv": []}'])
def test_a_broken_order_is_a_value_error(data: bytes) -> None:
    fd = os.memfd_create("order")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    with pytest.raises(ValueError, match=r"."):
        read_order(fd)


def test_the_prepare_answer() -> None:
    assert parse_answer(Prepared(["a.js"], 3).to_json()) == Prepared(["a.js"], 3)
    with pytest.raises(PrepareFailed, match=r"^broken TOML$"):
        parse_answer(error_answer("broken TOML"))
    for data in (b"", b"{", b"[]", b'{"broken": []}', b'{"broken": [], "workers": 0}'):
        with pytest.raises(ValueError, match=r"."):
            parse_answer(data)
