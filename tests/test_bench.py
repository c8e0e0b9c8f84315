"""The bench runs and produces its table and raw numbers (a smoke test: no
timing is asserted, only that every scenario ran and reported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_bench_quick_produces_a_table(tmp_path: Path) -> None:
    # Two front ends only (the arbiter layout, against a two-process limit):
    # the one-process layout is the same code path minus the arbiter.
    command = ["bench/run.py", "--quick", "--frontends", "2", "--memory-frontends", "1", "2"]
    result = subprocess.run(
        [sys.executable, *command, "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "results.md").read_text()
    scenarios = ("limit:", "wasm:", "js:", "echo:", "noisy neighbour, ours", "peer: Node", "peer: wasmtime")
    for scenario in scenarios:
        assert f"| {scenario}" in table
    for measure in ("wasm / limit", "js / limit", "ours / node-peer", "idle growth per extra front end"):
        assert f"| {measure}" in table
    assert "| cold start to first 200, warm cache (s) |" in table
    raw = json.loads((tmp_path / "results.json").read_text())
    ours = {row["scenario"]: row for row in raw["rows"] if row["frontends"] == 2}
    assert ours["wasm: our server, compiled kit worker"]["rps"] > 0
    assert ours["echo: our server, echo-fetch.js handler"]["rps"] > 0
    assert ours["noisy neighbour, ours: /hello while /loop burns a runner"]["rps"] > 0
    # The arbiter layout: the arbiter, two front ends and their runners.
    idle = raw["layouts"]["2"]["memory_mb"]["idle"]
    assert {"arbiter", "frontend0", "frontend1", "runner0", "runner1"} <= set(idle)
    # The wasmtime serve peer is measured, or skipped with a note saying why.
    assert "wasmtime" in raw["peer notes"] or any(
        row["scenario"].startswith("peer: wasmtime") for row in raw["rows"]
    )
