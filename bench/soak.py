"""Soak: moderate mixed load against the real server for a while, sampling
the RSS and open descriptors of the supervisor and of every runner.

    .venv/bin/python bench/soak.py                # 10 minutes
    .venv/bin/python bench/soak.py --minutes 2

Serves bench/faults/ with two runners. Paced clients (about 60 requests per
second in all) request a compiled worker (/hello), a JavaScript worker (/js),
a KV counter (/counter) and a static file (/static.txt); one more client sends
a fault every few seconds (trap, endless loop, memory bomb, exit, stack
overflow, stuck host call, hostile outputs), so runners are lost and replaced
along the way. Writes bench/soak.md and bench/soak.json (or into --out-dir)
with the samples and a least-squares slope per process role: the supervisor,
and the runners (mean per live runner, since runners come and go).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.probe import (
    REPO,
    WORKERS,
    PacedClient,
    Sample,
    Server,
    command_args,
    describe,
    exchange,
    get,
    start_server,
)

ROUTES = [
    ("/hello", b"hello", 0.05),
    ("/js", None, 0.05),
    ("/counter", None, 0.1),
    ("/static.txt", None, 0.1),
]
FAULTS = ["/trap", "/loop", "/grow", "/exit", "/stack", "/sleep", "/surrogate", "/deep", "/status", "/bigout"]
_MIB = 1 << 20


def sample(server: Server, started: float) -> dict[str, Any] | None:
    """One reading of every process; None when the supervisor is gone."""
    try:
        main = psutil.Process(server.proc.pid)
        row: dict[str, Any] = {
            "t_s": round(time.monotonic() - started, 1),
            "supervisor": {"rss_mib": main.memory_info().rss / _MIB, "fds": main.num_fds()},
        }
    except psutil.Error:
        return None
    runners = []
    for proc in server.runners():
        try:
            runners.append({"pid": proc.pid, "rss_mib": proc.memory_info().rss / _MIB, "fds": proc.num_fds()})
        except psutil.Error:
            continue  # replaced between the listing and the reading
    row["runners"] = runners
    return row


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def series(samples: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for row in samples:
        t = row["t_s"]
        out["supervisor RSS (MiB)"].append((t, row["supervisor"]["rss_mib"]))
        out["supervisor fds"].append((t, row["supervisor"]["fds"]))
        if row["runners"]:
            out["runner RSS (MiB, mean per runner)"].append(
                (t, statistics.fmean(r["rss_mib"] for r in row["runners"]))
            )
            out["runner fds (mean per runner)"].append(
                (t, statistics.fmean(r["fds"] for r in row["runners"]))
            )
    return out


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    log = Path(tempfile.mkdtemp(prefix="wws-soak-")) / "server.log"
    print(f"server log: {log}", file=sys.stderr)
    server = await start_server(args.cache_dir, log)
    clients = [PacedClient(lambda: server.port, path, expect, pause) for path, expect, pause in ROUTES]
    faults: collections.Counter[str] = collections.Counter()
    fault_log: list[tuple[float, float, str]] = []  # (sent, answered, path), seconds from the start
    samples: list[dict[str, Any]] = []
    duration = args.minutes * 60
    interval = max(1.0, duration / 120)
    started = time.monotonic()

    async def fault_sender() -> None:
        index = 0
        while True:
            await trio.sleep(args.fault_every)
            path = FAULTS[index % len(FAULTS)]
            index += 1
            sent = time.monotonic() - started
            status, failure, _ = await exchange(server.port, get(path, server.port), wait_s=30)
            faults[f"{path} {describe(status, failure)}"] += 1
            fault_log.append((sent, time.monotonic() - started, path))

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.run)
        nursery.start_soon(fault_sender)
        while time.monotonic() - started < duration:
            row = sample(server, started)
            if row is None:
                break
            row["requests"] = sum(len(c.samples) for c in clients)
            row["failed"] = sum(not s.ok for c in clients for s in c.samples)
            samples.append(row)
            await trio.sleep(interval)
        nursery.cancel_scope.cancel()
    survived = server.alive()
    final = await exchange(server.port, get("/counter", server.port), wait_s=10) if survived else None
    await trio.to_thread.run_sync(server.stop)
    counter_ok = sum(s.ok for s in clients[2].samples)
    return {
        "meta": _meta(args, interval, log),
        "survived": survived,
        "routes": {c.path: _route(c.samples) for c in clients},
        "faults": dict(faults),
        "kv_counter": {
            "successful_increments": counter_ok,
            "next_value_read": final[2].decode("latin-1") if final else None,
        },
        "slowest": _slowest(clients, fault_log, started),
        "runners_seen": len({r["pid"] for row in samples for r in row["runners"]}),
        "slopes": _slopes(samples),
        "samples": samples,
    }


def _slowest(
    clients: list[PacedClient], fault_log: list[tuple[float, float, str]], started: float
) -> list[dict[str, Any]]:
    """The five slowest requests, each with the faults in flight around it."""
    every = sorted(((s, c.path) for c in clients for s in c.samples), key=lambda p: -p[0].latency)[:5]
    out = []
    for sample, path in every:
        begin, end = sample.start - started, sample.start - started + sample.latency
        near = [f"{p} ({a - b:.1f} s)" for b, a, p in fault_log if b - 1 <= end and a + 1 >= begin]
        out.append(
            {
                "route": path,
                "t_s": round(begin, 1),
                "latency_ms": round(sample.latency * 1000, 1),
                "what": sample.what,
                "faults_in_flight": near,
            }
        )
    return out


def _route(samples: list[Sample]) -> dict[str, Any]:
    latencies = sorted(s.latency * 1000 for s in samples)
    failed = collections.Counter(s.what for s in samples if not s.ok)
    return {
        "requests": len(samples),
        "failed": sum(failed.values()),
        "failures": dict(failed),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "max_ms": round(latencies[-1], 1) if latencies else None,
    }


def _slopes(samples: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out = {}
    for name, points in series(samples).items():
        half = [p for p in points if p[0] >= points[-1][0] / 2]
        out[name] = {
            "first": round(points[0][1], 1),
            "last": round(points[-1][1], 1),
            "slope_per_hour": _round(slope_per_hour(points)),
            "slope_per_hour_second_half": _round(slope_per_hour(half)),
        }
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _meta(args: argparse.Namespace, interval: float, log: Path) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "command": " ".join(["python", "bench/soak.py", *command_args(sys.argv[1:])]),
        "commit": os.environ.get("WWS_BENCH_COMMIT") or commit.stdout.strip(),
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "minutes": args.minutes,
        "sample_interval_s": interval,
        "fault_every_s": args.fault_every,
        # Its folder is printed at the start; no machine path in the results.
        "server_log": log.name,
    }


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    out = [
        f"Command: `{meta['command']}`; commit {meta['commit']}; {meta['machine']}; {meta['date']}.",
        "",
        f"`bench/faults/` served with `-w {WORKERS}` for {meta['minutes']} min: paced clients on "
        + ", ".join(f"`{path}`" for path, _, _ in ROUTES)
        + f", and a fault every {meta['fault_every_s']:.0f} s ("
        + ", ".join(f"`{p}`" for p in FAULTS)
        + f"). {result['runners_seen']} runner processes were seen in all; the server "
        + ("kept running." if result["survived"] else "**died**."),
        "",
        "| process role | first | last | slope per hour (all) | slope per hour (second half) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in result["slopes"].items():
        out.append(
            f"| {name} | {s['first']} | {s['last']} | {_signed(s['slope_per_hour'])} "
            f"| {_signed(s['slope_per_hour_second_half'])} |"
        )
    out += ["", "| route | requests | failed | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for path, r in result["routes"].items():
        failed = f"{r['failed']} {r['failures']}" if r["failed"] else "0"
        out.append(
            f"| `{path}` | {r['requests']} | {failed} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    out.append("")
    out.append(
        "Slowest requests: "
        + "; ".join(
            f"`{r['route']}` {r['latency_ms']:.0f} ms at {r['t_s']:.0f} s (faults within 1 s: "
            f"{', '.join(r['faults_in_flight']) or 'none'})"
            for r in result["slowest"]
        )
        + "."
    )
    kv = result["kv_counter"]
    out += [
        "",
        f"KV counter: {kv['successful_increments']} successful increments; the next request read "
        f"`{kv['next_value_read']}`.",
        "",
        "Faults sent: " + ", ".join(f"{k} x{v}" for k, v in sorted(result["faults"].items())) + ".",
        "",
        "| t (s) | supervisor RSS MiB | supervisor fds | runners | runner RSS MiB (each) | runner fds (each) "
        "| requests | failed |",
        "|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    samples = result["samples"]
    step = max(1, len(samples) // 20)
    for row in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
        rss = ", ".join(f"{r['rss_mib']:.1f}" for r in row["runners"])
        fds = ", ".join(str(r["fds"]) for r in row["runners"])
        out.append(
            f"| {row['t_s']:.0f} | {row['supervisor']['rss_mib']:.1f} | {row['supervisor']['fds']} "
            f"| {len(row['runners'])} | {rss} | {fds} | {row['requests']} | {row['failed']} |"
        )
    return "\n".join(out) + "\n"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--fault-every", type=float, default=5.0, help="seconds between faults (default 5)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "wws-faults-cache")
    args = parser.parse_args(argv)
    result = trio.run(soak, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    (args.out_dir / "soak.md").write_text("# Soak\n\n" + table)
    (args.out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table)
    return 0 if result["survived"] else 1


if __name__ == "__main__":
    sys.exit(main())
