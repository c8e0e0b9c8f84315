"""How a child process's exit reads in the log (runners, front ends, the
prepare step): a module of its own so the lean arbiter can import it."""

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
