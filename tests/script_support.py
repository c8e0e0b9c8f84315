"""Shared set-up for the Python and Ruby worker tests: the real runtimes,
installed once with the real CLI (``runtimes install``, through npm) into a
folder reused across runs, and a module cache reused the same way, so the
interpreters are compiled once per machine rather than once per test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

_BASE = Path(os.environ.get("WWS_TEST_DATA") or Path.home() / ".cache" / "wws-supervisor-tests")
RUNTIMES_DIR = _BASE / "runtimes"
SCRIPT_CACHE = _BASE / "module-cache"
PY_LIBS = _BASE / "python-libs"
# Python heaps are ~10 MB, Ruby heaps ~28 MB: room for one run's worth, LRU beyond.
CACHE_ARGS = ["--runtimes-dir", str(RUNTIMES_DIR), "--cache-max-mb", "1536"]


def ensure_runtime(name: str) -> Path:
    """The runtime's .wasm, installed with `wws-supervisor runtimes install` if needed."""
    from supervisor.project.runtimes import RUNTIMES, installed

    found = installed(RUNTIMES[name], RUNTIMES_DIR)
    if found is not None:
        return found
    if shutil.which("npm") is None:
        raise RuntimeError("the Python/Ruby worker tests need npm (tests/run installs it)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor",
            "runtimes",
            "install",
            name,
            "--runtimes-dir",
            str(RUNTIMES_DIR),
        ],
        cwd=REPO,
        check=True,
        timeout=900,
    )
    found = installed(RUNTIMES[name], RUNTIMES_DIR)
    assert found is not None
    return found


def python_libs() -> Path:
    """beautifulsoup4 installed with pip into a folder, as python-libs's README says."""
    marker = PY_LIBS / "bs4" / "__init__.py"
    if not marker.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(PY_LIBS), "beautifulsoup4"],
            check=True,
            timeout=600,
        )
    return PY_LIBS
