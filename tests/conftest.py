from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TEST_PROJECT, ServerProcess


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("module-cache")


@pytest.fixture(scope="module")
def project_server(cache_dir: Path) -> Iterator[ServerProcess]:
    """The test project served by 2 runners with small limits, shared by a module's tests."""
    server = ServerProcess(
        TEST_PROJECT,
        [
            "-w",
            "2",
            "--fuel",
            "50000000",
            "--memory-mb",
            "16",
            "--timeout-ms",
            "1500",
            "--log-level",
            "debug",
        ],
        cache_dir,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
