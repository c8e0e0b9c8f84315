"""One runner process as the supervisor sees it: spawn, handshake, one call at
a time, kill. The process itself is owned by a ``trio.run_process`` task in the
caller's nursery, so it is always reaped, whatever happens here."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import subprocess
import sys
import typing

import psutil
import trio

from ipc.codec import FrameDecoder, ProtocolError, encode
from ipc.messages import PROTOCOL_VERSION, Configure, Failure, FailureKind, Invoke, Message, Ready, Reply

log = logging.getLogger(__name__)
_READ_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


class RunnerLost(Exception):
    """The runner can no longer be used; it has been (or is being) killed."""

    def __init__(self, kind: FailureKind, detail: str, delivered: bool = True) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        # False when the runner was already gone before it received the request,
        # so the request can safely go to another runner.
        self.delivered = delivered


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


async def _close_then_kill(process: trio.Process) -> None:
    # Closing stdin asks the runner to finish; a runner stuck in wasm or in a
    # host call never reads it, so it gets SIGKILL after a short grace.
    if process.stdin is not None:
        with trio.move_on_after(0.1):
            await process.stdin.aclose()
    with trio.move_on_after(2):
        await process.wait()
        return
    process.kill()


def runner_command() -> list[str]:
    # -I: the current folder and PYTHON* variables must not decide which
    # "runner" module starts (a project folder may well have its own).
    return [sys.executable, "-I", "-m", "runner"]


class RunnerHandle:
    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.pid = process.pid
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._decoder = FrameDecoder()
        self._pending: list[Message] = []
        self.requests_served = 0
        self.quota = 0  # requests before a planned recycle; set by the pool
        self._retired = trio.Event()
        self._retire_reason = ""
        self._ps = psutil.Process(process.pid)
        # The streams stay the owners of the pipes (they close them); the hot
        # path uses the descriptors directly. Both are non-blocking.
        self._in_fd = typing.cast(trio.lowlevel.FdStream, self._stdin).fileno()
        self._out_fd = typing.cast(trio.lowlevel.FdStream, self._stdout).fileno()
        for fd in (self._in_fd, self._out_fd):
            # Bigger pipes roughly halve the round trip for large bodies.
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)

    async def _receive(self) -> Message:
        # Straight on the descriptor, not through FdStream: the reply is never
        # there yet when we start, so wait first and read once (FdStream reads,
        # fails with EAGAIN, then waits); on this hot path every syscall counts.
        while not self._pending:
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
                try:
                    frame = frame[os.write(self._in_fd, frame) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._in_fd)
        except (OSError, trio.ClosedResourceError):
            raise RunnerLost(FailureKind.RUNNER_DIED, "the runner closed its pipe") from None

    async def handshake(self, configure: Configure) -> Ready:
        await self._send(configure)
        reply = await self._receive()
        if not isinstance(reply, Ready) or reply.protocol_version != PROTOCOL_VERSION:
            self.kill()
            raise RunnerLost(FailureKind.INTERNAL, f"unexpected handshake reply {type(reply).__name__}")
        return reply

    async def call(self, invoke: Invoke, deadline_s: float) -> Reply | Failure:
        """Run one request; the runner is killed if it has not answered by
        ``deadline_s``. Cancellation from outside does not interrupt it (a
        half-finished exchange would leave a reply nobody reads).

        Raises:
            RunnerLost: the runner died, broke the protocol or missed the deadline.
        """
        # One scope does both jobs: shielded from the caller, bounded by the deadline.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + deadline_s):
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
        raise RunnerLost(FailureKind.TIMEOUT, f"no answer within {deadline_s:.3f} s; runner killed")

    def retire(self, reason: str) -> None:
        """Hand the runner back to its slot for good ("closed", "recycled" or "crashed")."""
        if not self._retired.is_set():
            self._retire_reason = reason
            self._retired.set()

    @property
    def is_retired(self) -> bool:
        return self._retired.is_set()

    async def retired(self) -> str:
        """Wait until the runner is retired; returns the reason."""
        await self._retired.wait()
        return self._retire_reason

    def rss_bytes(self) -> int:
        try:
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def close(self) -> None:
        """Ask the runner to exit (EOF on its stdin)."""
        with trio.move_on_after(0.1):
            await self._stdin.aclose()


async def start_runner(nursery: trio.Nursery) -> RunnerHandle:
    """Spawn ``python -m runner`` owned by a task in ``nursery``."""
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            runner_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
            # Out of the terminal's process group: Ctrl-C goes to the
            # supervisor only, which then stops the runners in order.
            start_new_session=True,
            deliver_cancel=_close_then_kill,
        )
    )
    return RunnerHandle(process)
