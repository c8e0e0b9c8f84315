"""The whole bench in one command: our server against its front end's ceiling
and against a peer, side by side in one run on one machine.

    .venv/bin/python bench/run.py            # about 3 minutes
    .venv/bin/python bench/run.py --quick    # about 1 minute, for development

Needs wrk (apt-get install wrk) and, for the peer, Node.js (apt-get install
nodejs). Writes bench/results.md (the table) and bench/results.json (raw
numbers) unless --out-dir says elsewhere. Absolute req/s drift on shared
machines; compare the ratios, which are taken within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, Load, have, server, wrk
from bench.js_request import HELLO as HELLO_JS
from bench.js_request import measure as measure_js

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
    """hello.wasm at /hello, hello.js at /js, the endless loop at /loop."""
    import wasmtime

    project = root / "project"
    project.mkdir()
    shutil.copy(WORKERS / "hello.wasm", project / "hello.wasm")
    shutil.copy(HELLO_JS, project / "js.js")
    (project / "loop.wasm").write_bytes(wasmtime.wat2wasm((WORKERS / "loop.wat").read_text()))
    return project


class _NoisyClient:
    """One client that keeps the endless-loop route busy, one request after another."""

    def __init__(self, url: str) -> None:
        self._url, self._stop = url, threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # 504 from us; from the peer a hang and then a reset (OSError).
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self._url, timeout=60).read()
            self.sent += 1

    def __enter__(self) -> _NoisyClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()


def _peer_rows(loop_wasm: Path, seconds: int) -> list[dict[str, Any]]:
    """The Node.js peer, unloaded and with the noisy neighbour. A machine
    without a usable Node (or node:wasi) gets a note instead of numbers."""
    if not have("node"):
        return [_row("peer: Node.js node:wasi", Load(note="node not installed"))]
    command = [
        "node",
        str(BENCH / "peers" / "node-wasi-server.js"),
        "0",
        f"/hello={WORKERS / 'hello.wasm'}",
        f"/loop={loop_wasm}",
    ]
    rows = []
    try:
        with server(command, "peer listening", timeout=30) as peer:
            url = f"http://127.0.0.1:{peer.port}/hello"
            wrk(url, 1)
            rows.append(_row("peer: Node.js node:wasi, same kit worker", wrk(url, seconds)))
        with (
            server(command, "peer listening", timeout=30) as peer,
            _NoisyClient(f"http://127.0.0.1:{peer.port}/loop"),
        ):
            load = wrk(f"http://127.0.0.1:{peer.port}/hello", seconds)
            rows.append(_row("noisy neighbour, peer: /hello while /loop runs", load))
    except RuntimeError as exc:
        rows.append(_row("peer: Node.js node:wasi", Load(note=f"peer did not start: {exc}")))
    return rows


def _first_200(url: str, started: float) -> float:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
    return time.monotonic() - started


def _median(loads: list[Load]) -> Load:
    return sorted(loads, key=lambda load: load.rps)[len(loads) // 2]


def _row(name: str, load: Load, rss: dict[str, float] | None = None) -> dict[str, Any]:
    return {"scenario": name, **dataclasses.asdict(load), "rss_mb": rss or {}}


def run(quick: bool) -> dict[str, Any]:
    seconds, rounds = (3, 1) if quick else (8, 3)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        project, cache = _bench_project(root), root / "cache"

        # The ceiling and our server run side by side and are measured in
        # alternation, several rounds, medians reported: the machine's noise
        # then hits both alike and the ratio holds.
        limit_cmd = [sys.executable, str(BENCH / "limit_app.py"), "0"]
        with (
            server(limit_cmd, "listening on") as limit,
            server(_supervisor(project, cache), "Start serving") as ours,
        ):
            idle = ours.rss_mb()
            base = f"http://127.0.0.1:{ours.port}"
            urls = {"limit": f"http://127.0.0.1:{limit.port}/", "wasm": f"{base}/hello", "js": f"{base}/js"}
            for url in urls.values():
                wrk(url, 1)  # warm up
            samples: dict[str, list[Load]] = {name: [] for name in urls}
            for _ in range(rounds):
                for name, url in urls.items():
                    samples[name].append(wrk(url, seconds))
            rows.append(_row("limit: bare ASGI hello on hypercorn (trio)", _median(samples["limit"])))
            rows.append(_row("wasm: our server, compiled kit worker", _median(samples["wasm"])))
            rows.append(_row("js: our server, hello JS worker", _median(samples["js"])))
            extra["rounds (medians reported)"] = rounds
            extra["wasm / limit per round"] = [
                round(ours_load.rps / ceiling.rps, 2) if ceiling.rps else 0.0
                for ours_load, ceiling in zip(samples["wasm"], samples["limit"], strict=True)
            ]
            loaded = ours.rss_mb()
            with _NoisyClient(f"{base}/loop"):
                noisy = wrk(f"{base}/hello", seconds)
            rows.append(_row("noisy neighbour, ours: /hello while /loop burns a runner", noisy))
            extra["memory_mb"] = {"idle": idle, "after load": loaded}

        rows += _peer_rows(root / "project" / "loop.wasm", seconds)

        examples_cache = root / "examples-cache"
        for label in ("empty", "warm"):
            with server(_supervisor(REPO / "examples", examples_cache, "-w", "2"), "Start serving") as cold:
                extra[f"cold start to first 200, {label} cache (s)"] = _first_200(
                    f"http://127.0.0.1:{cold.port}/hello", cold.started_at
                )

    js = measure_js(HELLO_JS, 300 if quick else 3000)
    extra["js in-runner median (us)"] = js["median_us"]
    extra["js in-runner p99 (us)"] = js["p99_us"]
    return {
        "rows": rows,
        "extra": extra,
        "machine": _machine(),
        "seconds": seconds,
        "connections": CONNECTIONS,
    }


def _machine() -> dict[str, str]:
    names = ("wasmtime", "trio", "hypercorn", "msgpack", "qjs-wasi-reactor.wasm")
    versions = {name: importlib.metadata.version(name) for name in names}
    return {
        "cpus": str(os.cpu_count()),
        "arch": platform.machine(),
        "python": platform.python_version(),
        **versions,
    }


def _by(results: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((r for r in results["rows"] if r["scenario"].startswith(prefix)), None)


def table(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['arch']}), Python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine.items() if k not in ("cpus", "arch", "python")),
        f"Load: wrk -t2 -c{results['connections']} -d{results['seconds']}s on loopback, sharing the CPUs.",
        "",
        "| scenario | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        if row["note"]:
            lines.append(f"| {row['scenario']} | {row['note']} | | | |")
            continue
        lines.append(
            f"| {row['scenario']} | {row['rps']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['non_2xx'] + row['socket_errors']} |"
        )
    lines += ["", "| measure | value |", "|---|---:|"]
    limit, wasm = _by(results, "limit"), _by(results, "wasm")
    noisy, peer, peer_noisy = (
        _by(results, "noisy neighbour, ours"),
        _by(results, "peer:"),
        _by(results, "noisy neighbour, peer"),
    )
    if limit and wasm and limit["rps"]:
        lines.append(f"| wasm / limit (target >= 0.7) | {wasm['rps'] / limit['rps']:.2f} |")
    if wasm and noisy and wasm["rps"]:
        ratio = noisy["rps"] / wasm["rps"]
        lines.append(f"| ours under noisy neighbour / unloaded (target >= 0.5, 0 errors) | {ratio:.2f} |")
    if peer and peer_noisy and peer["rps"]:
        lines.append(f"| peer under noisy neighbour / unloaded | {peer_noisy['rps'] / peer['rps']:.2f} |")
    for key, value in results["extra"].items():
        if key == "memory_mb":
            for phase, rss in value.items():
                parts = ", ".join(
                    f"{'supervisor' if k == 'main' else 'runner'} {v:.1f}" for k, v in rss.items()
                )
                lines.append(f"| RSS MiB, {phase} | {parts} |")
        elif isinstance(value, int):
            lines.append(f"| {key} | {value} |")
        elif isinstance(value, list):
            lines.append(f"| {key} | {', '.join(str(v) for v in value)} |")
        else:
            lines.append(
                f"| {key} | {value:.3f} |"
                if isinstance(value, float) and value < 100
                else f"| {key} | {value:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s per scenario and fewer samples (about a minute)"
    )
    parser.add_argument("--out-dir", type=Path, default=BENCH, help="where results.md and results.json go")
    args = parser.parse_args()
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    results = run(args.quick)
    text = table(results, command)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.md").write_text(text + "\n")
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
