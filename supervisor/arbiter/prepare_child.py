"""The arbiter's side of a reload's heavy half: reading the configuration
again, loading the project and compiling what changed all run in a throwaway
process (``python -m supervisor.arbiter.prepare``), so the arbiter never imports the
project loader, the compile step or wasmtime, and what they allocate is given
back when that process exits.

The arbiter writes ``{"argv": [...], "result_fd": N}`` on the child's stdin;
the child writes one JSON object on fd N: ``{"broken": [...], "workers": N}``
(the workers that failed to load, and the runner count of the configuration
read) or ``{"error": "one line"}``. Its logs go to the shared stdout.

Standard library only: the arbiter runs the process through its ownership
table (``supervisor/arbiter/reload.py``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import NamedTuple

from supervisor.pool.exit_status import describe_exit

# The answer is a list of worker names: far below this.
MAX_ANSWER_BYTES = 4 << 20


class PrepareFailed(Exception):
    """The reload cannot go ahead; the message is one line for the log."""


class Prepared(NamedTuple):
    broken: list[str]  # workers that failed to load
    workers: int  # the runner count the configuration now asks for

    def to_json(self) -> bytes:
        return json.dumps(self._asdict()).encode()


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


def prepare_command() -> list[str]:
    """The prepare process's command line; it dies with us (``--parent``)."""
    return [sys.executable, "-I", "-m", "supervisor.arbiter.prepare", "--parent", str(os.getpid())]


def prepare_order(argv: list[str], result_fd: int) -> bytes:
    """What the prepare process reads on its stdin."""
    return json.dumps({"argv": argv, "result_fd": result_fd}).encode()


class AnswerBuffer:
    """Collects the prepare process's answer (bounded: a runaway child
    cannot make the arbiter grow)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self._data) <= MAX_ANSWER_BYTES:
            self._data.extend(chunk)

    def result(self, returncode: int | None) -> Prepared:
        """The answer, once the process has exited with ``returncode``.

        Raises:
            PrepareFailed: the configuration, the project or the compile
                step failed (the child's one-line reason), or the child died
                without answering.
        """
        try:
            return parse_answer(bytes(self._data))
        except ValueError:
            how = describe_exit(returncode)
            raise PrepareFailed(f"the prepare process {how} before it answered") from None
