"""Startup progress while the compile step has real work to do.

The compile step runs in a throwaway runner and answers once, at the end. What
it has done so far is visible in the cache: every JavaScript heap and the
shared engine get a JSON note when built (and are touched when reused). A
first start of a large project, or a start on a slow machine, then shows which
worker was snapshotted and how many are left; a warm start, which finishes
before the first look, prints nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO, TypeVar

import trio

from supervisor.project.discovery import WorkerFile

T = TypeVar("T")
# A warm start prepares in a fraction of this: say nothing then.
FIRST_LOOK_S = 0.5
LOOK_EVERY_S = 0.25


async def with_progress(
    prepare: Callable[[], Awaitable[T]], cache_dir: Path, workers: list[WorkerFile], out: TextIO
) -> T:
    """Await ``prepare()``, printing progress lines to ``out`` meanwhile."""
    scripts = {str(w.absolute): w.relative for w in workers if w.kind == "js"}
    watcher = _Watcher(cache_dir, time.time(), scripts, out)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run)
        result = await prepare()
        nursery.cancel_scope.cancel()
    watcher.finish()
    return result


class _Watcher:
    def __init__(self, cache_dir: Path, since: float, scripts: dict[str, str], out: TextIO) -> None:
        self._cache_dir = cache_dir
        self._since = since
        self._scripts = scripts
        self._out = out
        self._seen: set[str] = set()
        self._done: set[str] = set()
        self._reporting = False

    async def run(self) -> None:
        await trio.sleep(FIRST_LOOK_S)
        print("⏳ Compiling (first start, or after an edit or an upgrade)...", file=self._out, flush=True)
        self._reporting = True
        while True:
            self._look()
            await trio.sleep(LOOK_EVERY_S)

    def finish(self) -> None:
        # What happened since the last look, once reporting has begun.
        if self._reporting:
            self._look()

    def _look(self) -> None:
        try:
            notes = [p for p in self._cache_dir.glob("*.json") if p.name not in self._seen]
        except OSError:
            return
        fresh = []
        for path in notes:
            try:
                if path.stat().st_mtime < self._since:
                    continue
                note = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            self._seen.add(path.name)
            if isinstance(note, dict):
                fresh.append(note)
        for note in sorted(fresh, key=lambda n: float(n.get("created", 0))):
            built = float(note.get("created", 0)) >= self._since
            if note.get("kind") == "engine" and built:
                print("   🔧 compiled the JavaScript engine (once per engine version)", file=self._out)
            elif note.get("kind") == "js-heap" and note.get("source") in self._scripts:
                worker = self._scripts[str(note["source"])]
                self._done.add(worker)
                if built:
                    left = len(self._scripts) - len(self._done)
                    print(f"   📸 {worker}: heap snapshot taken ({left} left)", file=self._out)
        self._out.flush()
