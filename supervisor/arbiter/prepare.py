"""``python -m supervisor.arbiter.prepare --parent PID``: a reload's heavy half, in a
throwaway process the arbiter starts (``supervisor/arbiter/prepare_child.py`` has
its side and the protocol).

It reads the configuration again (the command line over its ``--config``
file), loads the project and compiles every worker into the module cache,
then answers which workers failed to load and how many runners the
configuration asks for, or the one-line reason it could not. The front ends
the arbiter starts next load the project themselves and find every module
compiled.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys

import trio

from runner.lifeline import die_with_parent
from supervisor.arbiter.prepare_child import Prepared, error_answer
from supervisor.cli import load_config
from supervisor.config import ServerConfig
from supervisor.ops.logs import setup_logging
from supervisor.pool.compiling import compile_project
from supervisor.project.project import StartupError, load_project


async def _prepare(config: ServerConfig) -> Prepared:
    project_arg = str(config.project)
    quiet = io.StringIO()  # startup lines are for the first start only
    project, config = load_project(config, project_arg, quiet)
    broken = await compile_project(config, project, project_arg, quiet)
    return Prepared(sorted(broken), config.pool.workers)


def _answer(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the arbiter is gone: nobody to tell
        os.write(fd, data)


def main() -> int:
    if not die_with_parent(sys.argv[1:]):
        return 0
    request = json.loads(sys.stdin.buffer.read())
    result_fd = int(request["result_fd"])
    os.set_inheritable(result_fd, False)  # the compile runner has no business with it
    try:
        config = load_config([str(arg) for arg in request["argv"]])[1]
    except SystemExit as exc:  # argparse (a broken --config file) exits after printing why
        _answer(result_fd, error_answer(f"the configuration cannot be read ({exc})"))
        return 1
    setup_logging(config.log_level, config.log_format)
    try:
        prepared = trio.run(functools.partial(_prepare, config))
    except StartupError as exc:
        _answer(result_fd, error_answer(str(exc).replace("\n", " ")))
        return 1
    _answer(result_fd, prepared.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
