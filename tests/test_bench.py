"""The bench runs and produces its table and raw numbers (a smoke test: no
timing is asserted, only that every scenario ran and reported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_bench_quick_produces_a_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "results.md").read_text()
    for scenario in ("limit:", "wasm:", "js:", "noisy neighbour, ours", "peer"):
        assert f"| {scenario}" in table
    assert "| wasm / limit (target >= 0.7) |" in table
    assert "| cold start to first 200, warm cache (s) |" in table
    raw = json.loads((tmp_path / "results.json").read_text())
    ours = {row["scenario"]: row for row in raw["rows"]}
    assert ours["wasm: our server, compiled kit worker"]["rps"] > 0
    assert ours["noisy neighbour, ours: /hello while /loop burns a runner"]["rps"] > 0
    assert raw["extra"]["memory_mb"]["idle"]["main"] > 0
