"""The arbiter's loop and ownership table on their own, with real child
processes (``python -c`` snippets): timers in order, signals dispatched from
the loop, two-stage stops that remember their stage, a last status line read
before the exit is reported, nothing left behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from supervisor.arbiter.children import ChildTable, OwnedChild, StopStage
from supervisor.arbiter.loop import EventLoop

# Prints when its SIGTERM handler is in place, then ignores SIGTERM for good.
_STUBBORN = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "fd = int(sys.stdin.read())\n"
    "os.write(fd, b'ignoring\\n')\n"
    "time.sleep(60)\n"
)
# Writes a line and exits at once: the line must reach its owner first.
_LAST_WORDS = (
    "import os, sys\nfd = int(sys.stdin.read())\nos.write(fd, b'error: last words\\n')\nsys.exit(3)\n"
)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    event_loop = EventLoop()
    yield event_loop
    event_loop.close()


def _python(code: str) -> list[str]:
    return [sys.executable, "-I", "-c", code]


def test_timers_fire_in_order_and_a_cancelled_one_never(loop: EventLoop) -> None:
    fired: list[str] = []
    loop.call_later(0.03, lambda: fired.append("second"))
    loop.call_later(0.01, lambda: fired.append("first"))
    loop.call_later(0.02, lambda: fired.append("cancelled")).cancel()
    loop.call_later(0.04, loop.stop)
    loop.run()
    assert fired == ["first", "second"]


def test_signals_are_recorded_and_dispatched_by_the_loop(loop: EventLoop) -> None:
    received: list[int] = []

    def handler(signum: int) -> None:
        received.append(signum)
        loop.stop()

    loop.handle_signals([signal.SIGUSR1], handler)
    loop.call_later(0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    loop.call_later(30, loop.stop)  # a safety net only: the signal ends the loop
    started = time.monotonic()
    loop.run()
    assert received == [signal.SIGUSR1]
    assert time.monotonic() - started < 10
    loop.close()  # restores the old handler
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(loop: EventLoop) -> None:
    exits: list[OwnedChild] = []
    table = ChildTable(loop)

    def output(data: bytes) -> None:
        assert data == b"ignoring\n"
        table.stop(child, grace_s=0.2)
        table.stop(child, grace_s=100)  # asked already: the first deadline stays

    def exited(owned: OwnedChild) -> None:
        exits.append(owned)
        loop.stop()

    child = table.spawn(
        "stubborn", _python(_STUBBORN), order=lambda fd: str(fd).encode(), on_output=output, on_exit=exited
    )
    loop.call_later(30, loop.stop)
    loop.run()
    assert exits == [child]
    assert child.stage is StopStage.KILLED
    assert child.returncode == -signal.SIGKILL
    assert len(table) == 0


def test_the_last_line_is_read_before_the_exit_is_reported(loop: EventLoop) -> None:
    seen: list[str] = []
    table = ChildTable(loop, after_exit=loop.stop)
    table.spawn(
        "last words",
        _python(_LAST_WORDS),
        order=lambda fd: str(fd).encode(),
        on_output=lambda data: seen.append(data.decode()),
        on_exit=lambda owned: seen.append(f"exit {owned.returncode}"),
    )
    loop.call_later(30, loop.stop)
    loop.run()
    assert seen == ["error: last words\n", "exit 3"]


def test_closing_the_table_kills_and_reaps_every_child(loop: EventLoop) -> None:
    table = ChildTable(loop)
    children = [
        table.spawn("sleeper", _python("import time; time.sleep(60)"), order=lambda _fd: b"", on_exit=print)
        for _ in range(2)
    ]
    table.close()
    assert len(table) == 0
    assert [child.returncode for child in children] == [-signal.SIGKILL] * 2
    for child in children:  # reaped: the pid is no child of ours any more
        with pytest.raises(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)


def test_a_child_that_cannot_start_leaves_nothing_open(loop: EventLoop) -> None:
    table = ChildTable(loop)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match=r"."):
        table.spawn("missing", ["/nonexistent/python"], order=lambda _fd: b"", on_output=print, on_exit=print)
    assert set(os.listdir("/proc/self/fd")) == before
    assert len(table) == 0
