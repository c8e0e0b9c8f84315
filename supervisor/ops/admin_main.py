"""``python -I -m supervisor.ops.admin_main --parent PID``: the admin listener as
a process of its own, started and owned by the arbiter
(``supervisor/arbiter/admin.py``); nobody else starts it.

It reads ``{"admin": AdminOrder, "log_level": ..., "log_format": ...}`` on
stdin, serves the inherited socket until SIGTERM or SIGINT, and dies with
the arbiter (``runner/lifeline.py``).
"""

from __future__ import annotations

import functools
import json
import signal
import socket
import sys
from pathlib import Path

import trio

from runner.lifeline import die_with_parent
from supervisor.arbiter.handover import AdminOrder
from supervisor.ops.admin import AdminApp, AdminListener
from supervisor.ops.logs import setup_logging


async def _serve(order: AdminOrder) -> None:
    app = AdminApp(Path(order.folder), order.frontends, order.token)
    listener = AdminListener(socket.socket(fileno=order.socket_fd), app, order.panel_default)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve)
            async for _ in signals:
                nursery.cancel_scope.cancel()  # nothing to drain: answers are small
                break


def main() -> int:
    if not die_with_parent(sys.argv[1:]):
        return 0
    request = json.loads(sys.stdin.buffer.read())
    setup_logging(str(request["log_level"]), str(request["log_format"]), prefix="admin ")
    trio.run(functools.partial(_serve, AdminOrder(**request["admin"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
