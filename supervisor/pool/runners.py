"""One runner process as the supervisor sees it: spawn, handshake, one call at
a time, kill, reap. The process is owned by a task in the caller's nursery
(:func:`start_runner`, through ``supervisor.pool.children``), which stops and reaps
it however that task ends; the runner itself dies with the supervisor.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import logging
import os
import subprocess
import sys

import psutil
import trio

from ipc.codec import FrameDecoder, ProtocolError, encode
from ipc.messages import PROTOCOL_VERSION, Configure, Failure, FailureKind, Invoke, Message, Ready, Reply
from supervisor.pool.children import Child, own
from supervisor.pool.exit_status import describe_exit

log = logging.getLogger(__name__)
runner_log = logging.getLogger("runner")
# Most replies fit one read. Asking for more than malloc hands out from its
# heap (128 KiB) costs an mmap/munmap per read: 50-70 us against 2-4 us.
_READ_SIZE = 1 << 16
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
# Lines of a runner's own stderr kept to explain a boot failure.
_STDERR_TAIL_LINES = 10
_MAX_STDERR_LINE = 2000


class RunnerLost(Exception):
    """The runner can no longer be used; it has been (or is being) killed."""

    def __init__(self, kind: FailureKind, detail: str, delivered: bool = True) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        # False when the runner was already gone before it received the request,
        # so the request can safely go to another runner.
        self.delivered = delivered


def runner_command() -> list[str]:
    # -I: the current folder and PYTHON* variables must not decide which
    # "runner" module starts (a project folder may well have its own).
    # --parent: the runner checks it is still ours once its death signal is set.
    return [sys.executable, "-I", "-m", "runner", "--parent", str(os.getpid())]


class RunnerHandle:
    """The supervisor's end of one runner: its pipes, its exit, its stderr."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        self._popen = popen
        self.child = Child(popen)
        self.pid = popen.pid
        # The supervisor talks to the runner on raw non-blocking descriptors;
        # the file objects only own them (and close them in _release).
        self._in_fd = popen.stdin.fileno()
        self._out_fd = popen.stdout.fileno()
        self._err_fd = popen.stderr.fileno()
        for fd in (self._in_fd, self._out_fd, self._err_fd):
            os.set_blocking(fd, False)
        for fd in (self._in_fd, self._out_fd):
            # Bigger pipes roughly halve the round trip for large bodies.
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self._decoder = FrameDecoder()
        self._pending: list[Message] = []
        self._stdin_open = True
        self._released = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._in_backtrace = False
        self.requests_served = 0
        self._ps: psutil.Process | None = None

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    async def _receive(self) -> Message:
        # Straight on the descriptor: the reply is never there yet when we
        # start, so wait first and read once; on this hot path every syscall counts.
        while not self._pending:
            if self._released:
                raise RunnerLost(FailureKind.RUNNER_DIED, "the runner has exited")
            try:
                await trio.lowlevel.wait_readable(self._out_fd)
                data = os.read(self._out_fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except (OSError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise RunnerLost(FailureKind.RUNNER_DIED, "the runner closed its pipe")
            try:
                self._pending.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                self.kill()
                raise RunnerLost(FailureKind.INTERNAL, f"runner protocol error: {exc}") from None
        return self._pending.pop(0)

    async def _send(self, message: Message) -> None:
        frame = memoryview(encode(message))
        try:
            while frame:
                if self._released or not self._stdin_open:
                    raise OSError("the runner has exited")
                try:
                    frame = frame[os.write(self._in_fd, frame) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._in_fd)
        except (OSError, trio.ClosedResourceError):
            raise RunnerLost(FailureKind.RUNNER_DIED, "the runner closed its pipe") from None

    async def handshake(self, configure: Configure) -> Ready:
        """Send the configuration; the runner answers Ready once it has loaded.

        Raises:
            RunnerLost: the runner died or answered something else.
        """
        await self._send(configure)
        reply = await self._receive()
        if not isinstance(reply, Ready) or reply.protocol_version != PROTOCOL_VERSION:
            self.kill()
            raise RunnerLost(FailureKind.INTERNAL, f"unexpected handshake reply {type(reply).__name__}")
        return reply

    async def call(self, invoke: Invoke, scope: trio.CancelScope) -> Reply | Failure:
        """Run one request inside ``scope``, a shielded scope whose deadline
        the caller owns (and may move, to hurry a shutdown). Cancellation from
        outside does not interrupt the exchange: a half-finished one would
        leave a reply nobody reads. If the deadline passes, the runner is killed.

        Raises:
            RunnerLost: the runner died, broke the protocol or missed the deadline.
        """
        with scope:
            try:
                await self._send(invoke)
            except RunnerLost as exc:
                raise RunnerLost(exc.kind, exc.detail, delivered=False) from None
            reply = await self._receive()
            if not isinstance(reply, Reply | Failure) or reply.request_id != invoke.request_id:
                self.kill()
                raise RunnerLost(FailureKind.INTERNAL, "the runner answered out of turn")
            self.requests_served += 1
            return reply
        self.kill()
        raise RunnerLost(FailureKind.TIMEOUT, "no answer within the request's deadline; runner killed")

    def rss_bytes(self) -> int:
        # The runner may be gone at any moment: every look at it expects that.
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0

    def kill(self) -> None:
        self.child.kill()

    def stopped(self) -> bool:
        """Whether the runner is stopped by a signal (it would never answer)."""
        return self.child.stopped()

    def close_stdin(self) -> None:
        """Ask the runner to exit: it sees EOF on its stdin."""
        if self._stdin_open:
            self._stdin_open = False
            trio.lowlevel.notify_closing(self._in_fd)
            with contextlib.suppress(OSError):
                assert self._popen.stdin is not None
                self._popen.stdin.close()

    async def wait_exit(self) -> int:
        """Wait until the runner has exited, been reaped and its last stderr
        lines relayed; returns its exit status."""
        return await self.child.wait_exit()

    async def relay_stderr(self) -> None:
        """Copy the runner's own stderr (its log lines) into our log, keeping
        the last lines to explain a boot failure. Ends at EOF."""
        buffer = b""
        while True:
            if self._released:
                break
            try:
                await trio.lowlevel.wait_readable(self._err_fd)
                chunk = os.read(self._err_fd, 65536)
            except BlockingIOError:
                continue
            except (OSError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._log_line(line)
            if len(buffer) > _MAX_STDERR_LINE:
                self._log_line(buffer)
                buffer = b""
        if buffer:
            self._log_line(buffer)

    def _log_line(self, raw: bytes) -> None:
        text = raw[:_MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
        if not text:
            return
        # A Rust panic's stack backtrace says nothing to an operator: it goes
        # to the debug log; the panic message itself stays visible.
        if text.startswith("stack backtrace:"):
            self._in_backtrace = True
        elif self._in_backtrace and not text.startswith((" ", "note:")):
            self._in_backtrace = False
        if self._in_backtrace or text.startswith("note: "):
            runner_log.debug("%s", text)
            return
        self.stderr_tail.append(text)
        runner_log.warning("%s", text)

    def boot_error(self) -> str:
        """The runner's own last words, for a one-line boot failure message:
        a Rust panic's message and causes, else its last error line."""
        lines = [line.strip() for line in self.stderr_tail if line.strip()]
        for index, line in enumerate(lines):
            if "panicked at" in line:
                # The panic message, then numbered causes ("0: ...", "1: ...").
                detail = [lines[index + 1]] if index + 1 < len(lines) else []
                detail += [c.split(":", 1)[1].strip() for c in lines[index + 2 :] if c[:1].isdigit()]
                return "; ".join(detail) or line
        for line in reversed(lines):
            if "error" in line.lower() and not line.startswith(("Traceback", "File ")):
                return line
        return lines[-1] if lines else describe_exit(self.returncode)

    def release(self) -> None:
        """Close our ends of the pipes (the runner has been reaped). A task
        still waiting on one gets ClosedResourceError, and nothing uses the
        descriptor numbers afterwards, since the kernel may reuse them."""
        if self._released:
            return
        self._released = True
        self.close_stdin()
        for fd in (self._out_fd, self._err_fd):
            trio.lowlevel.notify_closing(fd)
        for stream in (self._popen.stdout, self._popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _spawn() -> RunnerHandle:
    popen = subprocess.Popen(
        runner_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Out of the terminal's process group: Ctrl-C goes to the supervisor
        # only, which then stops the runners in order. Still in its session:
        # where the kernel groups CPU time by session (autogroup), a runner in
        # a session of its own would not yield to the other runners when its
        # priority is lowered (supervisor/pool/demotion.py).
        process_group=0,
    )
    return RunnerHandle(popen)


async def start_runner(nursery: trio.Nursery) -> RunnerHandle:
    """Spawn ``python -m runner``, owned by a task in ``nursery``: when that
    task is cancelled (or the runner exits), the runner is stopped and reaped.

    Raises:
        OSError: the process or its pipes could not be created (for example,
            out of file descriptors).
    """
    # Blocking, but short (vfork + exec); see supervisor.pool.children for why the
    # spawn happens on this thread.
    handle = _spawn()
    try:
        await nursery.start(
            functools.partial(
                own,
                handle.child,
                ask_to_exit=handle.close_stdin,
                beside=handle.relay_stderr,
                release=handle.release,
            )
        )
    except BaseException:
        handle.kill()
        handle.release()
        raise
    return handle
