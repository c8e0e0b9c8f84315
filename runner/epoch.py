"""Wall-clock guard inside the runner: a thread that advances the engine's
epoch while a request runs.

ctypes releases the GIL while wasm executes, so this thread keeps ticking even
when the guest spins. It only ticks while a request is in flight, so an idle
runner does not wake up a hundred times a second on a small board.
"""

from __future__ import annotations

import threading

import wasmtime


class EpochTicker:
    def __init__(self, engine: wasmtime.Engine, tick_ms: int) -> None:
        self._engine = engine
        self.tick_s = tick_ms / 1000
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch-ticker", daemon=True)
        self._thread.start()

    def ticks_for(self, timeout_ms: int) -> int:
        # +1: the deadline counts from the next tick, which may be almost a full tick away.
        return max(1, -(-timeout_ms // max(1, round(self.tick_s * 1000))) + 1)

    def request_started(self) -> None:
        self._busy.set()

    def request_finished(self) -> None:
        self._busy.clear()

    def _run(self) -> None:
        stop = threading.Event()  # never set: the thread dies with the process
        while True:
            self._busy.wait()
            stop.wait(self.tick_s)
            self._engine.increment_epoch()
