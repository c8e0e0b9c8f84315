"""bench/faults.py runs against the real server and writes its table (a smoke
test on three cheap classes; the whole table is `python bench/faults.py`).

Isolation is asserted, not only that a table came out: a trap, an idle runner
killed and a request with both Content-Length and Transfer-Encoding must each
cost no unrelated request and leave the pool full again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

CLASSES = ["trap", "kill-idle", "cl-te"]


def test_faults_quick_on_cheap_classes(tmp_path: Path, cache_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "bench/faults.py",
            "--quick",
            "--classes",
            ",".join(CLASSES),
            "--out-dir",
            str(tmp_path),
            "--cache-dir",
            str(cache_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["key"]: row for row in json.loads((tmp_path / "faults.json").read_text())["rows"]}
    assert sorted(rows) == sorted(CLASSES)
    for key, row in rows.items():
        assert row["unrelated_total"] > 0, key
        assert row["verdict"] == "ok", (key, row["problems"], result.stderr[-2000:])
        assert row["pool_full_worst_s"] is not None, key
    assert rows["trap"]["fault_answers"] == {"500 trap": 1}
    assert rows["kill-idle"]["runners_replaced"] == 1
    table = (tmp_path / "faults.md").read_text()
    assert "| trap | 1 | 500 trap x1 |" in table
