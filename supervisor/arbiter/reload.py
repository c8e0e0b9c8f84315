"""A reload under the arbiter (SIGHUP), as a state machine the loop drives.

1. **Preparing.** A throwaway process (``python -m supervisor.arbiter.prepare``, see
   ``supervisor/arbiter/prepare_child.py``) reads the configuration again, loads the
   project and compiles it, and answers which workers are broken and how
   many runners to run. A failure keeps the running front ends serving.
2. **Replacing**, one slot at a time: a new front end starts on the slot's
   socket; once it is ready the old one is told to drain; once the old one
   no longer accepts (or has exited), the next slot follows. From then on
   every new connection reaches the new generation. A new front end that
   exits before it is ready stops the reload there.

A SIGHUP during a reload asks for one more once this one is done (they
would read the same files). A stop abandons the reload: the prepare process
is stopped (SIGTERM, then SIGKILL), the front ends stop with the others.
"""

from __future__ import annotations

import enum
import logging

from supervisor.arbiter.children import ChildTable, OwnedChild
from supervisor.arbiter.frontends import FrontEndProcess, FrontEnds, Plan
from supervisor.arbiter.prepare_child import AnswerBuffer, PrepareFailed, prepare_command, prepare_order
from supervisor.ops.sd_notify import SdNotifier

log = logging.getLogger("supervisor.arbiter.arbiter")

# What a reload's prepare process gets to stop (and stop its compile runner).
PREPARE_GRACE_S = 5.0


class _State(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"
    REPLACING = "replacing"


class Reload:
    """The reload in progress, if any, and the generation served."""

    def __init__(self, table: ChildTable, front_ends: FrontEnds, notifier: SdNotifier) -> None:
        self._table = table
        self._front_ends = front_ends
        self._notifier = notifier
        self._state = _State.IDLE
        self._again = False  # a SIGHUP came during this reload
        self._prepare: OwnedChild | None = None
        self._index = 0
        self._new: FrontEndProcess | None = None  # the replacement being started
        self._old: FrontEndProcess | None = None  # the process it replaces, draining
        self.generation = 1

    @property
    def running(self) -> bool:
        return self._state is not _State.IDLE

    def request(self) -> None:
        """SIGHUP: reload now, or once the reload in progress is done."""
        if self._front_ends.closing:
            return
        if self._state is not _State.IDLE:
            self._again = True
            return
        self._begin()

    def abort(self) -> None:
        """The server stops: no further step (the front ends stop with the others)."""
        self._again = False
        if self._prepare is not None:
            self._table.stop(self._prepare, PREPARE_GRACE_S)
        self._state = _State.IDLE
        self._new = self._old = None

    def _begin(self) -> None:
        self._notifier.reloading()
        log.info("SIGHUP received: reloading the project")
        answer = AnswerBuffer()
        argv = self._front_ends.plan.argv
        try:
            self._prepare = self._table.spawn(
                "the prepare process",
                prepare_command(),
                order=lambda fd: prepare_order(argv, fd),
                on_output=answer.feed,
                on_exit=lambda child: self._prepared(child, answer),
            )
        except OSError as exc:
            self._failed(PrepareFailed(f"cannot start the prepare process: {exc}"))
            return
        self._state = _State.PREPARING

    def _prepared(self, child: OwnedChild, answer: AnswerBuffer) -> None:
        self._prepare = None
        if self._state is not _State.PREPARING or self._front_ends.closing:
            return  # abandoned
        try:
            prepared = answer.result(child.returncode)
        except PrepareFailed as exc:
            self._failed(exc)
            return
        plan = self._front_ends.plan
        # The socket count (front ends) and address stay; the runner count may change.
        self._front_ends.plan = Plan(plan.argv, prepared.workers, plan.max_connections, prepared.broken)
        self._state = _State.REPLACING
        self._index = 0
        self._next_slot()

    def _failed(self, exc: PrepareFailed) -> None:
        log.error("reload failed, the front ends keep serving: %s", exc)
        self._notifier.ready(f"serving generation {self.generation}; the last reload failed: {exc}")
        self._done()

    def _next_slot(self) -> None:
        if self._front_ends.closing:
            return
        if self._index >= self._front_ends.count:
            self.generation += 1
            log.info("reloaded: every front end serves generation %d", self.generation)
            self._notifier.ready(f"serving generation {self.generation}")
            self._done()
            return
        self._old = None
        self._new = self._front_ends.spawn(self._index)
        if self._new is None:
            self._stopped()

    def advance(self) -> None:
        """Look again after a front end's status line or exit."""
        if self._state is not _State.REPLACING or self._new is None:
            return
        new, old = self._new, self._old
        if old is None:  # waiting for the new one: ready, or gone
            if new.ready:
                self._old = self._front_ends.hand_over(new)
                if self._old is None:  # the slot had nothing running: done with it
                    self._slot_done()
            elif new.exited:
                why = new.error or "it exited"
                log.error("reload: the new front end %d could not start: %s", new.index, why)
                self._stopped()
        elif old.draining or old.exited:
            # No new connection reaches the old one (it drains on its own).
            self._slot_done()

    def _slot_done(self) -> None:
        self._index += 1
        self._next_slot()

    def _stopped(self) -> None:
        self._notifier.ready(f"reload stopped at front end {self._index}; see the log")
        self._done()

    def _done(self) -> None:
        self._state = _State.IDLE
        self._new = self._old = None
        if self._again and not self._front_ends.closing:
            self._again = False
            self._begin()
