"""Per-worker TOML: the schema, every error case (file, line, problem), and
what the server does with it (vars, limits, mounts, max_concurrency)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from supervisor.config import Limits
from supervisor.project.worker_config import WorkerConfigError, load_worker_config
from tests.helpers import EXAMPLES, REPO, TEST_PROJECT, http, serving

DEFAULTS = Limits(fuel=1000, memory_mb=8, timeout_ms=100)


def _load(tmp_path: Path, toml: str) -> object:
    (tmp_path / "w.wasm").write_bytes(b"")
    (tmp_path / "w.toml").write_text(toml)
    return load_worker_config(tmp_path / "w.wasm", tmp_path, DEFAULTS)


def test_full_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WWS_TEST_TOKEN", "from-host")
    monkeypatch.delenv("WWS_TEST_UNSET", raising=False)
    (tmp_path / "_assets").mkdir()
    config = _load(
        tmp_path,
        """
name = "demo"
version = "1"
[vars]
MESSAGE = "hi"
TOKEN = "$WWS_TEST_TOKEN"
MISSING = "$WWS_TEST_UNSET"
LITERAL = "$ not a variable"
[data.kv]
namespace = "ns"
[[folders]]
from = "./_assets"
to = "/assets"
[[folders]]
from = "_assets"
to = "/rw"
writable = true
[features.http_requests]
allowed_hosts = ["api.example.com", "*.example.org"]
allowed_methods = ["GET"]
allow_http = true
[limits]
fuel = 5
timeout_ms = 7
max_concurrency = 2
""",
    )
    assert config.name == "demo"  # type: ignore[attr-defined]
    assert config.variables == {  # type: ignore[attr-defined]
        "MESSAGE": "hi",
        "TOKEN": "from-host",
        "MISSING": "",
        "LITERAL": "$ not a variable",
    }
    assert config.kv_namespace == "ns"  # type: ignore[attr-defined]
    assert [(f.guest, f.writable) for f in config.folders] == [("/assets", False), ("/rw", True)]  # type: ignore[attr-defined]
    assert config.http_requests.allowed_hosts == ("api.example.com", "*.example.org")  # type: ignore[attr-defined]
    assert config.http_requests.allowed_methods == ("GET",)  # type: ignore[attr-defined]
    assert config.http_requests.allow_http is True  # type: ignore[attr-defined]
    assert config.limits == Limits(fuel=5, memory_mb=8, timeout_ms=7)  # type: ignore[attr-defined]
    assert config.max_concurrency == 2  # type: ignore[attr-defined]
    assert config.warnings == ()  # type: ignore[attr-defined]


def test_no_toml_means_defaults(tmp_path: Path) -> None:
    (tmp_path / "w.wasm").write_bytes(b"")
    config = load_worker_config(tmp_path / "w.wasm", tmp_path, DEFAULTS)
    assert (config.limits, config.variables, config.kv_namespace) == (DEFAULTS, {}, None)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('version = "1"\n[vars\nA = "b"', r"w\.toml:2: invalid TOML"),
        ('version = "1"\n\n[vars]\nCOUNT = 3\n', r"w\.toml:4: vars\.COUNT must be a string"),
        ('[vars]\n"BAD-NAME" = "x"\n', r"w\.toml:2: vars\.BAD-NAME is not a valid variable name"),
        ("vars = 3\n", r"w\.toml:1: \[vars\] must be a table"),
        ("[data.kv]\nother = 1\n", r"w\.toml:1: \[data\.kv\] needs a namespace"),
        ("[data.kv]\nnamespace = 5\n", r"w\.toml:2: data\.kv\.namespace must be a string"),
        ('[[folders]]\nfrom = "../.."\nto = "/x"\n', r"w\.toml:2: folder '\.\./\.\.' is outside the project"),
        ('[[folders]]\nfrom = "./nope"\nto = "/x"\n', r"w\.toml:2: folder './nope' does not exist"),
        (
            '[[folders]]\nfrom = "."\n',
            r"w\.toml:\d: each \[\[folders\]\] entry needs string values for from and to",
        ),
        (
            '[[folders]]\nfrom = "."\nto = "/x"\nwritable = "yes"\n',
            r"w\.toml:4: folders\.writable must be true or false",
        ),
        (
            '[features.http_requests]\nallowed_methods = ["FETCH"]\n',
            r"w\.toml:2: unknown HTTP method 'FETCH'",
        ),
        (
            '[features.http_requests]\nallowed_hosts = "x"\n',
            r"w\.toml:2: .*allowed_hosts must be a list of strings",
        ),
        ('[features.http_requests]\nallow_http = "no"\n', r"w\.toml:2: .*allow_http must be true or false"),
        ("[limits]\nfuel = -1\n", r"w\.toml:2: limits\.fuel must be a whole number greater than 0"),
        ("[limits]\ntimeout_ms = 1.5\n", r"w\.toml:2: limits\.timeout_ms must be a whole number"),
        ("name = 3\n", r"w\.toml:1: name must be a string"),
    ],
)
def test_errors_name_file_line_and_problem(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(WorkerConfigError, match=message):
        _load(tmp_path, toml)


def test_unreadable_toml(tmp_path: Path) -> None:
    (tmp_path / "w.wasm").write_bytes(b"")
    (tmp_path / "w.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(WorkerConfigError, match="not UTF-8"):
        load_worker_config(tmp_path / "w.wasm", tmp_path, DEFAULTS)


def test_unknown_keys_are_warnings(tmp_path: Path) -> None:
    config = _load(tmp_path, 'version = "1"\nnmae = "typo"\n[limits]\nfeul = 3\n')
    assert config.warnings == (  # type: ignore[attr-defined]
        f"{tmp_path}/w.toml:2: unknown key nmae (ignored)",
        f"{tmp_path}/w.toml:4: unknown key limits.feul (ignored)",
    )


def test_broken_toml_stops_startup_with_one_line(tmp_path: Path, cache_dir: Path) -> None:
    shutil.copy(TEST_PROJECT / "hello.wat", tmp_path / "hello.wat")
    (tmp_path / "hello.toml").write_text('version = "1"\n[limits]\nfuel = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", str(tmp_path), "-p", "0", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}/hello.toml:3: limits.fuel must be a whole number greater than 0"
    ]


@pytest.fixture
def mount_project(tmp_path: Path) -> Path:
    """files.wasm twice: read-only and writable mounts of one data folder."""
    project = tmp_path / "project"
    data = project / "_data"
    data.mkdir(parents=True)
    (data / "message.txt").write_text("mounted content\n")
    (project / "files.toml").write_text('version = "1"\n[[folders]]\nfrom = "_data"\nto = "/data"\n')
    (project / "files.wasm").write_bytes((EXAMPLES / "c" / "files.wasm").read_bytes())
    (project / "rw.toml").write_text(
        'version = "1"\n[[folders]]\nfrom = "_data"\nto = "/data"\nwritable = true\n'
    )
    (project / "rw.wasm").write_bytes((EXAMPLES / "c" / "files.wasm").read_bytes())
    # Two mounts: the first must be WASI fd 3 whatever the guest paths.
    other = project / "_other"
    other.mkdir()
    (other / "message.txt").write_text("from the second mount\n")
    (project / "order.toml").write_text(
        'version = "1"\n[[folders]]\nfrom = "_data"\nto = "/z"\n[[folders]]\nfrom = "_other"\nto = "/a"\n'
    )
    (project / "order.wasm").write_bytes((EXAMPLES / "c" / "files.wasm").read_bytes())
    return project


async def test_mounted_folder_readable_not_writable_by_default(mount_project: Path, cache_dir: Path) -> None:
    async with serving(mount_project, ["-w", "1"], cache_dir) as server:
        read = await http(server.port, "GET", "/files")
        assert (read.status, read.text) == (200, "mounted content\n")
        write = await http(server.port, "GET", "/files?op=write")
        assert (write.status, write.text) == (403, "write refused: Operation not permitted")
        assert not (mount_project / "_data" / "written.txt").exists()
        escape = await http(server.port, "GET", "/files?op=escape")
        assert escape.status == 404
        assert "Operation not permitted" in escape.text
        first = await http(server.port, "GET", "/order?op=fd3")
        assert (first.status, first.text) == (200, "mounted content\n")  # the first [[folders]] entry
        writable = await http(server.port, "GET", "/rw?op=write")
        assert (writable.status, writable.text) == (200, "write ok")
        assert (mount_project / "_data" / "written.txt").read_text() == "written by the worker\n"


async def test_vars_reach_compiled_workers_as_environment(tmp_path: Path, cache_dir: Path) -> None:
    shutil.copy(TEST_PROJECT / "env.wat", tmp_path / "env.wat")
    (tmp_path / "env.toml").write_text('version = "1"\n[vars]\nA = "1"\nB = "2"\nC = "3"\n')
    async with serving(tmp_path, ["-w", "1"], cache_dir) as server:
        assert (await http(server.port, "GET", "/env")).text == "3"


async def test_limits_override_the_command_line(tmp_path: Path, cache_dir: Path) -> None:
    for name in ("loop", "hello"):
        shutil.copy(TEST_PROJECT / f"{name}.wat", tmp_path / f"{name}.wat")
    (tmp_path / "loop.toml").write_text('version = "1"\n[limits]\ntimeout_ms = 200\n')
    async with serving(
        tmp_path, ["-w", "1", "--timeout-ms", "60000", "--fuel", "100000000000"], cache_dir
    ) as server:
        with trio.fail_after(10):
            response = await http(server.port, "GET", "/loop")
        assert (response.status, response.headers["x-wws-failure"]) == (504, "timeout")


async def test_max_concurrency_queues_then_503(tmp_path: Path, cache_dir: Path) -> None:
    shutil.copy(TEST_PROJECT / "slow.wat", tmp_path / "slow.wat")
    shutil.copy(TEST_PROJECT / "hello.wat", tmp_path / "hello.wat")
    (tmp_path / "slow.toml").write_text('version = "1"\n[limits]\nmax_concurrency = 1\n')
    args = ["-w", "2", "--queue-timeout-ms", "150", "--log-level", "debug"]
    async with serving(tmp_path, args, cache_dir) as server:
        statuses: list[int] = []

        async def slow() -> None:
            statuses.append((await http(server.port, "GET", "/slow")).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.to_thread.run_sync(lambda: server.wait_for(r"request \d+ dispatched to runner"))
            second = await http(server.port, "GET", "/slow")
            # The other runner is free, so other workers are unaffected.
            assert (await http(server.port, "GET", "/hello")).status == 201
        assert (second.status, second.headers["x-wws-failure"]) == (503, "overloaded")
        assert statuses == [200]
