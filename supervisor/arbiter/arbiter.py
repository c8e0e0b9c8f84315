"""The arbiter: several front-end processes on one port, supervised the way
front ends supervise runners.

It runs in a lean program of its own (``python -I -m supervisor.arbiter.main``,
see ``supervisor/arbiter/handover.py``): the startup process compiled every worker
and bound the port, then replaced itself with that program. It holds one
listening socket per front end, all bound to the port with SO_REUSEPORT;
each front end (``python -m supervisor.front.frontend``) inherits its socket and
serves it with its own slice of the runners (``supervisor/arbiter/frontends.py``).

* A front end that exits on its own is restarted, with backoff when it
  keeps dying young; if none can boot, the arbiter stops with their error.
* SIGTERM/SIGINT are forwarded as SIGTERM: every front end drains within the
  grace period (SIGKILL after the grace and a margin); a second signal is
  forwarded too, and they hurry. The admin listener stops after the last
  front end, and the arbiter exits last.
* SIGHUP reloads through a throwaway prepare process, then replaces the
  front ends one at a time (``supervisor/arbiter/reload.py``).
* With ``--admin``, the admin listener runs in a child process of its own
  (``supervisor/arbiter/admin.py``).
* sd_notify READY/RELOADING/STOPPING/STATUS and the watchdog pings come from
  here (``supervisor/ops/sd_notify.py``), the pings from the loop itself.

Why the standard library and not trio, unlike every other process here:
the arbiter lives for months and does almost nothing, and its memory counts
once per server, next to front ends that each cost tens of MiB. ``import
trio`` alone is 14 MiB of private memory, more than this whole program
needs without it (about 6 MiB). What trio would give us, structured
concurrency, is kept by construction: one thread runs one loop
(``supervisor/arbiter/loop.py``) that owns every piece of state, and one
ownership table (``supervisor/arbiter/children.py``) owns every child from
spawn to reap, stops each in two stages, and kills and reaps whatever is
left when the loop ends, so no child outlives the arbiter.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from typing import NamedTuple

from supervisor.arbiter.admin import AdminChild
from supervisor.arbiter.children import ChildTable
from supervisor.arbiter.frontends import FrontEnds, Plan
from supervisor.arbiter.handover import HANDED_OVER_SIGNALS, AdminOrder
from supervisor.arbiter.loop import EventLoop
from supervisor.arbiter.reload import Reload
from supervisor.ops.sd_notify import SdNotifier

log = logging.getLogger(__name__)


class ArbiterHalted(Exception):
    """No front end could start; the message is their error, one line."""


class ArbiterSettings(NamedTuple):
    """What the arbiter needs of the server's configuration."""

    argv: list[str]  # the command line as given: front ends and reloads parse it again
    workers: int  # runners in all, split across the front ends
    max_connections: int  # for the whole server
    graceful_timeout_s: float
    log_level: str = "info"  # for the admin process (front ends read argv)
    log_format: str = "text"


class Arbiter:
    """The front ends, a reload, the admin listener and the signals that
    drive them, on one loop."""

    def __init__(
        self,
        loop: EventLoop,
        settings: ArbiterSettings,
        sockets: list[socket.socket],
        broken: list[str],
        notifier: SdNotifier,
        admin: AdminOrder | None = None,
    ) -> None:
        self._loop = loop
        self._notifier = notifier
        self._table = ChildTable(loop, after_exit=self._check_done)
        self._ready: Callable[[], None] = lambda: None
        plan = Plan(settings.argv, settings.workers, settings.max_connections, sorted(broken))
        self._front_ends = FrontEnds(
            loop,
            self._table,
            sockets,
            plan,
            settings.graceful_timeout_s,
            on_all_ready=self._all_ready,
            on_halt=self._halt,
            on_change=self._changed,
        )
        self._reload = Reload(self._table, self._front_ends, notifier)
        self._admin = (
            AdminChild(loop, self._table, admin, settings.log_level, settings.log_format)
            if admin is not None
            else None
        )
        self._halted: str | None = None

    @property
    def generation(self) -> int:
        return self._reload.generation

    def run(self, ready: Callable[[], None]) -> None:
        """Run the front ends until a signal stops them all; ``ready`` is
        called once every front end is first ready.

        Raises:
            ArbiterHalted: no front end could start (their own error).
        """
        self._ready = ready
        self._loop.handle_signals((signal.SIGTERM, signal.SIGINT, signal.SIGHUP), self._signal)
        # Blocked across the handover (supervisor/arbiter/handover.py): one that came
        # meanwhile is recorded now, and dispatched by the loop. Unblocked
        # before any child starts: they inherit our signal mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDED_OVER_SIGNALS)
        try:
            self._ping()
            if self._admin is not None:
                self._admin.start()
            self._front_ends.start()
            self._check_done()
            self._loop.run()
        finally:
            self._table.close()  # only on a bug: the loop ends once the table is empty
        if self._halted is not None:
            raise ArbiterHalted(self._halted)

    def _ping(self) -> None:
        interval = self._notifier.watchdog_interval_s
        if self._notifier.enabled and interval is not None:
            self._notifier.ping()  # from the loop: a wedged loop stops pinging
            self._loop.call_later(interval, self._ping)

    def _signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self._reload.request()
            return
        if self._front_ends.closing:
            log.warning("second %s: front ends are told to hurry", name)
            self._front_ends.hurry()
            return
        log.info("%s received: stopping the front ends", name)
        self._notifier.stopping()
        self._close()

    def _all_ready(self) -> None:
        if self._halted is None:
            self._ready()

    def _halt(self, message: str) -> None:
        if self._halted is None:
            self._halted = message
        self._close()

    def _close(self) -> None:
        self._front_ends.close()
        self._reload.abort()
        self._check_done()

    def _changed(self) -> None:
        self._reload.advance()
        self._check_done()

    def _check_done(self) -> None:
        # The arbiter exits last: once every front end has, then the admin
        # listener (it reports on them until the end) and any prepare process.
        if not self._front_ends.closing or self._front_ends.alive:
            return
        if self._admin is not None:
            self._admin.stop()
        if len(self._table) == 0:
            self._loop.stop()
