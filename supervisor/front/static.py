"""Files from the project's ``public/`` folder.

The path is checked component by component before touching the disk (no
``..``, no hidden names, no backslashes or NULs), then resolved with symlinks
and required to stay inside ``public/``: a symlink pointing outside is a 404.
"""

from __future__ import annotations

import dataclasses
import email.utils
import mimetypes
import os
import stat
from pathlib import Path

_TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml", "application/xml")
_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".md": "text/markdown",
}


@dataclasses.dataclass(frozen=True, slots=True)
class StaticFile:
    path: Path
    size: int
    content_type: str
    etag: str
    last_modified: str


def content_type_for(path: Path) -> str:
    suffix = path.suffix.lower()
    guessed = _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if guessed.startswith(_TEXT_TYPES):
        return guessed + "; charset=utf-8"
    return guessed


class PublicFolder:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def lookup(self, url_path: str) -> StaticFile | None:
        """The file served at ``url_path`` (already percent-decoded, prefix removed)."""
        parts = [p for p in url_path.split("/") if p]
        for part in parts:
            if part.startswith(".") or "\\" in part or "\0" in part:
                return None
        candidate = self.root.joinpath(*parts)
        found = self._regular_file(candidate)
        if found is None:
            found = self._regular_file(candidate / "index.html")
        return found

    def _regular_file(self, candidate: Path) -> StaticFile | None:
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if real != self.root and self.root not in real.parents:
            return None
        try:
            info = real.stat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or not os.access(real, os.R_OK):
            return None
        return StaticFile(
            path=real,
            size=info.st_size,
            content_type=content_type_for(real),
            etag=f'"{info.st_mtime_ns:x}-{info.st_size:x}"',
            last_modified=email.utils.formatdate(info.st_mtime, usegmt=True),
        )
