"""The arbiter: several front-end processes on one port, supervised the way
front ends supervise runners.

It runs in a lean program of its own (``python -m supervisor.arbiter_main``,
see ``supervisor/handover.py``): the startup process compiled every worker
and bound the port, then replaced itself with that program, so the process
that lives as long as the server imports no HTTP server, no project loader
and no compile step (the admin listener's modules only when it is on). It
holds one listening socket per front end, all bound to the port with SO_REUSEPORT; each
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
* SIGHUP reloads: a throwaway process reads the configuration again, loads
  the project and compiles it (``supervisor/prepare_child.py``); then the
  front ends are replaced one at a time on their sockets. A failure keeps
  the running front ends serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable

import trio

from supervisor.children import Child, own
from supervisor.exit_status import describe_exit
from supervisor.frontend_order import DRAINING_LINE, ERROR_PREFIX, READY_LINE, FrontendOrder
from supervisor.handover import HANDED_OVER_SIGNALS
from supervisor.notify import Notifier
from supervisor.pool_members import HALT_AFTER_BOOT_FAILURES, backoff_delay
from supervisor.prepare_child import PrepareFailed, prepare_reload

log = logging.getLogger(__name__)

_STABLE_AFTER_S = 10.0
# Beyond the grace, what a front end gets to stop its runners before SIGKILL.
_STOP_MARGIN_S = 5.0
# What a reload's prepare process gets to stop (and stop its compile runner).
_PREPARE_GRACE_S = 5.0


class ArbiterHalted(Exception):
    """No front end could start; the message is their error, one line."""


@dataclasses.dataclass(frozen=True)
class ArbiterSettings:
    """What the arbiter needs of the server's configuration."""

    argv: list[str]  # the command line as given: front ends and reloads parse it again
    workers: int  # runners in all, split across the front ends
    max_connections: int  # for the whole server
    graceful_timeout_s: float
    reload: bool = True  # whether SIGHUP reloads (the prepare process reads argv again)


