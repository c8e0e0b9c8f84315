"""Keeping the compiled-module cache small: records, pruning, a size cap.

The cache is shared by every project (and wasmtime version) on the machine,
so "unused" cannot mean "not in this project". Instead the compile step
records, per worker source file, the entries that file uses now
(``src-<hash>-<profile>.json``). When a worker is edited its new entries
replace the old ones in its record, and the old ones are deleted unless
another record still names them. Entries no record names (left by older
releases) go once they are an hour old, and least-recently-used entries go
while the cache is over its cap. The compile step touches every entry it
uses, so modification time is the last-use time.

Standard library only: the supervisor and the ``cache`` command use it without
importing wasmtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

RECORD_PREFIX = "src-"
_TEMP_PREFIX = ".tmp-"
# Older than this, an entry no record names is not being written by a
# compile step that has yet to record it.
ORPHAN_AGE_S = 3600.0
DEFAULT_MAX_MB = 512


def record_key(source: str) -> str:
    return RECORD_PREFIX + hashlib.sha256(source.encode()).hexdigest()[:24]


def record_use(record: Path, source: str, files: Iterable[Path]) -> list[Path]:
    """Note that ``source`` uses ``files`` now (and touch them: last use).
    Files it used before and no other record names are deleted; returns them."""
    used = sorted({str(f) for f in files})
    now = time.time()
    for name in used:
        # A file that is not stored (a compile step that cannot write) has nothing to age.
        with contextlib.suppress(OSError):
            os.utime(name, (now, now))
    previous = _read_record(record)
    stale = _listed(previous) - set(used)
    _write_json(record, {"source": source, "files": used})
    if not stale:
        return []
    still_named = _named_files(record.parent, exclude=record)
    removed = []
    for name in sorted(stale - still_named):
        path = Path(name)
        if path.parent == record.parent and _unlink(path):
            removed.append(path)
    return removed


@dataclasses.dataclass(frozen=True, slots=True)
class CacheInfo:
    directory: Path
    total_bytes: int
    entries: dict[str, tuple[int, int]]  # kind -> (files, bytes)
    sources: int  # worker files with a record
    missing_sources: int  # records whose worker file no longer exists
    orphans: int  # entries no record names


def info(directory: Path) -> CacheInfo:
    files = _entry_files(directory)
    named = _named_files(directory)
    sources = _records(directory)
    kinds: dict[str, tuple[int, int]] = {}
    for path, size, _ in files:
        kind = _kind(path)
        count, total = kinds.get(kind, (0, 0))
        kinds[kind] = (count + 1, total + size)
    return CacheInfo(
        directory,
        sum(size for _, size, _ in files),
        kinds,
        len(sources),
        sum(1 for _, document in sources if not Path(str(document.get("source", ""))).exists()),
        sum(1 for path, _, _ in files if str(path) not in named and _kind(path) != "record"),
    )


def prune(
    directory: Path,
    max_bytes: int,
    *,
    keep_since: float,
    forget_missing: bool = False,
    orphan_age_s: float = ORPHAN_AGE_S,
) -> list[Path]:
    """Delete what is not worth keeping; returns the deleted files.

    * with ``forget_missing``: records of worker files that no longer exist,
      and the entries only they named;
    * entries no record names, once older than ``orphan_age_s``;
    * then least recently used entries (never one used at or after
      ``keep_since``) until the cache is under ``max_bytes``.
    """
    removed: list[Path] = []
    now = time.time()
    forgotten: set[str] = set()
    if forget_missing:
        for record, document in _records(directory):
            if not Path(str(document.get("source", ""))).exists() and _unlink(record):
                removed.append(record)
                forgotten |= _listed(document)
    named = _named_files(directory)
    for name in sorted(forgotten - named):
        path = Path(name)
        if path.parent == directory and _unlink(path):
            removed.append(path)
    groups: dict[str, list[tuple[Path, int, float]]] = {}
    for path, size, mtime in _entry_files(directory):
        if path.name.startswith(_TEMP_PREFIX):
            if now - mtime > ORPHAN_AGE_S and _unlink(path):
                removed.append(path)
            continue
        if _kind(path) == "record":
            continue
        if str(path) not in named and now - mtime >= orphan_age_s and mtime < keep_since:
            if _unlink(path):
                removed.append(path)
            continue
        # A compiled file and its note live and die together.
        groups.setdefault(path.stem, []).append((path, size, mtime))
    total = sum(size for group in groups.values() for _, size, _ in group)
    for _, group in sorted(groups.items(), key=lambda item: max(m for _, _, m in item[1])):
        if total <= max_bytes:
            break
        if max(m for _, _, m in group) >= keep_since:
            continue
        for path, size, _ in group:
            if _unlink(path):
                removed.append(path)
                total -= size
    return removed


def clear(directory: Path) -> list[Path]:
    """Delete every entry and record (the cache rebuilds itself)."""
    return [path for path, _, _ in _entry_files(directory) if _unlink(path)]


def _kind(path: Path) -> str:
    name = path.name
    if name.startswith(RECORD_PREFIX):
        return "record"
    if name.startswith("qjs-engine-"):
        return "JavaScript engine"
    if name.startswith("js-"):
        return "JavaScript heaps"
    if name.startswith(_TEMP_PREFIX):
        return "unfinished writes"
    return "compiled workers"


def _entry_files(directory: Path) -> list[tuple[Path, int, float]]:
    out = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        # Heap files have holes: what they hold, not their length.
                        held = min(stat.st_size, stat.st_blocks * 512)
                        out.append((Path(entry.path), held, stat.st_mtime))
                except OSError:
                    continue
    except OSError:
        return []
    return out


def _records(directory: Path) -> list[tuple[Path, dict[str, object]]]:
    out = []
    for path in directory.glob(f"{RECORD_PREFIX}*.json"):
        document = _read_record(path)
        if document is not None:
            out.append((path, document))
    return out


def _named_files(directory: Path, exclude: Path | None = None) -> set[str]:
    named: set[str] = set()
    for path, document in _records(directory):
        if path != exclude:
            named.update(_listed(document))
    return named


def _listed(document: dict[str, object] | None) -> set[str]:
    files = document.get("files") if document else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def _read_record(path: Path) -> dict[str, object] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _write_json(target: Path, document: dict[str, object]) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:  # already gone, or not ours to delete
        return False
    return True
