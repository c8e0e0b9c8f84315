"""Small machines: what each memory layout costs per request, and the memory
budget of a 1 GB board. Prints Markdown tables (bench/README.md, "Small machines").

  .venv/bin/python bench/small_machines.py cost [--rounds 20 --requests 100]
      per-request time of the same workers under the three layouts of
      runner.engines.engine (in-process, a fresh instance per request, like a runner)
  .venv/bin/python bench/small_machines.py budget
      RSS and PSS of the supervisor and each runner, idle and after load,
      serving examples/ with -w 2, without a limit and under ulimit -v
  .venv/bin/python bench/small_machines.py js-capacity [--counts 100,200,400]
      memory of two runners serving N JavaScript workers; the N that fits 512 MB
      (past about 400 workers a runner passes --max-runner-rss-mb 256 and is
      recycled, so larger counts measure the ceiling, not the workers)

Nothing is asserted; the numbers vary with the machine and its other load.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, server
from ipc.messages import EngineSettings, HttpPolicy, Invoke, Reply, WorkerSpec
from runner.engines import engine as layouts
from runner.engines import http_import
from runner.engines.engine import MachineLimits
from runner.engines.http_import import RequestContext
from runner.engines.modules import ModuleCache, load_worker
from runner.sandbox import Sandbox

MiB = 1 << 20
NO_HTTP = HttpPolicy([], ["GET", "POST"], False)
WORKERS = REPO / "bench" / "workers"
LAYOUTS = {
    "pooled (4 GiB slots, no bounds checks)": EngineSettings("pooled", 4 << 30, 32 << 20, 8, 4 << 30),
    "pooled, bounds-checked (128 MiB slots)": EngineSettings(
        "pooled-bounded", 128 << 20, 2 << 20, 8, 128 << 20
    ),
    "on demand, bounds-checked": EngineSettings("on-demand", 0, 2 << 20, 0, 128 << 20),
}
# A worker that is mostly memory traffic: 4 MiB read and written word by
# word (about a million loads and stores), then a fixed response.
_MEMORY_HEAVY = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 64)
  (data (i32.const 64) "{\\"data\\":\\"ok\\",\\"status\\":200,\\"headers\\":{},\\"kv\\":{}}")
  (func (export "_start") (local $i i32) (local $sum i32)
    (local.set $i (i32.const 1024))
    (loop $next
      (local.set $sum (i32.add (local.get $sum) (i32.load (local.get $i))))
      (i32.store (local.get $i) (local.get $sum))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 4194304))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 47))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def _invoke(worker_id: str) -> Invoke:
    headers = [["host", "127.0.0.1"]]
    return Invoke(
        1, worker_id, "GET", "http://127.0.0.1/", headers, b"", {}, {}, 200_000_000, 128 << 20, 5000
    )


def cost(rounds: int, requests: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="wws-small-"))
    heavy = scratch / "memory_heavy.wat"
    heavy.write_text(_MEMORY_HEAVY)
    specs = [
        WorkerSpec("hello.wasm (C)", str(WORKERS / "hello.wasm"), "wasm", {}, [], NO_HTTP),
        WorkerSpec("hello.js", str(WORKERS / "hello.js"), "js", {}, [], NO_HTTP),
        WorkerSpec("4 MiB of loads and stores (WAT)", str(heavy), "wat", {}, [], NO_HTTP),
    ]
    runs: dict[str, Callable[[str], Reply]] = {}
    for name, settings in LAYOUTS.items():
        runs[name] = _sandbox(settings, specs, scratch / settings.mode)
    samples: dict[tuple[str, str], list[float]] = {
        (layout, s.worker_id): [] for layout in LAYOUTS for s in specs
    }
    for _ in range(rounds):  # interleaved, so a noisy neighbour hits every layout alike
        for layout, run in runs.items():
            for spec in specs:
                for _ in range(requests):
                    started = time.perf_counter()
                    run(spec.worker_id)
                    samples[(layout, spec.worker_id)].append((time.perf_counter() - started) * 1e6)
    print(f"Median µs per request ({rounds} rounds x {requests} requests, interleaved; p90 in brackets)\n")
    print("| worker | " + " | ".join(LAYOUTS) + " |")
    print("|---|" + "---:|" * len(LAYOUTS))
    for spec in specs:
        cells = []
        base = statistics.median(samples[(next(iter(LAYOUTS)), spec.worker_id)])
        for layout in LAYOUTS:
            values = sorted(samples[(layout, spec.worker_id)])
            median = statistics.median(values)
            ratio = "" if median == base else f", {median / base:.2f}x"
            cells.append(f"{median:,.0f} ({values[int(len(values) * 0.9)]:,.0f}){ratio}")
        print(f"| {spec.worker_id} | " + " | ".join(cells) + " |")


def _sandbox(settings: EngineSettings, specs: list[WorkerSpec], scratch: Path) -> Callable[[str], Reply]:
    scratch.mkdir(parents=True)
    engine = layouts.make_engine(settings)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    context = RequestContext()
    http_import.define(linker, context)
    cache = ModuleCache(engine, str(scratch / "cache"), layouts.profile(settings))
    loaded = {spec.worker_id: load_worker(spec, cache, linker, write=True, http=context) for spec in specs}
    sandbox = Sandbox(engine, loaded, 10, str(scratch))

    def run(worker_id: str) -> Reply:
        result = sandbox.run(_invoke(worker_id))
        assert isinstance(result, Reply), result
        return result

    for spec in specs:  # warm up
        for _ in range(20):
            run(spec.worker_id)
    return run


def _memory(pid: int) -> dict[str, tuple[float, float]]:
    """(RSS, PSS) in MiB of the supervisor and of each runner."""
    parent = psutil.Process(pid)
    out = {}
    for name, process in [("supervisor", parent), *((f"runner {c.pid}", c) for c in parent.children())]:
        info = process.memory_full_info()
        out[name] = (info.rss / MiB, info.pss / MiB)
    return out


def _load(port: int, paths: list[str], total: int) -> int:
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for index in range(total):
        conn.request("GET", paths[index % len(paths)])
        response = conn.getresponse()
        response.read()
        errors += response.status >= 500
    conn.close()
    return errors


_EXAMPLE_PATHS = [
    "/",
    "/hello",
    "/users/ada",
    "/c/counter",
    "/c/echo",
    "/c/files",
    "/js",
    "/js/hello/pi",
    "/js/counter",
    "/js/json",
    "/js/module",
    "/js/pixel",
    "/js/redirect",
]


def budget(requests: int) -> None:
    cache = Path(tempfile.mkdtemp(prefix="wws-small-cache-"))
    print(f"examples/ with -w 2; load: {requests} sequential requests over {len(_EXAMPLE_PATHS)} routes\n")
    print("| address space | layout | when | supervisor RSS (PSS) | runner 1 | runner 2 | total RSS | PSS |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for limit_kib in (None, 4_000_000, 1_000_000):
        command = f"exec {sys.executable} -m supervisor examples -p 0 -w 2 --cache-dir {cache}"
        if limit_kib is not None:
            command = f"ulimit -v {limit_kib}; {command}"
        with server(["bash", "-c", command], "Start serving"):
            pass  # the first start compiles into the cache; measure the next one
        with server(["bash", "-c", command], "Start serving") as running:
            pid = running.process.pid
            time.sleep(2)  # idle: let start-up garbage settle
            idle = _memory(pid)
            errors = _load(running.port, _EXAMPLE_PATHS, requests)
            loaded = _memory(pid)
        machine = dataclasses.replace(MachineLimits.read(), address_space=limit_kib and limit_kib * 1024)
        mode = layouts.plan_engine(128 * MiB, 2, machine).settings.mode
        label = "unlimited" if limit_kib is None else f"ulimit -v {limit_kib}"
        for when, values in (("idle", idle), ("after load", loaded)):
            rows = list(values.values())
            cells = [f"{rss:.0f} ({pss:.0f})" for rss, pss in rows]
            total_rss, total_pss = sum(r for r, _ in rows), sum(p for _, p in rows)
            note = f" ({errors} errors)" if when == "after load" and errors else ""
            print(
                f"| {label} | {mode} | {when}{note} | "
                + " | ".join(cells)
                + f" | {total_rss:.0f} | {total_pss:.0f} |"
            )


def js_capacity(counts: list[int]) -> None:
    print("Two runners (-w 2), N JavaScript workers, each requested once by each runner; MiB\n")
    print("| N workers | start (s) | supervisor RSS | runners RSS | total RSS | total PSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    points = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="wws-js-") as tmp:
            project = Path(tmp) / "project"
            project.mkdir()
            for index in range(count):
                (project / f"w{index}.js").write_text(
                    'addEventListener("fetch", (event) => {\n'
                    f'  const greeting = "worker {index}";\n'
                    "  const path = new URL(event.request.url).pathname;\n"
                    "  event.respondWith(new Response(greeting + ' ' + path));\n"
                    "});\n"
                )
            command = [sys.executable, "-m", "supervisor", str(project), "-p", "0", "-w", "2"]
            command += ["--cache-dir", str(Path(tmp) / "cache")]
            with server(command, "Start serving", timeout=1800) as running:
                started_s = running.ready_at - running.started_at
                # Each worker twice in a row: sequential requests alternate
                # between the two runners, so both load every worker's heap.
                paths = [f"/w{i}" for i in range(count) for _ in range(2)]
                errors = _load(running.port, paths, len(paths))
                values = _memory(running.process.pid)
        sup_rss = values["supervisor"][0]
        runners_rss = sum(rss for name, (rss, _) in values.items() if name != "supervisor")
        total_pss = sum(pss for _, pss in values.values())
        points.append((count, sup_rss + runners_rss, total_pss))
        note = f" ({errors} errors)" if errors else ""
        print(
            f"| {count}{note} | {started_s:.1f} | {sup_rss:.0f} | {runners_rss:.0f} | "
            f"{sup_rss + runners_rss:.0f} | {total_pss:.0f} |"
        )
    if len(points) >= 2:
        (n0, rss0, pss0), (n1, rss1, pss1) = points[0], points[-1]
        for name, m0, m1 in (("RSS (summed)", rss0, rss1), ("PSS", pss0, pss1)):
            slope = (m1 - m0) / (n1 - n0)
            fits = int(n0 + (512 - m0) / slope) if slope > 0 else 0
            print(f"\n{name} grows {slope * 1024:.0f} KiB per JavaScript worker: about {fits} fit in 512 MB.")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cost_parser = sub.add_parser("cost")
    cost_parser.add_argument("--rounds", type=int, default=20)
    cost_parser.add_argument("--requests", type=int, default=100)
    budget_parser = sub.add_parser("budget")
    budget_parser.add_argument("--requests", type=int, default=3000)
    js_parser = sub.add_parser("js-capacity")
    js_parser.add_argument("--counts", default="100,200,400")
    args = parser.parse_args()
    if args.command == "cost":
        cost(args.rounds, args.requests)
    elif args.command == "budget":
        budget(args.requests)
    else:
        js_capacity([int(n) for n in args.counts.split(",")])


if __name__ == "__main__":
    main()
