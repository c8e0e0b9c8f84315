"""The arbiter's front-end slots: one per listening socket, each holding the
front-end process that serves it, restarted with backoff when it dies.

A slot's process (``python -I -m supervisor.front.frontend``) inherits its socket
and reads a :class:`FrontendOrder` on stdin; it answers with status lines on
a pipe (``supervisor/arbiter/frontend_order.py``). A front end that dies loses only
its in-flight requests: its socket stays open in the arbiter, so new
connections wait in the backlog until the replacement takes them.

* An exit is logged by cause and the slot restarts after
  :func:`supervisor.pool.backoff.backoff_delay`.
* A startup error reported before any front end was ever ready, or every
  slot failing to boot :data:`HALT_AFTER_BOOT_FAILURES` times, halts the
  server with that error.
* A reload puts a ready replacement beside a slot's process
  (:meth:`FrontEnds.hand_over`); the slot adopts it when the old one exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import NamedTuple

from supervisor.arbiter.children import ChildTable, OwnedChild
from supervisor.arbiter.frontend_order import DRAINING_LINE, ERROR_PREFIX, READY_LINE, FrontendOrder
from supervisor.arbiter.loop import EventLoop, Timer
from supervisor.pool.backoff import HALT_AFTER_BOOT_FAILURES, STABLE_AFTER_S, backoff_delay
from supervisor.pool.exit_status import describe_exit

log = logging.getLogger("supervisor.arbiter.arbiter")

# Beyond the grace, what a front end gets to stop its runners before SIGKILL.
STOP_MARGIN_S = 5.0
# A status line is a few words, an error a sentence: a longer one is cut.
_MAX_LINE = 64 << 10


class Plan(NamedTuple):
    """What every front end is started with (a reload changes it)."""

    argv: list[str]  # the command line as given: front ends parse it again
    workers: int  # runners in all, split across the front ends
    max_connections: int  # for the whole server
    broken: list[str]  # workers that failed to load at compile time


def split(total: int, parts: int) -> list[int]:
    """``total`` runners over ``parts`` front ends, as evenly as possible."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


class FrontEndProcess:
    """One front-end process and what it said on its status pipe."""

    def __init__(self, index: int, on_status: Callable[[FrontEndProcess, bytes], None]) -> None:
        self.index = index
        self.child: OwnedChild | None = None
        self.ready = False
        self.draining = False  # no new connection reaches it any more
        self.error: str | None = None
        self._buffer = b""
        self._on_status = on_status

    @property
    def exited(self) -> bool:
        return self.child is None or self.child.returncode is not None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._on_status(self, line + b"\n")
        self._buffer = self._buffer[-_MAX_LINE:]


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.current: FrontEndProcess | None = None
        self.successor: FrontEndProcess | None = None  # a reload's replacement, adopted when current exits
        self.failures = 0  # unplanned exits in a row
        self.boot_failures = 0  # exits before ready, in a row
        self.restart: Timer | None = None


