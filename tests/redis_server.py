"""A real redis-server for the tests, on a free loopback port, started and
stopped by a fixture (waits for its "Ready to accept connections" line)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        # Never a silent skip: the KV guarantees are only proven against a real Redis.
        pytest.fail(
            "redis-server is not installed: run `bash tests/run` (it installs it)"
            " or apt-get install redis-server"
        )
    port = _free_port()
    drain: threading.Thread | None = None
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server exited before it was ready")
        # Keep draining its log so a full pipe never blocks it.
        drain = threading.Thread(target=process.stdout.read, daemon=True)
        drain.start()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        if drain is not None:
            drain.join(10)
        if process.stdout is not None:
            process.stdout.close()
