"""The arbiter: several front-end processes on one port, supervised the way
front ends supervise runners.

The arbiter compiles every worker once (before it gets here) and holds one
listening socket per front end, all bound to the port with SO_REUSEPORT; each
front end (``python -m supervisor.frontend``) inherits its socket and serves it
with its own slice of the runners. A front end that dies loses only its
in-flight requests: its socket stays open here, so new connections wait in
its backlog until the replacement takes them.

* Front ends are started from the event loop's thread and die with the
  arbiter (``runner/lifeline.py``); their runners die with them.
* A front end that exits on its own is restarted, with the runners' backoff
  (``supervisor.pool.backoff_delay``) when it keeps dying young.
* If a front end reports a startup error before any was ever ready, or none
  boots after several attempts, the arbiter stops with that error.
* SIGTERM/SIGINT are forwarded as SIGTERM: every front end drains within the
  grace period; a second signal is forwarded too, and they hurry. The arbiter
  exits last, once every front end has.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import trio

from supervisor.children import Child, own
from supervisor.config import ServerConfig
from supervisor.frontend import ERROR_PREFIX, READY_LINE, FrontendOrder
from supervisor.pool import HALT_AFTER_BOOT_FAILURES, backoff_delay
from supervisor.project import StartupError
from supervisor.runners import describe_exit

log = logging.getLogger(__name__)

_STABLE_AFTER_S = 10.0
# Beyond the grace, what a front end gets to stop its runners before SIGKILL.
_STOP_MARGIN_S = 5.0


def split(total: int, parts: int) -> list[int]:
    """``total`` runners over ``parts`` front ends, as evenly as possible."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


class _Attempt:
    """One front-end process: its pipes and what it said."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        self.child = Child(popen)
        self._stdout = popen.stdout
        os.set_blocking(self._stdout.fileno(), False)
        self.ready = trio.Event()
        self.error: str | None = None

    async def read_status(self) -> None:
        fd, buffer = self._stdout.fileno(), b""
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except (OSError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line + b"\n" == READY_LINE:
                    self.ready.set()
                elif line.startswith(ERROR_PREFIX):
                    self.error = line[len(ERROR_PREFIX) :].decode("utf-8", "replace")

    def release(self) -> None:
        trio.lowlevel.notify_closing(self._stdout.fileno())
        self._stdout.close()


class Arbiter:
    def __init__(
        self, config: ServerConfig, argv: list[str], sockets: list[socket.socket], broken: set[str]
    ) -> None:
        self._config = config
        self._argv = argv
        self._sockets = sockets
        self._broken = sorted(broken)
        self._shares = split(config.pool.workers, len(sockets))
        self._connections = max(8, config.max_connections // len(sockets))
        self._closing = trio.Event()
        self._live: dict[int, Child] = {}
        self._ready_count = 0
        self._all_ready = trio.Event()
        self._ever_ready = False
        self._boot_failures = [0] * len(sockets)
        self._halted: str | None = None
        self._scope = trio.CancelScope()
        self.restarts = 0

    async def run(self, ready: Callable[[], None]) -> None:
        """Run the front ends until a signal stops them all.

        Raises:
            StartupError: no front end could start (their own error).
        """
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._report_ready, ready)
            async with trio.open_nursery() as slots:
                for index in range(len(self._sockets)):
                    slots.start_soon(self._slot, index)
            nursery.cancel_scope.cancel()  # every front end has stopped
        if self._halted is not None:
            raise StartupError(self._halted)

    async def _report_ready(self, ready: Callable[[], None]) -> None:
        await self._all_ready.wait()
        ready()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._closing.is_set():
                    log.warning("second %s: front ends are told to hurry", name)
                else:
                    log.info("%s received: stopping the front ends", name)
                    self._closing.set()
                for child in self._live.values():
                    child.send_signal(signal.SIGTERM)

    def _halt(self, message: str) -> None:
        self._halted = message
        self._scope.cancel()

    async def _slot(self, index: int) -> None:
        failures = 0
        while not self._closing.is_set():
            if failures:
                delay = backoff_delay(failures, others_alive=bool(set(self._live) - {index}))
                log.warning("front end %d: restarting in %.2f s after %d failure(s)", index, delay, failures)
                with trio.move_on_after(delay):
                    await self._closing.wait()
                if self._closing.is_set():
                    return
            born = trio.current_time()
            became_ready = await self._run_one(index)
            if self._closing.is_set():
                return
            self.restarts += 1
            if not became_ready:
                failures += 1
                self._boot_failures[index] += 1
                if not self._ever_ready and min(self._boot_failures) >= HALT_AFTER_BOOT_FAILURES:
                    self._halt("no front end could start (see the log above)")
                    return
            elif trio.current_time() - born < _STABLE_AFTER_S:
                failures += 1
            else:
                failures = 1

    async def _run_one(self, index: int) -> bool:
        """Start one front end and own it until it exits; returns whether it
        ever became ready."""
        order = FrontendOrder(
            argv=self._argv,
            index=index,
            workers=self._shares[index],
            max_connections=self._connections,
            broken=self._broken,
            socket_fd=self._sockets[index].fileno(),
        )
        try:
            attempt = _spawn(order)
        except OSError as exc:
            log.error("front end %d: cannot start a process: %s", index, exc)
            return False
        child = attempt.child
        self._live[index] = child
        try:
            async with trio.open_nursery() as nursery:
                owner = functools.partial(
                    own,
                    child,
                    ask_to_exit=functools.partial(child.send_signal, signal.SIGTERM),
                    beside=attempt.read_status,
                    release=attempt.release,
                    grace_s=self._config.graceful_timeout_s + _STOP_MARGIN_S,
                )
                await nursery.start(owner)
                nursery.start_soon(self._announce, index, attempt)
                await child.wait_exit()
                nursery.cancel_scope.cancel()
        finally:
            del self._live[index]
        if self._closing.is_set():
            return attempt.ready.is_set()
        how = describe_exit(child.returncode)
        if attempt.error is not None:
            log.error("front end %d (pid %d) could not start: %s", index, child.pid, attempt.error)
            if not self._ever_ready:
                self._halt(attempt.error)
        else:
            log.error("front end %d (pid %d) exited (%s); starting another", index, child.pid, how)
        return attempt.ready.is_set()

    async def _announce(self, index: int, attempt: _Attempt) -> None:
        await attempt.ready.wait()
        log.info(
            "front end %d (pid %d) ready with %d runner(s)", index, attempt.child.pid, self._shares[index]
        )
        self._ever_ready = True
        self._boot_failures[index] = 0
        self._ready_count += 1
        if self._ready_count >= len(self._sockets):
            self._all_ready.set()


def _spawn(order: FrontendOrder) -> _Attempt:
    # From the event loop's thread: see supervisor/children.py.
    popen = subprocess.Popen(
        [sys.executable, "-I", "-m", "supervisor.frontend", "--parent", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=[order.socket_fd],
        # Out of the terminal's process group: Ctrl-C reaches the arbiter,
        # which forwards it in order.
        start_new_session=True,
    )
    assert popen.stdin is not None
    with contextlib.suppress(OSError):
        popen.stdin.write(order.to_json())
    with contextlib.suppress(OSError):
        popen.stdin.close()
    return _Attempt(popen)


async def run_arbiter(
    config: ServerConfig,
    argv: list[str],
    sockets: list[socket.socket],
    broken: set[str],
    ready: Callable[[], None],
) -> None:
    """Serve through ``len(sockets)`` front-end processes until a signal stops them.

    Raises:
        StartupError: no front end could start.
    """
    await Arbiter(config, argv, sockets, broken).run(ready)