class FrontEnds:
    """Every front-end slot, their processes and their restarts."""

    def __init__(
        self,
        loop: EventLoop,
        table: ChildTable,
        sockets: list[socket.socket],
        plan: Plan,
        graceful_timeout_s: float,
        *,
        on_all_ready: Callable[[], None],
        on_halt: Callable[[str], None],
        on_change: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._table = table
        self._sockets = sockets
        self.plan = plan
        self.stop_grace_s = graceful_timeout_s + STOP_MARGIN_S
        self._on_all_ready = on_all_ready
        self._on_halt = on_halt
        self._on_change = on_change  # after any status line or exit: the reload and the stop look
        self._slots = [_Slot(index) for index in range(len(sockets))]
        self._live: dict[int, FrontEndProcess] = {}  # pid -> every front-end process not yet reaped
        self._ready_count = 0
        self._all_ready = False
        self._ever_ready = False
        self.closing = False
        self.restarts = 0

    @property
    def count(self) -> int:
        return len(self._slots)

    @property
    def alive(self) -> int:
        """Front-end processes not yet reaped (current, successors, candidates)."""
        return len(self._live)

    def order(self, index: int) -> FrontendOrder:
        return FrontendOrder(
            argv=self.plan.argv,
            index=index,
            workers=split(self.plan.workers, self.count)[index],
            max_connections=max(8, self.plan.max_connections // self.count),
            broken=self.plan.broken,
            socket_fd=self._sockets[index].fileno(),
            status_fd=-1,  # the pipe's end, set when it is spawned
        )

    def start(self) -> None:
        for slot in self._slots:
            self._start_slot(slot)

    def spawn(self, index: int) -> FrontEndProcess | None:
        """A new front-end process for slot ``index`` (not yet its current);
        None when it cannot be started (logged)."""
        front = FrontEndProcess(index, self._status)
        order = self.order(index)
        command = [sys.executable, "-I", "-m", "supervisor.front.frontend", "--parent", str(os.getpid())]
        try:
            front.child = self._table.spawn(
                f"front end {index}",
                command,
                order=lambda fd: order.with_status_fd(fd).to_json(),
                pass_fds=(order.socket_fd,),
                on_output=front.feed,
                on_exit=lambda _child: self._exited(front),
            )
        except OSError as exc:
            log.error("front end %d: cannot start a process: %s", index, exc)
            return None
        self._live[front.child.pid] = front
        return front

    def hand_over(self, new: FrontEndProcess) -> FrontEndProcess | None:
        """Make the ready ``new`` replace its slot's process, which is told
        to drain and returned; None when the slot had none running (``new``
        is its current at once)."""
        slot = self._slots[new.index]
        if slot.successor is not None:
            # The last reload's process serves while the one before it still
            # drains: it is the one replaced now.
            previous, slot.successor = slot.successor, new
            self.stop(previous)
            return previous
        old = slot.current
        if old is None:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            slot.current = new
            return None
        slot.successor = new
        self.stop(old)
        return old

    def stop(self, front: FrontEndProcess) -> None:
        """SIGTERM (the front end drains within the grace), SIGKILL after it."""
        if front.child is not None:
            self._table.stop(front.child, self.stop_grace_s)

    def close(self) -> None:
        """Stop every front end: no restarts from now on."""
        self.closing = True
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
        for front in list(self._live.values()):
            self.stop(front)

    def hurry(self) -> None:
        """A second stop signal: forwarded, so they cut their grace short."""
        for front in list(self._live.values()):
            if front.child is not None:
                front.child.send_signal(signal.SIGTERM)

    def _start_slot(self, slot: _Slot) -> None:
        slot.restart = None
        if self.closing:
            return
        front = self.spawn(slot.index)
        if front is None:
            slot.failures += 1
            self._schedule_restart(slot)
            return
        slot.current = front

    def _schedule_restart(self, slot: _Slot) -> None:
        others = any(other.current is not None for other in self._slots if other is not slot)
        delay = backoff_delay(slot.failures, others_alive=others)
        log.warning(
            "front end %d: restarting in %.2f s after %d failure(s)", slot.index, delay, slot.failures
        )
        slot.restart = self._loop.call_later(delay, lambda: self._start_slot(slot))

    def _status(self, front: FrontEndProcess, line: bytes) -> None:
        if line == READY_LINE and not front.ready:
            front.ready = True
            self._announce(front)
        elif line == DRAINING_LINE:
            front.draining = True
        elif line.startswith(ERROR_PREFIX):
            front.error = line[len(ERROR_PREFIX) :].rstrip(b"\n").decode("utf-8", "replace")
        self._on_change()

    def _announce(self, front: FrontEndProcess) -> None:
        assert front.child is not None
        runners = self.order(front.index).workers
        log.info("front end %d (pid %d) ready with %d runner(s)", front.index, front.child.pid, runners)
        self._ever_ready = True
        self._slots[front.index].boot_failures = 0
        self._ready_count += 1
        if self._ready_count >= self.count and not self._all_ready:
            self._all_ready = True
            self._on_all_ready()

    def _exited(self, front: FrontEndProcess) -> None:
        assert front.child is not None
        self._live.pop(front.child.pid, None)
        slot = self._slots[front.index]
        if slot.current is front:
            self._slot_lost(slot, front)
        elif slot.successor is front:
            pass  # adopted when the slot's current exits, then handled as its exit
        self._on_change()

    def _slot_lost(self, slot: _Slot, front: FrontEndProcess) -> None:
        slot.current = None
        successor, slot.successor = slot.successor, None
        if successor is not None:  # a reload replaced it: adopt the new one
            slot.current = successor
            if successor.exited:
                self._slot_lost(slot, successor)
            return
        if self.closing:
            return
        self._count_failure(slot, front)
        if not self.closing:  # not halted by it
            self._schedule_restart(slot)

    def _count_failure(self, slot: _Slot, front: FrontEndProcess) -> None:
        child = front.child
        assert child is not None
        self.restarts += 1
        if front.error is not None:
            log.error("front end %d (pid %d) could not start: %s", slot.index, child.pid, front.error)
            if not self._ever_ready:
                self._on_halt(front.error)
        else:
            how = describe_exit(child.returncode)
            log.error("front end %d (pid %d) exited (%s); starting another", slot.index, child.pid, how)
        if not front.ready:
            slot.boot_failures += 1
            slot.failures += 1
            boot_failures = min(other.boot_failures for other in self._slots)
            if not self._ever_ready and boot_failures >= HALT_AFTER_BOOT_FAILURES:
                self._on_halt("no front end could start (see the log above)")
            return
        lived_s = self._loop.now() - child.started
        slot.failures = slot.failures + 1 if lived_s < STABLE_AFTER_S else 1
