"""One command for the JavaScript numbers: per-request cost inside a runner,
and end-to-end req/s through the server with wrk.

    .venv/bin/python bench/run.py [--quick] [--out bench/results.md]

Needs wrk (Debian: apt-get install wrk) for the end-to-end part; without it
that row says so. Writes a markdown table (stdout, and --out if given).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.js_request import HELLO, measure

REPO = Path(__file__).resolve().parent.parent
_START = re.compile(r"Start serving requests at http://127\.0\.0\.1:(\d+)")


def end_to_end(seconds: int, workers: int, connections: int) -> dict[str, str]:
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        return {"req/s": "wrk not installed", "p50": "-", "p99": "-", "errors": "-"}
    with tempfile.TemporaryDirectory() as project, tempfile.TemporaryDirectory() as cache:
        (Path(project) / "index.js").write_text(HELLO.read_text())
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                project,
                "-p",
                "0",
                "-w",
                str(workers),
                "--cache-dir",
                cache,
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        try:
            port = None
            assert server.stdout is not None
            for line in server.stdout:
                found = _START.search(line)
                if found:
                    port = found.group(1)
                    break
            assert port, "the server did not start"
            threading.Thread(target=server.stdout.read, daemon=True).start()
            url = f"http://127.0.0.1:{port}/"
            subprocess.run(["wrk", "-t1", "-c4", "-d1s", url], capture_output=True, check=True)  # warm up
            result = subprocess.run(
                ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            server.terminate()
            server.wait(30)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", result)
    p50 = re.search(r"50%\s+(\S+)", result)
    p99 = re.search(r"99%\s+(\S+)", result)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result)
    socket_errors = re.search(r"Socket errors: (.*)", result)
    return {
        "req/s": rps.group(1) if rps else "?",
        "p50": p50.group(1) if p50 else "?",
        "p99": p99.group(1) if p99 else "?",
        "errors": (errors.group(1) if errors else "0")
        + (f" ({socket_errors.group(1)})" if socket_errors else ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples and a 3 s load (about 20 s in all)"
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    requests, seconds = (500, 3) if args.quick else (5000, 15)
    inside = measure(HELLO, requests)
    workers = os.cpu_count() or 1
    e2e = end_to_end(seconds, workers, 32)
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("wasmtime", "trio", "hypercorn", "qjs-wasi-reactor.wasm")
    )
    table = "\n".join(
        [
            f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}; {versions}",
            "",
            "| scenario | result |",
            "|---|---|",
            f"| hello JS, isolated request inside a runner (median, {requests} requests) "
            f"| {inside['median_us']:.0f} us |",
            f"| same, p90 / p99 | {inside['p90_us']:.0f} / {inside['p99_us']:.0f} us |",
            f"| same, fuel per request | {inside['fuel']:,.0f} |",
            f"| hello JS through the server, wrk -t2 -c32 -d{seconds}s, {workers} runners: req/s "
            f"| {e2e['req/s']} |",
            f"| same, latency p50 / p99 | {e2e['p50']} / {e2e['p99']} |",
            f"| same, non-2xx responses | {e2e['errors']} |",
        ]
    )
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
