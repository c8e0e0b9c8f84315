"""``python -I -m supervisor.arbiter.main --order-fd N``: the arbiter as a
program of its own. The startup process (``supervisor/server.py``) becomes
it through ``os.execv`` once the project is compiled and the port bound (see
``supervisor/arbiter/handover.py``); nobody else starts it.

Keep this program's imports light: it is the process that lives as long as
the server. It imports the standard library and a few stdlib-only modules
of ours, never trio (``supervisor/arbiter/arbiter.py`` says why); the admin
listener (hypercorn, ``prometheus_client``) runs in a child process of its
own (``supervisor/arbiter/admin.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from typing import TextIO

from supervisor.arbiter.arbiter import Arbiter, ArbiterHalted, ArbiterSettings
from supervisor.arbiter.handover import ArbiterOrder, read_order
from supervisor.arbiter.loop import EventLoop
from supervisor.ops.logs import error_line, setup_logging, startup_output
from supervisor.ops.sd_notify import SdNotifier


def _serve(order: ArbiterOrder, out: TextIO) -> None:
    sockets = [socket.socket(fileno=fd) for fd in order.socket_fds]
    notifier = SdNotifier()
    settings = ArbiterSettings(
        argv=order.argv,
        workers=order.workers,
        max_connections=order.max_connections,
        graceful_timeout_s=order.graceful_timeout_s,
        log_level=order.log_level,
        log_format=order.log_format,
    )

    def ready() -> None:
        print(f"✅ Workers loaded in {time.monotonic() - order.started:.3f}s.", file=out)
        for line in order.ready_lines:
            print(line, file=out)
        out.flush()
        notifier.ready(order.ready_status)

    loop = EventLoop()
    try:
        Arbiter(loop, settings, sockets, order.broken, notifier, order.admin).run(ready)
    finally:
        loop.close()
        notifier.close()
        for sock in sockets:
            sock.close()
        if order.admin is not None:  # the admin process is gone: its socket too
            socket.socket(fileno=order.admin.socket_fd).close()


def _remove_folder(path: str) -> None:
    # shutil.rmtree, without importing shutil (and the compression modules
    # it brings) into the process that lives as long as the server.
    with contextlib.suppress(OSError):
        for folder, _, files in os.walk(path, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def main() -> int:
    args = sys.argv[1:]
    if len(args) != 2 or args[0] != "--order-fd" or not args[1].isdigit():
        print(
            "usage: python -m supervisor.arbiter.main --order-fd N (started by wws-supervisor)",
            file=sys.stderr,
        )
        return 2
    try:
        order = read_order(int(args[1]))
    except (OSError, ValueError) as exc:
        print(error_line(f"cannot read the arbiter's order: {exc}", sys.stderr), file=sys.stderr)
        return 1
    setup_logging(order.log_level, order.log_format)
    try:
        _serve(order, startup_output(order.log_format))
    except ArbiterHalted as exc:
        print(error_line(str(exc), sys.stderr), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if order.admin is not None:  # the metrics folder the startup process made
            _remove_folder(order.admin.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
