"""``wws-supervisor cache info|prune``, and the prune that follows every start.

The rules live in :mod:`runner.engines.cache_hygiene` (standard library only, so none
of this imports wasmtime).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from runner.engines import cache_hygiene
from supervisor.config import default_cache_dir

log = logging.getLogger(__name__)


def prune_after_start(cache_dir: Path, max_mb: int, keep_since: float) -> None:
    """Drop what the compile step just replaced or no longer names, then keep
    the cache under ``max_mb`` (never an entry used since ``keep_since``)."""
    removed = cache_hygiene.prune(cache_dir, max_mb << 20, keep_since=keep_since)
    if removed:
        log.info("cache: removed %d unused files from %s", len(removed), cache_dir)


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB"


def _info(cache_dir: Path) -> int:
    summary = cache_hygiene.info(cache_dir)
    print(f"cache: {summary.directory}")
    print(f"total: {_megabytes(summary.total_bytes)}")
    for kind, (count, size) in sorted(summary.entries.items()):
        print(f"  {kind}: {count} files, {_megabytes(size)}")
    print(f"worker files recorded: {summary.sources} ({summary.missing_sources} no longer exist)")
    print(f"entries no worker names: {summary.orphans}")
    return 0


def _prune(cache_dir: Path, max_mb: int, everything: bool) -> int:
    before = cache_hygiene.info(cache_dir).total_bytes
    if everything:
        removed = cache_hygiene.clear(cache_dir)
    else:
        # Orphans younger than a minute may belong to a start that is
        # compiling right now and has yet to record them.
        removed = cache_hygiene.prune(
            cache_dir, max_mb << 20, keep_since=time.time(), forget_missing=True, orphan_age_s=60
        )
    after = cache_hygiene.info(cache_dir).total_bytes
    print(f"removed {len(removed)} files; {_megabytes(before)} -> {_megabytes(after)} in {cache_dir}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wws-supervisor cache", description="Inspect or prune the compiled-module cache."
    )
    parser.add_argument("action", choices=["info", "prune"])
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument(
        "--cache-max-mb",
        type=int,
        default=cache_hygiene.DEFAULT_MAX_MB,
        help="prune: least recently used entries go until the cache is under this (default: %(default)s)",
    )
    parser.add_argument(
        "--all", action="store_true", help="prune: remove everything (it is rebuilt on the next start)"
    )
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "info":
        return _info(cache_dir)
    return _prune(cache_dir, args.cache_max_mb, args.all)
