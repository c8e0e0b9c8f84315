"""The noisy-tenant scenario (issue 13): two tenants on one server, one of
them flooding it.

``quiet`` serves the compiled hello worker (``bench/workers/hello.wasm``);
``noisy`` serves an endless loop (``bench/workers/loop.wat``) that its
tenant's fuel cap stops after about 10 ms of CPU. The quiet tenant is
measured with wrk alone (unloaded), then while a second wrk floods the noisy
tenant with far more requests than its quota (``requests_per_second``,
``max_concurrency``, one runner). Rounds alternate, medians are reported.
The same is measured on a server whose noisy tenant has no quota (as one
would have with one shared pool), to show what the quota buys.

    .venv/bin/python bench/noisy_tenant.py [--seconds 6] [--rounds 3] [--no-compare]

Prints a Markdown table; ``--json FILE`` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.harness import Load, have, parse_wrk, server  # noqa: E402

QUOTA = """
[tenant.limits]
workers = 1
max_concurrency = 1
queue_size = 2
requests_per_second = 5
burst = 5
fuel = 20000000
"""


def _tenants(folder: Path, quota: bool) -> Path:
    quiet, noisy = folder / "quiet", folder / "noisy"
    for project in (quiet, noisy):
        project.mkdir(exist_ok=True)
    shutil.copy(BENCH / "workers" / "hello.wasm", quiet / "hello.wasm")
    shutil.copy(BENCH / "workers" / "loop.wat", noisy / "loop.wat")
    path = folder / ("tenants-quota.toml" if quota else "tenants-open.toml")
    noisy_limits = QUOTA if quota else "\n[tenant.limits]\nworkers = 2\nfuel = 20000000\n"
    path.write_text(
        f'[[tenant]]\nname = "quiet"\nroot = "{quiet}"\nhosts = ["quiet.test"]\n'
        "\n[tenant.limits]\nworkers = 2\n\n"
        f'[[tenant]]\nname = "noisy"\nroot = "{noisy}"\nhosts = ["noisy.test"]\n{noisy_limits}'
    )
    return path


def _wrk(url: str, host: str, seconds: int, connections: int, into: list[Load]) -> None:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-H",
            f"Host: {host}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    load = parse_wrk(result.stdout)
    into.append(load)


def measure(tenants: Path, cache: Path, seconds: int, rounds: int) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "supervisor",
        "--tenants",
        str(tenants),
        "-p",
        "0",
        "--cache-dir",
        str(cache),
    ]
    command += ["--no-access-log", "--log-level", "error"]
    alone: list[Load] = []
    flooded: list[Load] = []
    flood: list[Load] = []
    with server(command, "Start serving") as running:
        base = f"http://127.0.0.1:{running.port}"
        _wrk(f"{base}/hello", "quiet.test", 1, 4, [])  # warm up
        for _ in range(rounds):
            _wrk(f"{base}/hello", "quiet.test", seconds, 8, alone)
            noisy = threading.Thread(target=_wrk, args=(f"{base}/loop", "noisy.test", seconds + 2, 16, flood))
            noisy.start()
            _wrk(f"{base}/hello", "quiet.test", seconds, 8, flooded)
            noisy.join()
    unloaded = statistics.median(load.rps for load in alone)
    loaded = statistics.median(load.rps for load in flooded)
    return {
        "quiet_unloaded_rps": unloaded,
        "quiet_flooded_rps": loaded,
        "ratio": loaded / unloaded if unloaded else 0.0,
        "ratios": [f.rps / a.rps if a.rps else 0.0 for a, f in zip(alone, flooded, strict=True)],
        "quiet_errors": sum(load.errors() for load in [*alone, *flooded]),
        "quiet_p99_ms": statistics.median(load.p99_ms for load in flooded),
        "noisy_rps": statistics.median(load.rps for load in flood),
        "noisy_non_2xx": sum(load.non_2xx for load in flood),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compare", action="store_true", help="skip the server without a quota")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not have("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    results = {}
    with tempfile.TemporaryDirectory(prefix="noisy-tenant-") as tmp:
        folder = Path(tmp)
        cache = folder / "cache"
        results["quota"] = measure(_tenants(folder, quota=True), cache, args.seconds, args.rounds)
        if not args.no_compare:
            results["no quota"] = measure(_tenants(folder, quota=False), cache, args.seconds, args.rounds)
    print(f"Command: `python bench/noisy_tenant.py --seconds {args.seconds} --rounds {args.rounds}`\n")
    print(
        "| noisy tenant | quiet req/s alone | quiet req/s flooded | ratio (target >= 0.8) | per round |"
        " quiet errors | quiet p99 ms flooded | noisy req/s answered | noisy non-2xx |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, row in results.items():
        rounds = ", ".join(f"{r:.2f}" for r in row["ratios"])  # type: ignore[attr-defined]
        print(
            f"| {name} | {row['quiet_unloaded_rps']:.0f} | {row['quiet_flooded_rps']:.0f} "
            f"| {row['ratio']:.2f} "
            f"| {rounds} | {row['quiet_errors']} | {row['quiet_p99_ms']:.1f} | {row['noisy_rps']:.0f} "
            f"| {row['noisy_non_2xx']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
