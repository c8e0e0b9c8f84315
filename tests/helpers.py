"""Test helpers: a real supervisor process and a tiny HTTP/1.1 client.

Nothing here sleeps to synchronise: the server is ready when it prints its
"Start serving" line, and tests wait on log lines through a condition variable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TEST_PROJECT = Path(__file__).resolve().parent / "project"
_START = re.compile(r"Start serving requests at https?://([^\s:]+|\[[^\]]+\]):(\d+)")


def _set_rlimits(rlimits: dict[int, tuple[int, int]]) -> None:
    for which, limit in rlimits.items():
        resource.setrlimit(which, limit)


class ServerProcess:
    """``python -m supervisor`` in its own session, its output collected by threads."""

    def __init__(
        self,
        project: Path,
        args: Sequence[str],
        cache_dir: Path,
        env: dict[str, str] | None = None,
        rlimits: dict[int, tuple[int, int]] | None = None,
        command_prefix: Sequence[str] = (),
    ):
        cmd = [
            *command_prefix,
            sys.executable,
            "-m",
            "supervisor",
            str(project),
            "-p",
            "0",
            "--cache-dir",
            str(cache_dir),
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=REPO,
            preexec_fn=functools.partial(_set_rlimits, rlimits) if rlimits else None,
        )
        # Logs go to stdout and startup errors to stderr: tests read one
        # merged, ordered list of lines under either name.
        self.lines: list[str] = []
        self.stdout_lines = self.lines
        self.stderr_lines = self.lines
        self._cond = threading.Condition()
        self._closed = 0
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.port = 0

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._closed += 1
            self._cond.notify_all()

    def wait_for(
        self, pattern: str, *, stream: str = "stderr", timeout: float = 30.0, start: int = 0
    ) -> re.Match[str]:
        """Block until an output line (from index ``start``) matches ``pattern``
        (``stream`` is kept for callers; stdout and stderr are one list)."""
        rx = re.compile(pattern)
        sink = self.lines
        with self._cond:
            index = start
            found: re.Match[str] | None = None

            def ready() -> bool:
                nonlocal index, found
                while index < len(sink):
                    found = rx.search(sink[index])
                    index += 1
                    if found:
                        return True
                return self._closed == 2

            self._cond.wait_for(ready, timeout=timeout)
            if found is None:
                raise AssertionError(f"no line matched {pattern!r}; output={self.lines[-40:]}")
            return found

    def wait_ready(self, timeout: float = 60.0) -> int:
        match = self.wait_for(_START.pattern, stream="stdout", timeout=timeout)
        self.port = int(match.group(2))
        return self.port

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def http(
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Response:
    """One HTTP/1.1 request over a fresh connection (Connection: close)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if raw is None:
            lines = [f"{method} {target} HTTP/1.1", "Connection: close"]
            if not any(name.lower() == "host" for name in headers or {}):  # a Host of the caller's wins
                lines.insert(1, f"Host: 127.0.0.1:{port}")
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if body or method in ("POST", "PUT", "PATCH"):
                lines.append(f"Content-Length: {len(body)}")
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        # The server may answer early (e.g. 413) and close; then read what it said.
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(raw)
        data = bytearray()
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return parse_response(bytes(data), head_only=method == "HEAD")


def parse_response(data: bytes, head_only: bool = False) -> Response:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only:
        return Response(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = b"".join(_chunks(rest))
    return Response(status, headers, rest)


def _chunks(data: bytes) -> Iterator[bytes]:
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return
        yield data[:size]
        data = data[size + 2 :]


@contextlib.asynccontextmanager
async def serving(
    project: Path,
    args: Sequence[str],
    cache_dir: Path,
    rlimits: dict[int, tuple[int, int]] | None = None,
    command_prefix: Sequence[str] = (),
) -> AsyncIterator[ServerProcess]:
    """A server for one test: ready (port known) on entry, stopped on exit."""
    server = ServerProcess(project, args, cache_dir, rlimits=rlimits, command_prefix=command_prefix)
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        yield server
    finally:
        server.stop()
