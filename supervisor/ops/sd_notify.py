"""Telling systemd how we are: READY, RELOADING, STOPPING, STATUS and
watchdog pings over ``$NOTIFY_SOCKET`` (the sd_notify protocol: one datagram
of ``KEY=VALUE`` lines).

Why our own few lines: the protocol is one ``sendto``; the PyPI packages for
it are either unmaintained (``sdnotify``, last release 2019) or need
libsystemd headers and a C compiler (``systemd-python``), which a Raspberry
Pi install should not. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op.

Watchdog: systemd sets ``$WATCHDOG_USEC`` when the unit has ``WatchdogSec=``;
the caller pings (:meth:`SdNotifier.ping`) every ``watchdog_interval_s``
(half that) *from its event loop*, so a wedged loop stops pinging and
systemd restarts the service: the trio processes through
``supervisor.ops.notify.Notifier.watchdog``, the arbiter through a timer of its
own loop. Standard library only: the arbiter imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time

log = logging.getLogger(__name__)


class SdNotifier:
    """The sd_notify messages, sent synchronously (never blocking long)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address:
            # An abstract socket is written with a leading "@".
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
        self._socket: socket.socket | None = None
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        if watchdog_usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_interval_s = int(watchdog_usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str, wait_s: float = 1.0) -> None:
        """Send one message; if the reader is behind, wait up to ``wait_s``
        for room (state changes matter; a late watchdog ping does not)."""
        if self._address is None:
            return
        if self._socket is None:
            # Non-blocking: a reader that falls behind must never stall the
            # event loop (a full queue drops the message instead).
            kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            self._socket = socket.socket(socket.AF_UNIX, kind)
        message = "\n".join(lines).encode()
        with contextlib.suppress(OSError):  # systemd gone, restarting or far behind: nothing to tell
            try:
                self._socket.sendto(message, self._address)
            except BlockingIOError:
                if wait_s > 0 and select.select([], [self._socket], [], wait_s)[1]:
                    self._socket.sendto(message, self._address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) match this reload.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing in-flight requests")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ping(self) -> None:
        """One watchdog ping; a late one is dropped, not waited for."""
        self.send("WATCHDOG=1", wait_s=0)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
