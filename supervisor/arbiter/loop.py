"""The arbiter's event loop: one thread, one selector, a heap of timers, and
signals turned into ordinary events.

Standard library only (see ``supervisor/arbiter/arbiter.py`` for why the arbiter
does not run on trio). The shape is the classic pre-fork arbiter's: signal
handlers only record the signal number (and the interpreter writes a byte on
the wake-up fd, so a sleeping ``select`` returns); the loop dispatches the
recorded signals itself, between callbacks, so no handler ever runs our
code in the middle of other code. Everything else is a readable fd (status
pipes, pidfds) or a timer (backoff, watchdog pings, SIGKILL deadlines).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType

# What signal.signal returns: a handler, SIG_DFL/SIG_IGN, or None (set from C).
_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

log = logging.getLogger(__name__)


class Timer:
    """A callback due at a monotonic time; cancelling it is final."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Runs callbacks for readable fds, due timers and received signals
    until :meth:`stop` is called."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        # Appended to by the signal handlers (between two bytecodes of this
        # thread), drained by the loop: a deque's append and popleft are
        # single operations, so neither side sees half an update.
        self._received: collections.deque[int] = collections.deque()
        self._signal_handler: Callable[[int], None] | None = None
        self._previous_wake_fd = -1
        self._previous: dict[int, _Handler] = {}
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._drain_wake_up)
        self._stopped = False

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` whenever ``fd`` is readable, until :meth:`remove_reader`."""
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now() + max(0.0, delay_s), callback)

    def handle_signals(self, signals: Iterable[int], handler: Callable[[int], None]) -> None:
        """Record ``signals`` from now on and hand each to ``handler`` from
        the loop (call before :meth:`run`; :meth:`close` restores the old ones)."""
        self._signal_handler = handler
        self._previous_wake_fd = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Nothing else here: no logging, no locks (gunicorn learnt this the hard way).
        self._received.append(signum)

    def _drain_wake_up(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass

    def stop(self) -> None:
        """End :meth:`run` once the current callback returns."""
        self._stopped = True

    def run(self) -> None:
        """Dispatch events until :meth:`stop`."""
        while not self._stopped:
            self._dispatch_signals()
            if self._stopped:
                break
            events = self._selector.select(self._timeout())
            for key, _ in events:
                if self._stopped:
                    break
                # A callback may unregister another fd of this same batch.
                if self._registered(key.fd):
                    key.data()
            self._dispatch_signals()
            self._run_due_timers()

    def _registered(self, fd: int) -> bool:
        try:
            self._selector.get_key(fd)
        except (KeyError, ValueError):
            return False
        return True

    def _timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._received:
            return 0.0
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.now())

    def _run_due_timers(self) -> None:
        now = self.now()
        while self._timers and not self._stopped and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True  # fired: cancelling it later is a no-op
                timer.callback()

    def _dispatch_signals(self) -> None:
        while self._received and not self._stopped:
            signum = self._received.popleft()
            if self._signal_handler is not None:
                self._signal_handler(signum)

    def close(self) -> None:
        """Give the signals back (their old handlers, the old wake-up fd) and
        close the selector; a second call does nothing."""
        if self._wake_read < 0:
            return
        for signum, previous in self._previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, previous)
        self._previous.clear()
        if self._signal_handler is not None:
            signal.set_wakeup_fd(self._previous_wake_fd)
            self._signal_handler = None
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_read = self._wake_write = -1
