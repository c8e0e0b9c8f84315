"""The admin listener under the arbiter: a child process of its own
(``python -I -m supervisor.ops.admin_main``), owned like the front ends.

Its socket was bound by the startup process and handed over with the
others; the arbiter keeps it open and passes it to each admin process, so a
restart keeps the port, and connections made meanwhile wait in the backlog.
The listener reads everything it reports from the metrics folder and the
state the front ends publish there, so it needs nothing from the arbiter,
and the arbiter stays lean whether it is on or off: hypercorn and
``prometheus_client`` load in that process only.

It is restarted with backoff when it dies, and stopped after the last front
end (``/readyz`` answers "draining" while they drain).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from supervisor.arbiter.children import ChildTable, OwnedChild
from supervisor.arbiter.handover import AdminOrder
from supervisor.arbiter.loop import EventLoop, Timer
from supervisor.pool.backoff import STABLE_AFTER_S, backoff_delay
from supervisor.pool.exit_status import describe_exit

log = logging.getLogger("supervisor.arbiter.arbiter")

# The admin process holds no request that matters: a short grace.
ADMIN_GRACE_S = 2.0


def admin_request(order: AdminOrder, log_level: str, log_format: str) -> bytes:
    """What the admin process reads on its stdin."""
    return json.dumps({"admin": order._asdict(), "log_level": log_level, "log_format": log_format}).encode()


class AdminChild:
    """The admin listener's process, from start to the arbiter's exit."""

    def __init__(
        self, loop: EventLoop, table: ChildTable, order: AdminOrder, log_level: str, log_format: str
    ) -> None:
        self._loop = loop
        self._table = table
        self._request = admin_request(order, log_level, log_format)
        self._socket_fd = order.socket_fd
        self._child: OwnedChild | None = None
        self._restart: Timer | None = None
        self._failures = 0
        self._stopping = False

    @property
    def alive(self) -> bool:
        return self._child is not None

    def start(self) -> None:
        self._restart = None
        if self._stopping:
            return
        command = [sys.executable, "-I", "-m", "supervisor.ops.admin_main", "--parent", str(os.getpid())]
        try:
            self._child = self._table.spawn(
                "the admin listener",
                command,
                order=lambda _fd: self._request,
                pass_fds=(self._socket_fd,),
                on_exit=self._exited,
            )
        except OSError as exc:
            log.error("the admin listener: cannot start a process: %s", exc)
            self._failures += 1
            self._schedule()

    def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._child is not None:
            self._table.stop(self._child, ADMIN_GRACE_S)

    def _exited(self, child: OwnedChild) -> None:
        self._child = None
        if self._stopping:
            return
        how = describe_exit(child.returncode)
        log.error("the admin listener (pid %d) %s; starting another", child.pid, how)
        lived_s = self._loop.now() - child.started
        self._failures = self._failures + 1 if lived_s < STABLE_AFTER_S else 1
        self._schedule()

    def _schedule(self) -> None:
        delay = backoff_delay(self._failures, others_alive=True)
        self._restart = self._loop.call_later(delay, self.start)
