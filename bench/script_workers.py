"""Python and Ruby workers: per-request cost with and without snapshots,
startup with a warm cache, and req/s through the server next to JS and compiled.

    .venv/bin/python -m bench.script_workers [--runtimes-dir DIR] [--seconds 5]
        [--parts requests,startup,server]

Needs the runtimes (``wws-supervisor runtimes install python|ruby``). Three parts:

1. In one process, the runner's own code (``runner.sandbox.Sandbox``): the
   median isolated cost of a hello request from the worker's snapshot, and
   the same worker run the way wws runs it (a fresh interpreter per request:
   CPython's ``_start`` on the wrapper, Ruby's init plus ``load``).
2. Startup of a project of 20 Python workers: cold (empty cache, the
   interpreter compiled) and warm (everything in the cache).
3. ``wrk`` against a real server (2 runners) for hello workers in Python,
   Ruby, JavaScript and compiled C.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, server, wrk
from bench.run import _supervisor

_PY = 'def worker(request):\n    return Response("Hello from Python")\n'
_RB = 'def worker(req)\n  Response.new("Hello from Ruby")\nend\n'
_REQUESTS = 200
_BENCH_CACHE = Path.home() / ".cache" / "wws-supervisor-bench"


def _in_runner(runtimes: Path) -> list[str]:
    import wasmtime

    from ipc.messages import HttpPolicy, Invoke, WorkerSpec, default_engine_settings
    from runner.engines.engine import make_engine, profile
    from runner.engines.http_import import RequestContext
    from runner.engines.modules import ModuleCache, load_worker
    from runner.sandbox import Sandbox
    from supervisor.project.runtimes import RUNTIMES, installed

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings = default_engine_settings()
        engine = make_engine(settings)
        cache = ModuleCache(engine, str(_BENCH_CACHE), profile(settings))
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        for name, ext, source in (("python", "py", _PY), ("ruby", "rb", _RB)):
            runtime = installed(RUNTIMES[name], runtimes)
            if runtime is None:
                rows.append(f"| {name} | not installed | | | |")
                continue
            path = folder / f"hello.{ext}"
            path.write_text(source)
            spec = WorkerSpec(
                "hello", str(path), ext, {}, [], HttpPolicy([], [], False), runtime=str(runtime)
            )
            worker = load_worker(spec, cache, linker, write=True, http=RequestContext())
            sandbox = Sandbox(engine, {"hello": worker}, 10, str(folder / "s"))
            times, fuel = [], 0
            for index in range(_REQUESTS):
                invoke = Invoke(
                    index, "hello", "GET", "http://x/", [], b"", {}, {}, 10**10, 256 << 20, 10_000
                )
                started = time.perf_counter()
                reply = sandbox.run(invoke)
                times.append(time.perf_counter() - started)
                fuel = reply.fuel_used
            sandbox.close()
            fresh = _fresh(name, runtime, path, engine)
            snap = statistics.median(times) * 1000
            rows.append(
                f"| {name} | {snap:.2f} ms | {1000 / snap:.0f} | {fuel / 1e6:.1f} M | "
                f"{fresh * 1000:.0f} ms (wws's way) |"
            )
    return rows


def _fresh(name: str, runtime: Path, worker: Path, engine: object) -> float:
    """Median cost of a request with a fresh interpreter, as wws runs one."""
    import wasmtime

    from runner.engines import rbworker, scriptrt
    from runner.engines.wasmffi import set_stdin_bytes

    assert isinstance(engine, wasmtime.Engine)
    module = wasmtime.Module.from_file(engine, str(runtime)) if name == "python" else None
    times = []
    src = worker.parent / f"src-{name}"
    src.mkdir(exist_ok=True)
    flavour = "3-1"
    (src / f"poly.{'py' if name == 'python' else 'rb'}").write_text(
        scriptrt.api_source(f"poly.{'py' if name == 'python' else 'rb'}", flavour)
    )
    request = b'{"url":"http://x/","method":"GET","headers":{},"body":"","kv":{},"params":{}}\n'
    if name == "python":
        wrapper = "from poly import *\n" + worker.read_text()
        wrapper += "import sys, json\nprint(worker(Request(json.loads(sys.stdin.read()))).to_json())\n"
        (src / "index.py").write_text(wrapper)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        assert module is not None
        for _ in range(10):
            store = wasmtime.Store(engine)
            store.set_fuel(10**11)
            store.set_epoch_deadline(1 << 40)
            wasi = wasmtime.WasiConfig()
            wasi.argv = ["--", "/src/index.py"]
            set_stdin_bytes(wasi, request)
            wasi.preopen_dir(str(src), "/src", False)
            store.set_wasi(wasi)
            started = time.perf_counter()
            instance = linker.instantiate(store, module)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    # Ruby: a fresh snapshot-less interpreter (init, ruby-init, load) per request.
    from ipc.messages import HttpPolicy, WorkerSpec
    from runner.engines.modules import ModuleCache

    cache = ModuleCache(engine, str(_BENCH_CACHE), "")
    spec = WorkerSpec("hello", str(worker), "rb", {}, [], HttpPolicy([], [], False), runtime=str(runtime))
    interpreter = scriptrt.interpreter(rbworker.RUBY, spec, cache, write=False)
    (src / "index.rb").write_text(worker.read_text())
    for _ in range(5):
        started = time.perf_counter()
        rbworker._bake(interpreter, spec, src)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _startup(runtimes: Path, count: int = 20) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as scratch:
        project, cache = Path(scratch) / "project", Path(scratch) / "cache"
        project.mkdir()
        for index in range(count):
            (project / f"w{index}.py").write_text(_PY.replace("Python", f"Python {index}"))
        command = _supervisor(
            project, cache, "-w", "2", "--runtimes-dir", str(runtimes), "--cache-max-mb", "4096"
        )
        times = []
        for _ in range(2):  # cold (compile), then warm (cache)
            with server(command, "Start serving", timeout=900) as running:
                times.append(running.ready_at - running.started_at)
        return times[0], times[1]


def _req_per_s(runtimes: Path, seconds: int) -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        (project / "py.py").write_text(_PY)
        (project / "rb.rb").write_text(_RB)
        shutil.copy(REPO / "bench/workers/hello.js", project / "js.js")
        shutil.copy(REPO / "bench/workers/hello.wasm", project / "c.wasm")
        command = _supervisor(
            project, _BENCH_CACHE, "-w", "2", "--runtimes-dir", str(runtimes), "--cache-max-mb", "4096"
        )
        rows = []
        with server(command, "Start serving", timeout=900) as running:
            for route, label in (
                ("/c", "compiled (C)"),
                ("/js", "JavaScript"),
                ("/py", "Python"),
                ("/rb", "Ruby"),
            ):
                load = wrk(f"http://127.0.0.1:{running.port}{route}", seconds, connections=8)
                rows.append(
                    f"| {label} | {load.rps:.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.non_2xx} |"
                )
        return rows


def main() -> None:
    from supervisor.config import default_runtimes_dir

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtimes-dir", type=Path, default=default_runtimes_dir())
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per route")
    parser.add_argument(
        "--parts",
        default="requests,startup,server",
        help="comma-separated: requests (in one runner), startup (20 workers), server (wrk)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "requests" in parts:
        print(
            "| runtime | per request, from the snapshot (median) | req/s, one runner | fuel "
            "| fresh interpreter |"
        )
        print("|---|---|---|---|---|")
        for row in _in_runner(args.runtimes_dir):
            print(row, flush=True)
    if "startup" in parts:
        cold, warm = _startup(args.runtimes_dir)
        print(f"\n20 Python workers, 2 runners: startup {cold:.1f} s cold (empty cache), {warm:.1f} s warm\n")
    if "server" in parts:
        print("| hello worker | req/s | p50 ms | p99 ms | non-2xx |")
        print("|---|---|---|---|---|")
        for row in _req_per_s(args.runtimes_dir, args.seconds):
            print(row, flush=True)


if __name__ == "__main__":
    main()
