"""``python -I -m supervisor.arbiter_main --order-fd N``: the arbiter as a
program of its own. The startup process (``supervisor/server.py``) becomes
it through ``os.execv`` once the project is compiled and the port bound (see
``supervisor/handover.py``); nobody else starts it.

Keep this program's imports light: it is the process that lives as long as
the server. The admin listener (hypercorn, ``prometheus_client``) is
imported only when it is on: it belongs in this process, whose numbers it
reports, and a process of its own would hold a second interpreter and trio.
"""

from __future__ import annotations

import functools
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

import trio

from supervisor.arbiter import Arbiter, ArbiterHalted, ArbiterSettings
from supervisor.handover import AdminOrder, ArbiterOrder, read_order
from supervisor.logs import error_line, setup_logging, startup_output
from supervisor.notify import Notifier


async def _serve_admin(admin: AdminOrder, task_status: trio.TaskStatus[None]) -> None:
    from supervisor.admin import AdminApp, AdminListener

    app = AdminApp(Path(admin.folder), admin.frontends, admin.token)
    listener = AdminListener(socket.socket(fileno=admin.socket_fd), app, admin.panel_default)
    await listener.serve(task_status=task_status)


async def _serve(order: ArbiterOrder, out: TextIO) -> None:
    sockets = [socket.socket(fileno=fd) for fd in order.socket_fds]
    notifier = Notifier()
    settings = ArbiterSettings(
        argv=order.argv,
        workers=order.workers,
        max_connections=order.max_connections,
        graceful_timeout_s=order.graceful_timeout_s,
    )

    def ready() -> None:
        print(f"✅ Workers loaded in {time.monotonic() - order.started:.3f}s.", file=out)
        for line in order.ready_lines:
            print(line, file=out)
        out.flush()
        notifier.ready(order.ready_status)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.watchdog)
            if order.admin is not None:
                await nursery.start(_serve_admin, order.admin)
            await Arbiter(settings, sockets, order.broken, notifier).run(ready)
            nursery.cancel_scope.cancel()  # the watchdog and the admin listener: we are done
    finally:
        notifier.close()
        for sock in sockets:
            sock.close()


def main() -> int:
    args = sys.argv[1:]
    if len(args) != 2 or args[0] != "--order-fd" or not args[1].isdigit():
        print(
            "usage: python -m supervisor.arbiter_main --order-fd N (started by wws-supervisor)",
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
        trio.run(functools.partial(_serve, order, startup_output(order.log_format)))
    except ArbiterHalted as exc:
        print(error_line(str(exc), sys.stderr), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if order.admin is not None:  # the metrics folder the startup process made
            shutil.rmtree(order.admin.folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
