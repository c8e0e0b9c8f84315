"""Bench plumbing: start a server and wait for its ready line, run wrk and
parse it, measure RSS. No timing is asserted anywhere; numbers go to a table."""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")


@dataclasses.dataclass
class Load:
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    note: str = ""

    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


@dataclasses.dataclass
class Running:
    process: subprocess.Popen[str]
    port: int
    started_at: float
    ready_at: float

    def rss_mb(self) -> dict[str, float]:
        """RSS of the process and of each child, in MiB, keyed by role
        (``arbiter``, ``frontend0``, ``runner1``...; ``main`` for a server
        that is its own front end, ``childN`` for anything else)."""
        try:
            return {name: proc.memory_info().rss / 2**20 for name, proc in self.roles()}
        except psutil.Error:
            return {}

    def pss_mb(self) -> float:
        """Proportional set size of the whole tree, in MiB: shared pages (the
        interpreter, wasmtime's library) counted once across processes."""
        try:
            return sum(proc.memory_full_info().pss for _, proc in self.roles()) / 2**20
        except psutil.Error:
            return 0.0

    def roles(self) -> list[tuple[str, psutil.Process]]:
        """The process tree by role: front ends are ``-m supervisor.front.frontend``,
        runners ``-m runner``; the top process is the ``arbiter`` when it has
        front ends below it."""
        parent = psutil.Process(self.process.pid)
        children = parent.children(recursive=True)
        counts: dict[str, int] = {}
        named: list[tuple[str, psutil.Process]] = []
        for child in children:
            role = _role(child)
            named.append((f"{role}{counts.get(role, 0)}", child))
            counts[role] = counts.get(role, 0) + 1
        top = "arbiter" if counts.get("frontend") else "main"
        return [(top, parent), *named]


def _role(proc: psutil.Process) -> str:
    try:
        command = proc.cmdline()
    except psutil.Error:
        return "child"
    for flag, module in itertools.pairwise(command):
        if flag == "-m" and module in ("supervisor.front.frontend", "runner"):
            return "frontend" if module == "supervisor.front.frontend" else "runner"
    return "child"


@contextmanager
def server(
    command: Sequence[str], ready: str, timeout: float = 300, *, stderr: bool = False
) -> Iterator[Running]:
    """Start ``command``; yield once a stdout line (or, with ``stderr``, a line
    of either stream) contains ``ready`` (and a URL with the port)."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        port = 0
        deadline = time.monotonic() + timeout
        for line in process.stdout:
            found = _URL.search(line)
            if ready in line and found:
                port = int(found.group(1))
                break
            if time.monotonic() > deadline:
                break
        if not port:
            raise RuntimeError(f"{command[0]} did not print {ready!r}")
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield Running(process, port, started, time.monotonic())
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def wrk(url: str, seconds: int, connections: int = 16, threads: int = 2) -> Load:
    if not have("wrk"):
        return Load(note="wrk not installed")
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    return parse_wrk(result.stdout)


def parse_wrk(text: str) -> Load:
    """What wrk's report (with --latency) says: req/s, p50, p99, errors."""
    load = Load()
    if found := re.search(r"Requests/sec:\s+([\d.]+)", text):
        load.rps = float(found.group(1))
    if found := re.search(r"50%\s+([\d.]+)(us|ms|s)", text):
        load.p50_ms = _ms(found)
    if found := re.search(r"99%\s+([\d.]+)(us|ms|s)", text):
        load.p99_ms = _ms(found)
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        load.non_2xx = int(found.group(1))
    if found := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        load.socket_errors = sum(int(n) for n in found.groups())
    return load


def _ms(found: re.Match[str]) -> float:
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
