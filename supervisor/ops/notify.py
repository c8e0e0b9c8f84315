"""sd_notify for the trio processes (the single-process server, tenants):
:class:`supervisor.ops.sd_notify.SdNotifier` plus a watchdog task.

The arbiter uses ``SdNotifier`` directly and pings from its own loop's
timer: it must not import trio (``supervisor/arbiter/arbiter.py`` says why).
"""

from __future__ import annotations

import trio

from supervisor.ops.sd_notify import SdNotifier


class Notifier(SdNotifier):
    async def watchdog(self) -> None:
        """Ping the watchdog forever (a no-op without ``WatchdogSec=``), from
        the event loop: a wedged loop stops pinging and systemd restarts us."""
        if not self.enabled or self.watchdog_interval_s is None:
            return
        while True:
            self.ping()
            await trio.sleep(self.watchdog_interval_s)
