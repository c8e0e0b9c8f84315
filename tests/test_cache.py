"""The cache's hygiene rules (runner.engines.cache_hygiene), on plain files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner.engines import cache_hygiene


def _entry(folder: Path, name: str, size: int, age_s: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_a_source_that_moves_to_new_entries_drops_its_old_ones_unless_another_names_them(
    tmp_path: Path,
) -> None:
    old, shared, new = (_entry(tmp_path, n, 10, 0) for n in ("old.cwasm", "shared.cwasm", "new.cwasm"))
    first = tmp_path / "src-a.json"
    cache_hygiene.record_use(first, "/p/a.js", [old, shared])
    cache_hygiene.record_use(tmp_path / "src-b.json", "/p/b.js", [shared])
    removed = cache_hygiene.record_use(first, "/p/a.js", [new])
    assert removed == [old]
    assert shared.exists() and new.exists()


def test_over_the_cap_least_recently_used_go_first_and_recent_ones_stay(tmp_path: Path) -> None:
    oldest = _entry(tmp_path, "k1-p.cwasm", 400, 300)
    oldest_note = _entry(tmp_path, "k1-p.json", 10, 300)
    middle = _entry(tmp_path, "k2-p.cwasm", 400, 200)
    recent = _entry(tmp_path, "k3-p.cwasm", 400, 0)
    cache_hygiene.record_use(tmp_path / "src-a.json", "/p/a", [oldest, oldest_note, middle])
    os.utime(oldest, (time.time() - 300,) * 2)
    os.utime(oldest_note, (time.time() - 300,) * 2)
    os.utime(middle, (time.time() - 200,) * 2)
    cache_hygiene.record_use(tmp_path / "src-b.json", "/p/b", [recent])
    removed = cache_hygiene.prune(tmp_path, 900, keep_since=time.time() - 10)
    assert set(removed) == {oldest, oldest_note}  # a compiled file goes with its note
    # Never an entry used since the start, even over the cap.
    cache_hygiene.prune(tmp_path, 1, keep_since=time.time() - 10)
    assert recent.exists() and not middle.exists()


def test_orphans_go_once_old_and_info_counts_them(tmp_path: Path) -> None:
    young = _entry(tmp_path, "young.cwasm", 10, 5)
    old = _entry(tmp_path, "old.cwasm", 10, cache_hygiene.ORPHAN_AGE_S + 5)
    assert cache_hygiene.info(tmp_path).orphans == 2
    assert cache_hygiene.prune(tmp_path, 1 << 30, keep_since=time.time()) == [old]
    assert young.exists()


def test_missing_and_damaged_records_are_harmless(tmp_path: Path) -> None:
    (tmp_path / "src-x.json").write_text("{not json")
    assert cache_hygiene.info(tmp_path).sources == 0
    assert cache_hygiene.info(tmp_path / "absent").total_bytes == 0
    assert cache_hygiene.prune(tmp_path / "absent", 0, keep_since=time.time()) == []
