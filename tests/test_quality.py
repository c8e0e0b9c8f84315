"""The code stays typed (mypy strict) and lint-clean (ruff), as STYLE.md asks."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _tool(name: str) -> list[str]:
    if shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name):
        return [sys.executable, "-m", name]
    pytest.fail(f"{name} is not installed: run `bash tests/run` (it installs the test extras)")


def test_mypy_strict() -> None:
    result = subprocess.run([*_tool("mypy")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
