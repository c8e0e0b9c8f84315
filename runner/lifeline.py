"""Dying with the parent: a runner (or a front end under the arbiter) must
never outlive the process that owns it, even when it is stuck in a host call
or stopped, so it cannot act on anything by itself.

Linux delivers a chosen signal when the *thread* that forked us exits
(``PR_SET_PDEATHSIG``); our parents spawn from their event loop's main thread,
which lives as long as they do (see ``supervisor/pool/children.py``).
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def parent_argument(argv: list[str]) -> int | None:
    """The pid given as ``--parent PID`` (how a parent names itself), if any."""
    if len(argv) >= 2 and argv[0] == "--parent" and argv[1].isdigit():
        return int(argv[1])
    return None


def die_with_parent(argv: list[str]) -> bool:
    """Ask the kernel to SIGKILL us when the parent named in ``argv`` dies,
    then check it has not died already. Returns False when it is gone."""
    parent = parent_argument(argv)
    if parent is None:
        return True  # started by hand: nobody to follow
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: EOF on stdin still ends an idle child
    # The parent may have died between fork and prctl: we would have been
    # re-parented already, and no signal would ever come.
    return os.getppid() == parent