def split(total: int, parts: int) -> list[int]:
    """``total`` runners over ``parts`` front ends, as evenly as possible."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


class _Attempt:
    """One front-end process: its pipes and what it said."""

    def __init__(self, popen: subprocess.Popen[bytes], status_fd: int) -> None:
        self.child = Child(popen)
        self._status_fd = status_fd
        os.set_blocking(status_fd, False)
        self.ready = trio.Event()
        self.draining = trio.Event()
        self.error: str | None = None

    async def read_status(self) -> None:
        fd, buffer = self._status_fd, b""
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
                elif line + b"\n" == DRAINING_LINE:
                    self.draining.set()
                elif line.startswith(ERROR_PREFIX):
                    self.error = line[len(ERROR_PREFIX) :].decode("utf-8", "replace")

    def release(self) -> None:
        trio.lowlevel.notify_closing(self._status_fd)
        os.close(self._status_fd)


class Arbiter:
    def __init__(
        self,
        settings: ArbiterSettings,
        sockets: list[socket.socket],
        broken: list[str],
        notifier: Notifier,
    ) -> None:
        self._settings = settings
        self._sockets = sockets
        self._broken = sorted(broken)
        self._notifier = notifier
        self._closing = trio.Event()
        self._current: dict[int, _Attempt] = {}
        # A reload's replacement for a slot, adopted when the old one exits.
        self._handover: dict[int, _Attempt] = {}
        self._reload_lock = trio.Lock()
        self._ready_count = 0
        self._all_ready = trio.Event()
        self._ever_ready = False
        self._boot_failures = [0] * len(sockets)
        self._halted: str | None = None
        self._scope = trio.CancelScope()
        self._owners: trio.Nursery | None = None
        self.generation = 1
        self.restarts = 0

    def _order(self, index: int) -> FrontendOrder:
        shares = split(self._settings.workers, len(self._sockets))
        return FrontendOrder(
            argv=self._settings.argv,
            index=index,
            workers=shares[index],
            max_connections=max(8, self._settings.max_connections // len(self._sockets)),
            broken=self._broken,
            socket_fd=self._sockets[index].fileno(),
            status_fd=-1,  # set when it is spawned
        )

    async def run(self, ready: Callable[[], None]) -> None:
        """Run the front ends until a signal stops them all.

        Raises:
            ArbiterHalted: no front end could start (their own error).
        """
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            # Listening before any front end starts: they inherit our signal mask.
            await nursery.start(self._watch_signals, nursery)
            nursery.start_soon(self._report_ready, ready)
            async with trio.open_nursery() as owners:
                self._owners = owners
                async with trio.open_nursery() as slots:
                    for index in range(len(self._sockets)):
                        slots.start_soon(self._slot, index)
            nursery.cancel_scope.cancel()  # every front end has stopped
        if self._halted is not None:
            raise ArbiterHalted(self._halted)

    async def _report_ready(self, ready: Callable[[], None]) -> None:
        await self._all_ready.wait()
        ready()

    async def _watch_signals(self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            # Blocked across the handover (supervisor/handover.py): one that
            # came meanwhile is delivered now, to the receiver.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDED_OVER_SIGNALS)
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if not self._closing.is_set():
                        nursery.start_soon(self.reload)
                    continue
                if self._closing.is_set():
                    log.warning("second %s: front ends are told to hurry", name)
                else:
                    log.info("%s received: stopping the front ends", name)
                    self._notifier.stopping()
                    self._closing.set()
                for attempt in [*self._current.values(), *self._handover.values()]:
                    attempt.child.send_signal(signal.SIGTERM)

    def _halt(self, message: str) -> None:
        self._halted = message
        self._scope.cancel()

    async def _start(self, index: int) -> _Attempt | None:
        assert self._owners is not None
        try:
            attempt = _spawn(self._order(index))
        except OSError as exc:
            log.error("front end %d: cannot start a process: %s", index, exc)
            return None
        owner = functools.partial(
            own,
            attempt.child,
            ask_to_exit=functools.partial(attempt.child.send_signal, signal.SIGTERM),
            beside=attempt.read_status,
            release=attempt.release,
            grace_s=self._settings.graceful_timeout_s + _STOP_MARGIN_S,
        )
        await self._owners.start(owner)
        self._owners.start_soon(self._announce, index, attempt)
        return attempt

    async def _slot(self, index: int) -> None:
        failures = 0
        attempt: _Attempt | None = None
        born = trio.current_time()
        while not self._closing.is_set():
            if attempt is None:
                if failures:
                    delay = backoff_delay(failures, others_alive=bool(set(self._current) - {index}))
                    log.warning(
                        "front end %d: restarting in %.2f s after %d failure(s)", index, delay, failures
                    )
                    with trio.move_on_after(delay):
                        await self._closing.wait()
                    if self._closing.is_set():
                        return
                born = trio.current_time()
                attempt = await self._start(index)
                if attempt is None:
                    failures += 1
                    continue
            self._current[index] = attempt
            await attempt.child.wait_exit()
            del self._current[index]
            successor = self._handover.pop(index, None)
            if successor is not None:  # a reload replaced it: adopt the new one
                attempt = successor
                continue
            if self._closing.is_set():
                return
            failures = self._after_exit(index, attempt, failures, trio.current_time() - born)
            if self._halted is not None:
                return
            attempt = None

    def _after_exit(self, index: int, attempt: _Attempt, failures: int, lived_s: float) -> int:
        """Log an unplanned exit; returns the new failure count."""
        child = attempt.child
        self.restarts += 1
        if attempt.error is not None:
            log.error("front end %d (pid %d) could not start: %s", index, child.pid, attempt.error)
            if not self._ever_ready:
                self._halt(attempt.error)
        else:
            how = describe_exit(child.returncode)
            log.error("front end %d (pid %d) exited (%s); starting another", index, child.pid, how)
        if not attempt.ready.is_set():
            self._boot_failures[index] += 1
            if not self._ever_ready and min(self._boot_failures) >= HALT_AFTER_BOOT_FAILURES:
                self._halt("no front end could start (see the log above)")
            return failures + 1
        return failures + 1 if lived_s < _STABLE_AFTER_S else 1

    async def _announce(self, index: int, attempt: _Attempt) -> None:
        await attempt.ready.wait()
        pid, runners = attempt.child.pid, self._order(index).workers
        log.info("front end %d (pid %d) ready with %d runner(s)", index, pid, runners)
        self._ever_ready = True
        self._boot_failures[index] = 0
        self._ready_count += 1
        if self._ready_count >= len(self._sockets):
            self._all_ready.set()

    async def reload(self) -> None:
        """Load and compile the project again, then replace the front ends one
        at a time: each new one is ready on the same socket before the old one
        is told to drain. A failure keeps what is running."""
        if not self._settings.reload:
            return
        async with self._reload_lock:
            self._notifier.reloading()
            log.info("SIGHUP received: reloading the project")
            try:
                prepared = await prepare_reload(self._settings.argv, _PREPARE_GRACE_S)
            except PrepareFailed as exc:
                log.error("reload failed, the front ends keep serving: %s", exc)
                self._notifier.ready(f"serving generation {self.generation}; the last reload failed: {exc}")
                return
            self._broken = prepared.broken
            # The socket count (front ends) and address stay; the runner count may change.
            self._settings = dataclasses.replace(self._settings, workers=prepared.workers)
            for index in range(len(self._sockets)):
                if self._closing.is_set():
                    return
                if not await self._replace(index):
                    self._notifier.ready(f"reload stopped at front end {index}; see the log")
                    return
            self.generation += 1
            log.info("reloaded: every front end serves generation %d", self.generation)
            self._notifier.ready(f"serving generation {self.generation}")

    async def _replace(self, index: int) -> bool:
        old = self._current.get(index)
        new = await self._start(index)
        if new is None:
            return False
        await _first(new.ready.wait, new.child.wait_exit)  # ready, or gone
        if not new.ready.is_set():
            log.error("reload: the new front end %d could not start: %s", index, new.error or "it exited")
            return False
        if old is None or old.child.returncode is not None:
            # The old one is gone already (its slot may be restarting): hand over anyway.
            self._handover[index] = new
            return True
        self._handover[index] = new
        old.child.send_signal(signal.SIGTERM)
        # Done once no new connection can reach the old one (it drains on its
        # own): from then on every request sees the new generation.
        await _first(old.draining.wait, old.child.wait_exit)
        return True


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with trio.open_nursery() as race:

        async def until(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            race.cancel_scope.cancel()

        for wait in waits:
            race.start_soon(until, wait)


def _spawn(order: FrontendOrder) -> _Attempt:
    # Status lines come back on a pipe of their own: the front end's stdout
    # is ours (one log stream).
    status_read, status_write = os.pipe()
    try:
        order = dataclasses.replace(order, status_fd=status_write)
        # From the event loop's thread: see supervisor/children.py.
        popen = subprocess.Popen(
            [sys.executable, "-I", "-m", "supervisor.frontend", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            pass_fds=[order.socket_fd, status_write],
            # Out of the terminal's process group: Ctrl-C reaches the arbiter,
            # which forwards it in order.
            start_new_session=True,
        )
    except BaseException:
        os.close(status_read)
        raise
    finally:
        os.close(status_write)
    assert popen.stdin is not None
    with contextlib.suppress(OSError):
        popen.stdin.write(order.to_json())
    with contextlib.suppress(OSError):
        popen.stdin.close()
    return _Attempt(popen, status_read)
