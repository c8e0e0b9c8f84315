"""What the pool knows about one runner: the interface it needs from a runner
process (so tests can pass fakes), why a runner was retired, and the pool's
bookkeeping for each booted runner. (The restart policy for runners that fail
on their own is in ``supervisor/pool/backoff.py``, shared with the arbiter.)"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ipc.messages import Configure, Failure, Invoke, Ready, Reply

# How long a request-killed runner gets to be reaped before we log its exit.
REAP_WAIT_S = 2.0


class Runner(Protocol):
    """What the pool needs from a runner (``supervisor.pool.runners.RunnerHandle``)."""

    pid: int
    requests_served: int

    @property
    def returncode(self) -> int | None: ...

    async def handshake(self, configure: Configure) -> Ready: ...

    async def call(self, invoke: Invoke, scope: trio.CancelScope) -> Reply | Failure: ...

    async def wait_exit(self) -> int: ...

    def kill(self) -> None: ...

    def close_stdin(self) -> None: ...

    def rss_bytes(self) -> int: ...

    def boot_error(self) -> str: ...

    def stopped(self) -> bool: ...


RunnerFactory = Callable[[trio.Nursery], Awaitable[Runner]]


class Retired(enum.Enum):
    CLOSED = "closed"  # the pool is shutting down
    RECYCLED = "recycled"  # quota or RSS ceiling: planned
    DEMOTED = "demoted"  # its priority was lowered and cannot be raised back: planned
    REQUEST_FAULT = "request-fault"  # killed at a deadline, or died during a request
    CRASHED = "crashed"  # died on its own while idle
    BOOT_FAILED = "boot-failed"


@dataclasses.dataclass(eq=False)
class Member:
    """A booted runner and the pool's bookkeeping about it."""

    runner: Runner
    quota: int
    busy: bool = False
    reason: Retired | None = None
    retired: trio.Event = dataclasses.field(default_factory=trio.Event)

    def retire(self, reason: Retired) -> None:
        if self.reason is None:
            self.reason = reason
            self.retired.set()
