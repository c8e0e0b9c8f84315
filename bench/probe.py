"""Plumbing shared by bench/faults.py and bench/soak.py: the real server on
bench/faults/, its runner processes as psutil sees them, a raw HTTP/1.1
exchange, and a paced client of the unrelated /hello route.

Nothing here sleeps to synchronise with the server: readiness is its startup
line, runner state is read from /proc, and the only sleeps pace polls and load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import trio

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "bench" / "faults"
WORKERS = 2
_START = re.compile(r"Start serving requests at http://127\.0\.0\.1:(\d+)")


class Server:
    """``python -m supervisor`` on the fault project; its merged output is kept
    in memory (for log checks) and appended to a file (for the reader)."""

    def __init__(self, cache_dir: Path, log: Path, nofile: int | None = None, *extra: str) -> None:
        cmd = [sys.executable, "-m", "supervisor", str(PROJECT), "-p", "0", "-w", str(WORKERS)]
        cmd += ["--cache-dir", str(cache_dir), *extra]

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            preexec_fn=limit_descriptors if nofile else None,
        )
        self.lines: list[str] = []
        self.port = 0
        self.cache_dir, self.nofile, self.extra = cache_dir, nofile, extra
        self._ready = threading.Event()
        self.log = log
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a", encoding="utf-8") as sink:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                sink.write(line + "\n")
                if not self.port and (found := _START.search(line)):
                    self.port = int(found.group(1))
                    self._ready.set()
        self._ready.set()

    def wait_ready(self, wait_s: float = 300) -> None:
        if not self._ready.wait(wait_s) or not self.port:
            raise RuntimeError(f"the server did not start; see {self.log}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def runners(self) -> list[psutil.Process]:
        """The server's runners (``python -I -m runner ...``): its children, or
        its grandchildren when it runs several front-end processes."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        found = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if _is_runner(child.cmdline()):
                    found.append(child)
        return found

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _is_runner(cmdline: list[str]) -> bool:
    return any(a == "-m" and b == "runner" for a, b in itertools.pairwise(cmdline))


async def start_server(cache_dir: Path, log: Path, nofile: int | None = None, *extra: str) -> Server:
    server = Server(cache_dir, log, nofile, *extra)
    await trio.to_thread.run_sync(server.wait_ready)
    return server


async def restart(server: Server) -> Server:
    """A new server started as ``server`` was (it must be gone already)."""
    return await start_server(server.cache_dir, server.log, server.nofile, *server.extra)


def runner_state(process: psutil.Process) -> str:
    """ "idle" (blocked in read(2) on its request pipe), "busy", "stopped" or "dead"."""
    try:
        status = process.status()
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return "dead"
        if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            return "stopped"
        syscall = Path(f"/proc/{process.pid}/syscall").read_text()
    except (psutil.Error, OSError):
        return "dead"
    return "idle" if syscall.startswith("0 ") else "busy"


def lives(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def wait_pool_full(server: Server, since: float, limit_s: float) -> float | None:
    """Seconds from ``since`` until every slot has a live runner that is idle
    (booted, not stuck); None if that did not happen within ``limit_s``."""
    seen_idle: dict[int, float] = {}
    with trio.move_on_after(limit_s):
        while server.alive():
            now = time.monotonic()
            states = {proc.pid: runner_state(proc) for proc in server.runners()}
            for pid, state in states.items():
                if state == "idle":
                    seen_idle[pid] = now
            # A runner is busy with a /hello for a millisecond now and then: idle within 0.1 s counts.
            if len(states) == WORKERS and all(
                state in ("idle", "busy") and now - seen_idle.get(pid, -1e9) < 0.1
                for pid, state in states.items()
            ):
                return round(max(0.0, now - since), 3)
            await trio.sleep(0.02)
    return None


async def exchange(port: int, raw: bytes, wait_s: float = 30) -> tuple[int, str, bytes]:
    """Send ``raw`` as it is, read to EOF; returns (status, x-wws-failure,
    body), or (0, what went wrong, b"") when no response came."""
    data = bytearray()
    try:
        with trio.fail_after(wait_s):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                # The server may answer early and close: then read what it said.
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(raw)
                while chunk := await stream.receive_some(1 << 16):
                    data += chunk
    except trio.TooSlowError:
        return 0, "client-timeout", b""
    except (OSError, trio.BrokenResourceError) as exc:
        if not data:  # a reset after a complete response still counts as the response
            return 0, type(exc).__name__, b""
    if not data:
        return 0, "closed-without-response", b""
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        return 0, "unparsable-response", b""
    failure = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("x-wws-failure:")), ""
    )
    return status, failure, body


def get(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()


def command_args(argv: list[str]) -> list[str]:
    """The arguments that shape the figures (where they are written does not)."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--out-dir"):
            skip = arg == "--out-dir"
            continue
        out.append(arg)
    return out


def describe(status: int, failure: str) -> str:
    return f"{status} {failure}".strip() if status else failure


@dataclasses.dataclass
class Sample:
    start: float
    latency: float
    ok: bool
    what: str


class PacedClient:
    """Sequential requests to one path, a fresh connection each, with a pause
    between them; follows the current server (its port changes on restart)."""

    def __init__(self, port: Callable[[], int], path: str, expect: bytes | None, pause: float) -> None:
        self._port, self.path, self._expect, self._pause = port, path, expect, pause
        self.samples: list[Sample] = []

    async def run(self) -> None:
        while True:
            port = self._port()
            started = time.monotonic()
            status, failure, body = await exchange(port, get(self.path, port), wait_s=10)
            ok = status == 200 and (self._expect is None or body == self._expect)
            self.samples.append(Sample(started, time.monotonic() - started, ok, describe(status, failure)))
            await trio.sleep(self._pause)
