"""Wall-clock guard inside the runner: a thread that advances the engine's
epoch while requests run.

ctypes releases the GIL while wasm executes, so this thread keeps ticking even
when the guest spins. It parks after a second without requests, so an idle
runner does not wake up a hundred times a second on a small board; under load
it never parks, so starting a request costs no thread wake-up.
"""

from __future__ import annotations

import threading
import time

import wasmtime

_PARK_AFTER_S = 1.0


class EpochTicker:
    def __init__(self, engine: wasmtime.Engine, tick_ms: int) -> None:
        self._engine = engine
        self.tick_s = tick_ms / 1000
        self._awake = threading.Event()
        self._last_start = 0.0
        self._thread = threading.Thread(target=self._run, name="epoch-ticker", daemon=True)
        self._thread.start()

    def ticks_for(self, timeout_ms: int) -> int:
        # +1: the deadline counts from the next tick, which may be almost a full tick away.
        return max(1, -(-timeout_ms // max(1, round(self.tick_s * 1000))) + 1)

    def request_started(self) -> None:
        self._last_start = time.monotonic()
        if not self._awake.is_set():
            self._awake.set()

    def _run(self) -> None:
        sleeper = threading.Event()  # never set: a sleep that releases the GIL
        while True:
            self._awake.wait()
            sleeper.wait(self.tick_s)
            self._engine.increment_epoch()
            if time.monotonic() - self._last_start > _PARK_AFTER_S:
                self._awake.clear()
                # A request may have started between the check and the clear.
                if time.monotonic() - self._last_start <= _PARK_AFTER_S:
                    self._awake.set()
