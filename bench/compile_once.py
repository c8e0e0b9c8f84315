"""What a JavaScript worker costs now that the engine is compiled once.

Builds a project of N one-line JavaScript workers in a temporary folder and
measures, on a real server (``python -m supervisor``):

* start to the first 200 with an empty cache, then with a warm one;
* the cache's size: the shared engine, and per JavaScript worker;
* the RSS of one runner (``-w 1``) after startup and after it has served
  every worker twice, for each N given (growth per worker served).

Each figure is measured ``--rounds`` times (the machine is shared and noisy);
the script prints the range and the median.

    .venv/bin/python bench/compile_once.py [--workers 30 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
_START = re.compile(r"Start serving requests at http://([^\s:]+):(\d+)")


def make_project(folder: Path, count: int) -> list[str]:
    routes = []
    for index in range(count):
        (folder / f"w{index}.js").write_text(
            f'addEventListener("fetch", (e) => e.respondWith(new Response("hello {index}")));\n'
        )
        routes.append(f"/w{index}")
    return routes


class Server:
    def __init__(self, project: Path, cache: Path, *extra: str) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", str(project), "-p", "0", "--cache-dir", str(cache), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = _START.search(line)
            if match:
                self.port = int(match.group(2))
                return
        raise RuntimeError("the server did not start:\n" + "\n".join(self.lines))

    def get(self, path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def runner_rss_mb(self) -> list[float]:
        children = psutil.Process(self.proc.pid).children()
        return [child.memory_info().rss / (1 << 20) for child in children]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=30)


def cache_bytes(cache: Path) -> tuple[int, int]:
    """(engine bytes, every other entry's bytes, records excluded)."""
    engine = other = 0
    for path in cache.iterdir():
        size = path.stat().st_size
        if path.name.startswith("qjs-engine-"):
            engine += size
        elif not path.name.startswith("src-"):
            other += size
    return engine, other


def start_round(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        project, cache = Path(scratch) / "project", Path(scratch) / "cache"
        project.mkdir()
        routes = make_project(project, count)
        result: dict[str, float] = {}
        for label in ("empty", "warm"):
            server = Server(project, cache)
            status = server.get(routes[0])
            result[f"{label}_s"] = time.perf_counter() - server.started
            assert status == 200, status
            server.stop()
        engine, heaps = cache_bytes(cache)
        result["engine_mb"] = engine / (1 << 20)
        result["per_worker_mb"] = heaps / count / (1 << 20)
        return result


def rss_round(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        project, cache = Path(scratch) / "project", Path(scratch) / "cache"
        project.mkdir()
        routes = make_project(project, count)
        Server(project, cache).stop()  # fill the cache first
        server = Server(project, cache, "-w", "1")
        try:
            server.get(routes[0])
            (before,) = server.runner_rss_mb()
            for _ in range(2):
                for route in routes:
                    assert server.get(route) == 200
            (after,) = server.runner_rss_mb()
        finally:
            server.stop()
        return {
            "rss_start_mb": before,
            "rss_after_mb": after,
            "growth_per_worker_mb": (after - before) / count,
        }


def summary(values: list[float], unit: str, digits: int = 2) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} {unit} (range {low:.{digits}f}-{high:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    first = args.workers[0]
    starts = [start_round(first) for _ in range(args.rounds)]
    print(
        f"{first} JS workers, empty cache, start to first 200: {summary([r['empty_s'] for r in starts], 's')}"
    )
    print(
        f"{first} JS workers, warm cache, start to first 200:  {summary([r['warm_s'] for r in starts], 's')}"
    )
    print(f"cache: shared engine {summary([r['engine_mb'] for r in starts], 'MB')}")
    print(f"cache: per JS worker {summary([r['per_worker_mb'] for r in starts], 'MB', 3)}")
    for count in args.workers:
        rounds = [rss_round(count) for _ in range(args.rounds)]
        start, after = [r["rss_start_mb"] for r in rounds], [r["rss_after_mb"] for r in rounds]
        print(f"runner RSS, {count} JS workers: after start {summary(start, 'MB')}")
        print(f"runner RSS, {count} JS workers: after serving each twice {summary(after, 'MB')}")
        growth = [r["growth_per_worker_mb"] for r in rounds]
        print(f"runner RSS growth per JS worker served ({count}): {summary(growth, 'MB', 3)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
