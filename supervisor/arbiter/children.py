"""The arbiter's ownership table: every child process it starts (front ends,
a reload's prepare process, the admin listener) is spawned, watched,
stopped and reaped here, and by nothing else.

Ownership is explicit and total, the way a trio nursery would make it:

* a child enters the table when it is spawned and leaves it only once it
  has been reaped (``waitpid`` on its own pid, never ``waitpid(-1)``), its
  pidfd and our end of its pipe closed, and its owner told (``on_exit``);
* stopping is two-stage and remembers its stage: SIGTERM, then SIGKILL
  once the grace has passed (gunicorn's ``murder_workers`` with
  ``aborted``; trio's ``_posix_deliver_cancel``);
* :meth:`ChildTable.close` is the safety net for the arbiter's own exit: it
  kills and reaps whatever is left, so nothing outlives the arbiter even on
  a bug (the children also die with it through ``PR_SET_PDEATHSIG``, see
  ``runner/lifeline.py``: the loop's thread spawns them and lives as long as
  the process).

A child's exit is noticed on its pidfd (Linux 5.3+), or by polling on older
kernels. Whatever it wrote on its pipe before exiting is read before its
owner hears of the exit, so a last status line is never lost.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator

from supervisor.arbiter.loop import EventLoop, Timer

log = logging.getLogger("supervisor.arbiter.arbiter")

# Without pidfds (Linux before 5.3), how often an exit is looked for.
_POLL_S = 0.05
_READ_CHUNK = 65536


class StopStage(enum.Enum):
    ASKED = "asked"  # SIGTERM sent, the SIGKILL timer set
    KILLED = "killed"  # the grace ran out: SIGKILL sent


class OwnedChild:
    """One child in the table: its process, pipe and stop stage."""

    def __init__(
        self,
        role: str,
        popen: subprocess.Popen[bytes],
        started: float,
        on_output: Callable[[bytes], None] | None,
        on_exit: Callable[[OwnedChild], None],
    ) -> None:
        self.role = role
        self.popen = popen
        self.pid = popen.pid
        self.started = started
        self.stage: StopStage | None = None
        self._on_output = on_output
        self._on_exit = on_exit
        self._read_fd: int | None = None
        self._pidfd: int | None = None
        self._kill_timer: Timer | None = None  # the SIGKILL deadline, once asked to stop
        self._poll_timer: Timer | None = None  # looking for the exit, without pidfds

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def send_signal(self, signum: int) -> None:
        # Never after reaping: the pid may belong to someone else by then.
        if self.popen.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signum)


class ChildTable:
    """Every child of the arbiter, from spawn to reap."""

    def __init__(self, loop: EventLoop, after_exit: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._after_exit = after_exit  # after any child's owner was told of its exit
        self._children: dict[int, OwnedChild] = {}

    def __iter__(self) -> Iterator[OwnedChild]:
        return iter(list(self._children.values()))

    def __len__(self) -> int:
        return len(self._children)

    def spawn(
        self,
        role: str,
        command: list[str],
        *,
        order: Callable[[int], bytes],
        pass_fds: tuple[int, ...] = (),
        on_output: Callable[[bytes], None] | None = None,
        on_exit: Callable[[OwnedChild], None],
    ) -> OwnedChild:
        """Start ``command`` in a session of its own (out of the terminal's
        process group: Ctrl-C reaches the arbiter, which forwards it in
        order) and own it. ``order(fd)`` gives the bytes written on its
        stdin, ``fd`` being the write end of its output pipe as the child
        sees it (-1 without ``on_output``); ``on_output`` gets what it writes
        there, ``on_exit`` is called once it has been reaped.

        Raises:
            OSError: the process or its pipe could not be created (nothing
                is left open then).
        """
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC) if on_output is not None else (-1, -1)
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                pass_fds=(*pass_fds, *([write_fd] if write_fd >= 0 else [])),
                start_new_session=True,
            )
        except BaseException:
            if read_fd >= 0:
                os.close(read_fd)
            raise
        finally:
            if write_fd >= 0:
                os.close(write_fd)
        child = OwnedChild(role, popen, self._loop.now(), on_output, on_exit)
        self._children[child.pid] = child
        if read_fd >= 0:
            os.set_blocking(read_fd, False)
            child._read_fd = read_fd
            self._loop.add_reader(read_fd, lambda: self._read(child))
        try:
            child._pidfd = os.pidfd_open(child.pid)
        except OSError:  # an old kernel: look for the exit now and then
            child._poll_timer = self._loop.call_later(_POLL_S, lambda: self._poll(child))
        else:
            self._loop.add_reader(child._pidfd, lambda: self._check(child))
        assert popen.stdin is not None
        # A child that dies before reading its order is reaped like any other.
        with contextlib.suppress(OSError):
            popen.stdin.write(order(write_fd))
        with contextlib.suppress(OSError):
            popen.stdin.close()
        return child

    def stop(self, child: OwnedChild, grace_s: float) -> None:
        """Ask ``child`` to exit (SIGTERM) and SIGKILL it if it is still
        there after ``grace_s``; a child already asked keeps its deadline."""
        if child.returncode is not None or child.stage is not None:
            return
        child.stage = StopStage.ASKED
        child.send_signal(signal.SIGTERM)
        child._kill_timer = self._loop.call_later(grace_s, lambda: self._kill(child, grace_s))

    def _kill(self, child: OwnedChild, grace_s: float) -> None:
        if child.returncode is not None:
            return
        log.warning("%s (pid %d) did not stop within %.1f s: killed", child.role, child.pid, grace_s)
        child.stage = StopStage.KILLED
        child.send_signal(signal.SIGKILL)

    def _read(self, child: OwnedChild) -> bool:
        """Read what is there; False once nothing more is to be had now."""
        fd = child._read_fd
        if fd is None:
            return False
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            if child._on_output is not None:
                child._on_output(data)
            return True
        self._loop.remove_reader(fd)
        os.close(fd)
        child._read_fd = None
        return False

    def _poll(self, child: OwnedChild) -> None:
        child._poll_timer = None
        self._check(child)
        if child.pid in self._children:
            child._poll_timer = self._loop.call_later(_POLL_S, lambda: self._poll(child))

    def _check(self, child: OwnedChild) -> None:
        # Reaps this pid only (Popen.poll is waitpid(pid, WNOHANG)).
        if child.popen.poll() is None:
            return
        # Exited: what it wrote last is read before its owner hears of it
        # (up to what is in the pipe: a grandchild holding the write end is
        # not waited for).
        while self._read(child):
            pass
        self._release(child)
        child._on_exit(child)
        self._after_exit()

    def _release(self, child: OwnedChild) -> None:
        self._children.pop(child.pid, None)
        for timer in (child._kill_timer, child._poll_timer):
            if timer is not None:
                timer.cancel()
        child._kill_timer = child._poll_timer = None
        if child._pidfd is not None:
            self._loop.remove_reader(child._pidfd)
            os.close(child._pidfd)
            child._pidfd = None
        if child._read_fd is not None:
            self._loop.remove_reader(child._read_fd)
            os.close(child._read_fd)
            child._read_fd = None

    def close(self) -> None:
        """Kill and reap every child still here (the arbiter is exiting);
        their owners are not told."""
        for child in self:
            child.send_signal(signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                child.popen.wait()
            self._release(child)
