"""Wall-clock guard inside the runner: a thread that advances the engine's
epoch while requests run.

ctypes releases the GIL while wasm executes, so this thread keeps ticking even
when the guest spins. The epoch follows the monotonic clock, not the number of
sleeps: a late wake-up (a busy machine) is caught up with extra increments, so
a deadline of N ticks means N tick lengths of wall time, however long N is.

It parks only when no request is running and none has run for a second, so an
idle runner does not wake up a hundred times a second on a small board. While
a request runs it never parks, whatever the request's length; under load it
never parks at all, so starting a request costs no thread wake-up.
"""

from __future__ import annotations

import threading
import time

import wasmtime
from wasmtime import _ffi as ffi

_PARK_AFTER_S = 1.0


class EpochTicker:
    def __init__(self, engine: wasmtime.Engine, tick_ms: int) -> None:
        self._engine = engine
        self.tick_s = max(1, tick_ms) / 1000
        self._awake = threading.Event()
        # Set while the thread is parked; tests wait on it instead of sleeping.
        self.parked = threading.Event()
        self.parked.set()
        self._running = False
        self._last_end = 0.0
        self._thread = threading.Thread(target=self._run, name="epoch-ticker", daemon=True)
        self._thread.start()

    def ticks_for(self, timeout_ms: int) -> int:
        # +1: the deadline counts from the next tick, which may be almost a full tick away.
        return max(1, -(-timeout_ms // max(1, round(self.tick_s * 1000))) + 1)

    def request_started(self) -> None:
        # Order matters: _running first, then the wake-up check. The thread
        # clears _awake before it re-reads _running, so one of the two sides
        # always sees the other (see _park).
        self._running = True
        if not self._awake.is_set():
            self._awake.set()

    def request_finished(self) -> None:
        self._last_end = time.monotonic()
        self._running = False

    def _run(self) -> None:
        # Each tick costs this thread a wake-up and the GIL, taken from the
        # request in flight: a plain sleep (one syscall, where Event.wait builds
        # a lock and waits on it) and the raw increment keep that short.
        sleep, monotonic = time.sleep, time.monotonic
        increment, engine = ffi.wasmtime_engine_increment_epoch, self._engine.ptr()
        while True:
            self._awake.wait()
            self.parked.clear()
            next_tick = monotonic() + self.tick_s
            while True:
                sleep(max(0.0, next_tick - monotonic()))
                now = monotonic()
                while next_tick <= now:
                    increment(engine)
                    next_tick += self.tick_s
                if not self._running and now - self._last_end > _PARK_AFTER_S and self._park():
                    break

    def _park(self) -> bool:
        self._awake.clear()
        # A request may have started between the check and the clear.
        if self._running:
            self._awake.set()
            return False
        self.parked.set()
        return True
