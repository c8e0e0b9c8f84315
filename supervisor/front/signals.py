"""The signals a serving process answers: SIGHUP reloads; SIGTERM or SIGINT
start a drain within the grace period; a second one cuts the grace short
(in-flight requests get 503), and the clean-up still runs."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from supervisor.front.http_front import Shutdown
from supervisor.ops.notify import Notifier

log = logging.getLogger("supervisor.front.frontend")


async def watch_signals(
    shutdown: Shutdown, notifier: Notifier, grace_s: float, hurry_s: float, reload: Callable[[], None]
) -> None:
    """Turn signals into :class:`Shutdown` steps and reloads, until cancelled."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if not shutdown.requested.is_set():
                    reload()
            elif not shutdown.requested.is_set():
                log.info(
                    "%s received: finishing in-flight requests (up to %.1f s), then stopping", name, grace_s
                )
                notifier.stopping()
                shutdown.begin(grace_s)
            else:
                log.warning("second %s: answering in-flight requests 503 and stopping now", name)
                shutdown.begin(hurry_s)
