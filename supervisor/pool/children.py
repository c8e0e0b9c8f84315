"""Child processes a front end owns: its runners (and the compile step's
throwaway runner). One way to spawn, reap and stop them under trio; the
stdlib-only arbiter owns its front ends in ``supervisor/arbiter/children.py``.

Children are spawned from the event loop's own thread, never from a worker
thread: each child asks the kernel to SIGKILL it when the thread that forked
it exits (``PR_SET_PDEATHSIG``, see ``runner/lifeline.py``), and trio's worker
threads come and go. Spawned from the main thread, a child dies exactly when
its parent does, even if it is stuck in a host call or stopped.

A child is owned by a task (:func:`own`) in the caller's nursery: whatever way
that task ends, the child is stopped and reaped, and only that task waits on
the process (others wait for :meth:`Child.wait_exit`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable

import trio

# How long a child asked to exit gets before SIGKILL.
EXIT_GRACE_S = 2.0


class Child:
    """A spawned process: its exit, as an event the whole program can wait on."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = None
        with contextlib.suppress(OSError):  # a kernel without pidfds: poll instead
            self._pidfd = os.pidfd_open(self.pid)
        self._exited = trio.Event()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stopped(self) -> bool:
        """Whether the child is stopped by a signal; the state is left for
        the owner's reaping (WNOWAIT), and an exited child is not stopped."""
        if self.popen.returncode is not None:
            return False
        try:
            state = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return state is not None and state.si_code == os.CLD_STOPPED

    def send_signal(self, signum: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(OSError):
                self.popen.send_signal(signum)

    async def wait_exit(self) -> int:
        """Wait until the child has exited and its owner has finished with it;
        returns its exit status."""
        await self._exited.wait()
        assert self.popen.returncode is not None
        return self.popen.returncode

    async def reap(self) -> None:
        # Only the owner task reaps (one waiter per pidfd); others use wait_exit.
        while self.popen.poll() is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.sleep(0.05)  # no pidfd on this kernel: poll

    def _release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._exited.set()


async def own(
    child: Child,
    task_status: trio.TaskStatus[None],
    *,
    ask_to_exit: Callable[[], None],
    beside: Callable[[], Awaitable[None]] | None = None,
    release: Callable[[], None] | None = None,
    grace_s: float = EXIT_GRACE_S,
) -> None:
    """Own ``child`` until it exits (running ``beside`` next to it, e.g. a log
    relay), or until this task is cancelled: then ``ask_to_exit`` is called,
    and SIGKILL follows after ``grace_s``. The child is always reaped
    and ``release`` (closing our ends of its pipes) always runs."""
    try:
        async with trio.open_nursery() as nursery:
            if beside is not None:
                nursery.start_soon(beside)
            task_status.started()
            await child.reap()
    finally:
        with trio.CancelScope(shield=True):
            if child.returncode is None:
                ask_to_exit()
                with trio.move_on_after(grace_s):
                    await child.reap()
                child.kill()
                await child.reap()
            if release is not None:
                release()
            child._release()
