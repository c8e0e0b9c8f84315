"""Finding worker files in a project folder, with wws's exclusions.

Excluded at any depth: folders named ``public`` (static files), ``.wws``, and
every file or folder whose name starts with ``_``. ``--ignore`` adds globs,
matched against the path relative to the project: ``*`` and ``?`` stay inside
one path component, ``**`` spans any number of them (including none).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path

# Extension -> worker kind understood by the runner.
WORKER_KINDS = {".wasm": "wasm", ".wat": "wat", ".js": "js", ".py": "py", ".rb": "rb"}


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerFile:
    relative: str  # POSIX path relative to the project root, e.g. "api/[id].wasm"
    absolute: Path
    kind: str


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob (``**``, ``*``, ``?``, ``[...]``) into a regex over POSIX paths."""
    pattern = pattern.replace("\\", "/").removeprefix("./")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _excluded_name(name: str, is_dir: bool) -> bool:
    if name.startswith("_"):
        return True
    return is_dir and name in ("public", ".wws")


def discover(root: Path, ignore: Iterable[str] = ()) -> list[WorkerFile]:
    """Every worker file under ``root``, in a stable (sorted walk) order.

    Symlinked folders are not followed, so a link cannot pull files from outside
    the project into the route table.
    """
    ignores = [glob_to_regex(p) for p in ignore if p]
    found: list[WorkerFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _excluded_name(d, True))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            kind = WORKER_KINDS.get(os.path.splitext(name)[1])
            if kind is None or _excluded_name(name, False):
                continue
            relative = (rel_dir / name).as_posix()
            if any(rx.match(relative) for rx in ignores):
                continue
            found.append(WorkerFile(relative, Path(dirpath) / name, kind))
    return found
