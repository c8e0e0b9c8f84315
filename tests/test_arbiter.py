"""The lean arbiter (``--frontends 2``): the started process replaces itself
with ``python -m supervisor.arbiter.main`` (same pid) that imports no serving
stack, not even trio; reloads go through a throwaway prepare process; the
admin listener runs in a child process of the arbiter's; a second SIGTERM
hurries the front ends, and front ends that cannot boot halt it; the
handover's and the prepare process's messages."""

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

from supervisor.arbiter.arbiter import Arbiter, ArbiterHalted, ArbiterSettings
from supervisor.arbiter.handover import AdminOrder, ArbiterOrder, read_order
from supervisor.arbiter.loop import EventLoop
from supervisor.arbiter.prepare_child import Prepared, PrepareFailed, error_answer, parse_answer
from supervisor.ops.sd_notify import SdNotifier
from supervisor.server import bind_sockets
from tests.helpers import REPO, ServerProcess, http, serving

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "hardproject"
# What the process that lives as long as the server must not hold.
_HEAVY_PACKAGES = {"hypercorn", "h11", "h2", "wsproto", "prometheus_client", "wasmtime", "msgpack", "psutil"}
_HEAVY_MODULES = {
    "supervisor.ops.admin",
    "supervisor.cli",
    "supervisor.pool.compiling",
    "supervisor.front.frontend",
    "supervisor.pool.pool",
    "supervisor.project.project",
    "supervisor.pool.runners",
}


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start))
    return match.group(1) if match.groups() else match.group(0)


def _proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def _front_end_pids(pid: int) -> set[int]:
    return {
        child.pid
        for child in psutil.Process(pid).children()
        if "supervisor.front.frontend" in child.cmdline()
    }


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    return set(json.loads(result.stdout))


def test_the_arbiter_program_imports_no_serving_stack_and_no_trio() -> None:
    modules = _modules_after("import supervisor.arbiter.main")
    heavy = {name for name in modules if name.split(".")[0] in _HEAVY_PACKAGES or name in _HEAVY_MODULES}
    assert heavy == set()
    # The standard library and stdlib-only modules of ours, nothing else:
    # no trio (14 MiB of private memory on its own), attrs, ssl or sniffio.
    assert not {"trio", "attr", "attrs", "outcome", "sniffio", "ssl", "_ssl"} & modules
    at_start = _modules_after("pass")  # what site's .pth files import anyway
    outside = {
        name
        for name in modules - at_start
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "supervisor"
    }
    assert outside == set()


async def test_the_started_process_becomes_the_lean_arbiter(cache_dir: Path) -> None:
    async with serving(PROJECT, ["-w", "4", "--frontends", "2"], cache_dir) as server:
        pid = server.proc.pid  # what systemd knows as MAINPID
        command = _proc(pid, "cmdline").split("\0")
        assert command[1:4] == ["-I", "-m", "supervisor.arbiter.main"]
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
        assert any(record["logger"] == "supervisor.arbiter.arbiter" for record in records)


async def test_the_admin_listener_runs_in_a_child_of_the_arbiter(cache_dir: Path) -> None:
    args = ["-w", "4", "--frontends", "2", "--admin", "127.0.0.1:0"]
    async with serving(PROJECT, args, cache_dir) as server:
        pid = server.proc.pid
        admin = int(await _wait_log(server, r"Admin listener at http://127\.0\.0\.1:(\d+)/"))
        (child,) = [c for c in psutil.Process(pid).children() if "supervisor.ops.admin_main" in c.cmdline()]
        # The socket is the arbiter's (bound before the exec), lent to the child.
        for process in (psutil.Process(pid), child):
            assert admin in {c.laddr.port for c in process.net_connections("tcp")}
        assert "hypercorn" not in _proc(pid, "maps") and "trio" not in _proc(pid, "maps")
        assert (await http(admin, "GET", "/healthz")).status == 200
        assert (await http(admin, "GET", "/readyz")).status == 200
        # Killed, it is restarted on the same socket: meanwhile a connection
        # waits in the backlog.
        mark = len(server.lines)
        child.kill()
        assert (await http(admin, "GET", "/healthz")).status == 200
        await _wait_log(server, rf"the admin listener \(pid {child.pid}\) killed by SIGKILL; starting", mark)
        (again,) = [c for c in psutil.Process(pid).children() if "supervisor.ops.admin_main" in c.cmdline()]
        assert again.pid != child.pid
        server.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(server.wait_exit) == 0
        _, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs([again], timeout=10))
        assert not alive


async def test_a_second_sigterm_hurries_the_front_ends(cache_dir: Path) -> None:
    async with serving(PROJECT, ["-w", "2", "--frontends", "2", "--log-level", "debug"], cache_dir) as server:
        statuses: list[int] = []

        async def slow() -> None:
            statuses.append((await http(server.port, "GET", "/slow")).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await _wait_log(server, r"frontend-\d .*dispatched")
            server.signal(signal.SIGTERM)
            await _wait_log(server, r"SIGTERM received: stopping the front ends")
            server.signal(signal.SIGTERM)
            await _wait_log(server, r"second SIGTERM: front ends are told to hurry")
        assert statuses in ([200], [503])  # answered either way, never dropped
        assert await trio.to_thread.run_sync(server.wait_exit) == 0


def test_front_ends_that_cannot_boot_halt_the_arbiter(tmp_path: Path) -> None:
    # The arbiter in this process, its front ends real: they read a command
    # line naming a project that is not there, report it and exit.
    sockets = bind_sockets("127.0.0.1", 0, 2)
    loop = EventLoop()
    settings = ArbiterSettings(
        argv=[str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "cache")],
        workers=2,
        max_connections=100,
        graceful_timeout_s=1.0,
    )
    arbiter = Arbiter(loop, settings, sockets, [], SdNotifier({}))
    try:
        with pytest.raises(ArbiterHalted, match=r"missing") as halted:
            arbiter.run(lambda: pytest.fail("no front end can be ready"))
        assert "\n" not in str(halted.value)
    finally:
        loop.close()
        for sock in sockets:
            sock.close()


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
    without_admin = order._replace(admin=None)
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
