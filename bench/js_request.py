"""Median cost of one isolated JavaScript request inside a runner's sandbox.

Measures `Sandbox.run` directly (no HTTP, no pipes): a fresh instance of the
worker's baked snapshot, the handler, and the response JSON, per request.

    .venv/bin/python bench/js_request.py [--requests 2000] [worker.js]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

from ipc.messages import HttpPolicy, Invoke, Reply, WorkerSpec, default_engine_settings
from runner.engines import http_import
from runner.engines.engine import make_engine, profile
from runner.engines.http_import import RequestContext
from runner.engines.modules import ModuleCache, load_worker
from runner.sandbox import Sandbox

HELLO = Path(__file__).resolve().parent / "workers" / "hello.js"

NO_HTTP = HttpPolicy([], ["GET", "POST", "PUT", "PATCH", "DELETE"], False)


def measure(worker: Path, requests: int) -> dict[str, float]:
    settings = default_engine_settings()
    engine = make_engine(settings)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    context = RequestContext()
    http_import.define(linker, context)
    with tempfile.TemporaryDirectory() as scratch:
        cache = ModuleCache(engine, str(Path(scratch) / "cache"), profile(settings))
        spec = WorkerSpec(worker.name, str(worker), "js", {}, [], NO_HTTP)
        loaded = load_worker(spec, cache, linker, write=True, http=context)
        sandbox = Sandbox(engine, {worker.name: loaded}, 10, scratch)
        invoke = Invoke(
            1,
            worker.name,
            "GET",
            "http://127.0.0.1/",
            [["host", "127.0.0.1"]],
            b"",
            {},
            {},
            100_000_000,
            64 << 20,
            1000,
        )
        for _ in range(50):  # warm up
            sandbox.run(invoke)
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            result = sandbox.run(invoke)
            samples.append((time.perf_counter() - start) * 1e6)
            assert isinstance(result, Reply), result
        sandbox.close()
    samples.sort()
    return {
        "median_us": statistics.median(samples),
        "p90_us": samples[int(len(samples) * 0.9)],
        "p99_us": samples[int(len(samples) * 0.99)],
        "fuel": float(result.fuel_used),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("worker", nargs="?", type=Path, default=HELLO)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    stats = measure(args.worker.resolve(), args.requests)
    for key, value in stats.items():
        print(f"{key:>10}: {value:,.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
