"""The supervisor's scratch folder (guest stdout/stderr files of its runners),
on tmpfs when there is one, and the clean-up of folders left behind by a
supervisor that was killed before it could remove its own.

Each folder holds an ``owner`` file naming the supervisor's pid and start time,
so a later start can tell a dead owner from a live one (pids are reused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_PREFIX = "wws-supervisor-"
_OWNER_FILE = "owner"
# A folder without an owner file may be one a supervisor is creating right now.
_UNOWNED_GRACE_S = 60.0


def scratch_base() -> str | None:
    # tmpfs keeps the guests' output files off the disk.
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _owner_stamp(pid: int) -> str:
    return f"{pid} {psutil.Process(pid).create_time():.3f}"


def make_scratch(base: str | None = None) -> Path:
    """Create this supervisor's scratch folder and sign it."""
    folder = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base if base is not None else scratch_base()))
    (folder / _OWNER_FILE).write_text(_owner_stamp(os.getpid()))
    return folder


def _owner_alive(folder: Path) -> bool | None:
    """True or False when the folder names its owner; None when it does not."""
    try:
        pid_text, stamp = (folder / _OWNER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    try:
        return _owner_stamp(pid) == f"{pid} {stamp}"
    except psutil.Error:
        return False


def remove_stale_scratch(base: str | None = None) -> int:
    """Remove scratch folders whose supervisor is gone; returns how many."""
    root = Path(base if base is not None else (scratch_base() or tempfile.gettempdir()))
    removed = 0
    uid = os.getuid()
    with contextlib.suppress(OSError):
        for folder in root.glob(f"{_PREFIX}*"):
            try:
                info = folder.lstat()
            except OSError:
                continue
            if not folder.is_dir() or folder.is_symlink() or info.st_uid != uid:
                continue
            alive = _owner_alive(folder)
            if alive is None:
                alive = time.time() - info.st_mtime < _UNOWNED_GRACE_S
            if not alive:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    if removed:
        log.info("removed %d scratch folder(s) left by supervisors that were killed", removed)
    return removed
