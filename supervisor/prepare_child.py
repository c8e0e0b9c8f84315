"""The arbiter's side of a reload's heavy half: reading the configuration
again, loading the project and compiling what changed all run in a throwaway
process (``python -m supervisor.prepare``), so the arbiter never imports the
project loader, the compile step or wasmtime, and what they allocate is given
back when that process exits.

The arbiter writes ``{"argv": [...], "result_fd": N}`` on the child's stdin;
the child writes one JSON object on fd N: ``{"broken": [...], "workers": N}``
(the workers that failed to load, and the runner count of the configuration
read) or ``{"error": "one line"}``. Its logs go to the shared stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys

import trio

from supervisor.children import Child, own
from supervisor.exit_status import describe_exit

# The answer is a list of worker names: far below this.
_MAX_ANSWER_BYTES = 4 << 20


class PrepareFailed(Exception):
    """The reload cannot go ahead; the message is one line for the log."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    broken: list[str]  # workers that failed to load
    workers: int  # the runner count the configuration now asks for

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()


def parse_answer(data: bytes) -> Prepared:
    """The child's answer.

    Raises:
        PrepareFailed: it reported an error.
        ValueError: it is not an answer (the child died before finishing it).
    """
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("not an object")
    if "error" in answer:
        raise PrepareFailed(str(answer["error"]))
    broken, workers = answer.get("broken"), answer.get("workers")
    if not isinstance(broken, list) or not isinstance(workers, int) or workers < 1:
        raise ValueError("no broken list or runner count")
    return Prepared([str(name) for name in broken], workers)


def error_answer(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def prepare_reload(argv: list[str], grace_s: float) -> Prepared:
    """Run the prepare process for the command line ``argv`` and return its
    answer. If this task is cancelled, the process is asked to stop (SIGTERM,
    then SIGKILL after ``grace_s``) and reaped.

    Raises:
        PrepareFailed: the configuration, the project or the compile step
            failed (the child's one-line reason), or the child could not start
            or died without answering.
    """
    popen, read_fd = _spawn(argv)
    child = Child(popen)
    stream = trio.lowlevel.FdStream(read_fd)
    answer = bytearray()

    async def collect() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while len(answer) <= _MAX_ANSWER_BYTES and (chunk := await stream.receive_some(65536)):
                answer.extend(chunk)

    async with trio.open_nursery() as nursery:
        owner = functools.partial(
            own,
            child,
            ask_to_exit=functools.partial(child.send_signal, signal.SIGTERM),
            beside=collect,
            release=stream.close,
            grace_s=grace_s,
        )
        await nursery.start(owner)
    try:
        return parse_answer(bytes(answer))
    except ValueError:
        how = describe_exit(child.returncode)
        raise PrepareFailed(f"the prepare process {how} before it answered") from None


def _spawn(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """The prepare process, and our end of its answer pipe.

    Raises:
        PrepareFailed: it cannot be started.
    """
    read_fd, write_fd = os.pipe()
    try:
        # From the event loop's thread, out of the terminal's process group:
        # as front ends are (see supervisor/children.py).
        popen = subprocess.Popen(
            [sys.executable, "-I", "-m", "supervisor.prepare", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            pass_fds=[write_fd],
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_fd)
        raise PrepareFailed(f"cannot start the prepare process: {exc}") from None
    finally:
        os.close(write_fd)
    assert popen.stdin is not None
    with contextlib.suppress(OSError):
        popen.stdin.write(json.dumps({"argv": argv, "result_fd": write_fd}).encode())
    with contextlib.suppress(OSError):
        popen.stdin.close()
    return popen, read_fd
