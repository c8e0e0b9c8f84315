"""How a child process's exit reads in the log, for code that must stay
light (the arbiter); ``supervisor/runners.py`` has the same words for runners."""

from __future__ import annotations

import signal


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"
