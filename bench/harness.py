"""Bench plumbing: start a server and wait for its ready line, run wrk and
parse it, measure RSS. No timing is asserted anywhere; numbers go to a table."""

from __future__ import annotations

import dataclasses
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
        """RSS of the process and of each child, in MiB."""
        try:
            parent = psutil.Process(self.process.pid)
            out = {"main": parent.memory_info().rss / 2**20}
            for index, child in enumerate(parent.children(recursive=True)):
                out[f"child{index}"] = child.memory_info().rss / 2**20
            return out
        except psutil.Error:
            return {}


@contextmanager
def server(command: Sequence[str], ready: str, timeout: float = 300) -> Iterator[Running]:
    """Start ``command``; yield once a stdout line contains ``ready`` (and a URL with the port)."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
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
    text = result.stdout
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
