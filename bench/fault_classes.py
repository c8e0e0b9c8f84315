"""The fault classes of bench/faults.py: what each one does to the server,
what isolation it is promised, and what its round reports.

Every action provokes its fault once and returns a :class:`Round`; the caller
then waits until the pool is full again and measures the unrelated route.
Faults go through the real front door (HTTP) or, where there is none, at the
processes themselves: signals, and garbage written into a runner's request
pipe through /proc/<pid>/fd.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench.probe import Server, describe, exchange, get, lives, restart, runner_state


@dataclasses.dataclass
class Round:
    answers: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    kill_after: list[int] = dataclasses.field(default_factory=list)  # pids left for us to clean up
    fault_end: float = 0.0


@dataclasses.dataclass
class Ctx:
    server: Server  # the one the unrelated clients measure; replaced when restarted
    hold_s: float
    sustain_s: float
    full_timeout_s: float


Action = Callable[[Ctx], Awaitable[Round]]


@dataclasses.dataclass(frozen=True)
class FaultClass:
    key: str
    name: str
    action: Action
    promise: str  # what isolation is promised, in the table's words
    allowed: int | None = 0  # unrelated failures per round within the promise (None: not counted)
    keeps_runner: bool = False  # the fault must not cost its runner
    server: str = "shared"  # "shared", "nofile" (RLIMIT_NOFILE 1024) or "killed" (we SIGKILL it)
    rounds: int | None = None  # a fixed number of rounds instead of the run's N


async def _poll_runner(ctx: Ctx, want: str, for_s: float = 0.0, wait_s: float = 10) -> int | None:
    # A runner seen in state ``want`` on consecutive polls spanning ``for_s``.
    since: dict[int, float] = {}
    with trio.move_on_after(wait_s):
        while True:
            now = time.monotonic()
            for proc in ctx.server.runners():
                if runner_state(proc) == want:
                    since.setdefault(proc.pid, now)
                    if now - since[proc.pid] >= for_s:
                        return int(proc.pid)
                else:
                    since.pop(proc.pid, None)
            await trio.sleep(0.01)
    return None


def worker_fault(path: str) -> Action:
    async def act(ctx: Ctx) -> Round:
        port = ctx.server.port
        status, failure, _ = await exchange(port, get(path, port), wait_s=60)
        return Round(answers=[describe(status, failure)])

    return act


def sustained(path: str) -> Action:
    # One client sending the fault back to back: the item 2 (backoff starving everyone).
    async def act(ctx: Ctx) -> Round:
        port, answers = ctx.server.port, []
        until = time.monotonic() + ctx.sustain_s
        while time.monotonic() < until:
            status, failure, _ = await exchange(port, get(path, port), wait_s=60)
            answers.append(describe(status, failure))
        return Round(answers=answers)

    return act


async def quiet(ctx: Ctx) -> Round:
    await trio.sleep(1.0)
    return Round()


def signal_runner(signum: signal.Signals) -> Action:
    async def act(ctx: Ctx) -> Round:
        pid = await _poll_runner(ctx, "idle")
        if pid is None:
            return Round(problems=["no idle runner to signal"])
        os.kill(pid, signum)
        return Round(facts={"victim": pid}, kill_after=[pid] if signum == signal.SIGSTOP else [])

    return act


async def kill_mid_request(ctx: Ctx) -> Round:
    port = ctx.server.port
    result: list[str] = []

    async def slow() -> None:
        status, failure, _ = await exchange(port, get("/slow", port), wait_s=30)
        result.append(describe(status, failure))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        # /hello keeps a runner for a millisecond; the /slow one stays busy for 3 s.
        pid = await _poll_runner(ctx, "busy", for_s=0.3)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    return Round(answers=result, problems=[] if pid else ["never saw the /slow runner busy"])


def _request_pipe(pid: int) -> int | None:
    # The runner moves its request pipe off fd 0; it is its only read-only pipe.
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry).startswith("pipe:"):
                flags = (Path(f"/proc/{pid}/fdinfo") / entry.name).read_text().split("flags:")[1].split()[0]
                if int(flags, 8) & 3 == os.O_RDONLY:
                    return int(entry.name)
    return None


def garbage(payload: bytes) -> Action:
    async def act(ctx: Ctx) -> Round:
        pid = await _poll_runner(ctx, "idle")
        fd = _request_pipe(pid) if pid else None
        if pid is None or fd is None:
            return Round(problems=["no idle runner with a request pipe"])
        writer = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(writer, payload)
        finally:
            os.close(writer)
        return Round(facts={"victim": pid})

    return act


async def _slow_connection(port: int, head: bytes, trickle: bytes, gap: float, hold: float) -> dict[str, Any]:
    """Send ``head`` at once, then ``trickle`` a byte per ``gap``; report when
    (and how) the server ended the connection, or that it was still open."""
    started = time.monotonic()
    out: dict[str, Any] = {"closed_after": None, "status": None}
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError as exc:
        return {"closed_after": 0.0, "status": type(exc).__name__}
    async with stream:
        with trio.move_on_after(hold):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        while chunk := await stream.receive_some(1 << 16):
                            if out["status"] is None and chunk.startswith(b"HTTP/1.1 "):
                                out["status"] = int(chunk[9:12])
                    out["closed_after"] = round(time.monotonic() - started, 2)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(head)
                    for index in range(len(trickle)):
                        await stream.send_all(trickle[index : index + 1])
                        await trio.sleep(gap)
                await trio.sleep_forever()
    return out


def slow_clients(kind: str, count: int = 16) -> Action:
    async def act(ctx: Ctx) -> Round:
        port = ctx.server.port
        pad = b"x-pad: " + b"p" * 2000 + b"\r\n\r\n"
        head_start = f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        post = f"POST /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        shapes: list[tuple[bytes, bytes]] = []
        for index in range(count):
            if kind == "headers":
                shapes.append((b"", head_start + pad))
            elif index % 2:
                shapes.append((post + b"Content-Length: 100000\r\n\r\n", b"b" * 100000))
            else:
                shapes.append((post + b"Transfer-Encoding: chunked\r\n\r\nfffffff\r\n", b""))
        results: list[dict[str, Any]] = []

        async def one(head: bytes, trickle: bytes) -> None:
            results.append(await _slow_connection(port, head, trickle, 0.2, ctx.hold_s))

        async with trio.open_nursery() as nursery:
            for head, trickle in shapes:
                nursery.start_soon(one, head, trickle)
        closed = [r["closed_after"] for r in results if r["closed_after"] is not None]
        statuses = collections.Counter(str(r["status"]) for r in results if r["status"] is not None)
        facts = {"connections": count, "closed_by_server": len(closed), "statuses": dict(statuses)}
        if closed:
            facts["closed_after_max_s"] = max(closed)
        problems = []
        if kind == "body" and len(closed) < count:
            problems.append(f"{count - len(closed)}/{count} slow bodies still open after {ctx.hold_s:.0f} s")
        return Round(problems=problems, facts=facts)

    return act


async def cl_and_te(ctx: Ctx) -> Round:
    port = ctx.server.port
    raw = (
        f"POST /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data, closed = bytearray(), False
    async with stream:
        await stream.send_all(raw)
        with trio.move_on_after(3), contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
            closed = True
    status = data[9:12].decode("latin-1") if data.startswith(b"HTTP/1.1 ") else "none"
    problems = [] if closed else ["connection left open after the response"]
    return Round(answers=[status], problems=problems, facts={"closed": closed})


async def exhaust_descriptors(ctx: Ctx) -> Round:
    port, streams, refused = ctx.server.port, [], 0
    limiter = trio.CapacityLimiter(32)

    async def connect() -> None:
        nonlocal refused
        async with limiter:
            try:
                with trio.fail_after(5):
                    streams.append(await trio.open_tcp_stream("127.0.0.1", port))
            except (OSError, trio.TooSlowError):
                refused += 1

    async with trio.open_nursery() as nursery:
        for _ in range(1100):
            nursery.start_soon(connect)
    # Make the pool spawn while descriptors are gone: the item 5.
    victim = await _poll_runner(ctx, "idle", wait_s=3)
    if victim:
        os.kill(victim, signal.SIGKILL)
    await trio.sleep(3)  # hold the connections; the clients keep measuring
    alive_during = ctx.server.alive()
    for stream in streams:
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.aclose()
    facts = {"opened": len(streams), "refused": refused, "runner_killed": victim, "alive": alive_during}
    return Round(facts=facts)


def _remove_leftovers(folders: list[str]) -> list[str]:
    # Ours: the bench cleans up what the restarted server did not.
    left = [folder for folder in folders if os.path.exists(folder)]
    for folder in left:
        shutil.rmtree(folder, ignore_errors=True)
    return left


def _scratch_of(pids: list[int]) -> list[str]:
    folders = set()
    for root in Path("/dev/shm").glob("wws-supervisor-*"):
        if any((root / str(pid)).exists() for pid in pids):
            folders.add(str(root))
    return sorted(folders)


async def kill_supervisor(ctx: Ctx) -> Round:
    port = ctx.server.port
    answers: list[str] = []

    async def stuck() -> None:
        status, failure, _ = await exchange(port, get("/sleep", port), wait_s=30)
        answers.append(describe(status, failure))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck)
        blocked = await _poll_runner(ctx, "busy", for_s=0.3)  # /sleep in its host call
        stopped = await _poll_runner(ctx, "idle", wait_s=3)
        if stopped:
            os.kill(stopped, signal.SIGSTOP)
        pids = [p.pid for p in ctx.server.runners()]
        folders = _scratch_of(pids)
        os.kill(ctx.server.proc.pid, signal.SIGKILL)
        ctx.server.proc.wait()
        with trio.move_on_after(3):
            # Nothing to wait on but /proc: the runners are not our children.
            while any(lives(pid) for pid in pids):  # noqa: ASYNC110
                await trio.sleep(0.05)
    orphans = [pid for pid in pids if lives(pid)]
    ctx.server = await restart(ctx.server)
    left = _remove_leftovers(folders)
    problems = []
    if orphans:
        problems.append(f"{len(orphans)} orphaned runner(s) alive 3 s later")
    if left:
        problems.append(f"{len(left)} scratch folder(s) left after the restart")
    facts = {"blocked_runner": blocked, "stopped_runner": stopped, "orphans": orphans, "leftover": left}
    return Round(answers=answers, problems=problems, facts=facts, kill_after=orphans)


def _garbage_bytes() -> bytes:
    # Deterministic noise whose first four bytes announce an oversized frame.
    state, out = 12345, bytearray(b"\xff\xff\xff\xff")
    for _ in range(4092):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out.append(state >> 16 & 0xFF)
    return bytes(out)


_NONE = "yes: 0 unrelated failures"
CLASSES = [
    FaultClass("baseline", "none (baseline, 1 s of quiet)", quiet, _NONE),
    FaultClass("loop", "endless loop (1.5 s wall clock)", worker_fault("/loop"), _NONE, keeps_runner=True),
    FaultClass("memory", "memory bomb", worker_fault("/grow"), _NONE, keeps_runner=True),
    FaultClass("stack", "stack overflow", worker_fault("/stack"), _NONE, keeps_runner=True),
    FaultClass("trap", "trap", worker_fault("/trap"), _NONE, keeps_runner=True),
    FaultClass("exit", "non-zero exit", worker_fault("/exit"), _NONE, keeps_runner=True),
    FaultClass(
        "bigout", "64 MiB output (compiled, stdout)", worker_fault("/bigout"), _NONE, keeps_runner=True
    ),
    FaultClass("bigbody", "64 MiB output (JS body)", worker_fault("/bigbody"), _NONE, keeps_runner=True),
    FaultClass(
        "surrogate",
        "hostile output: lone surrogate header (JS)",
        worker_fault("/surrogate"),
        _NONE,
        keeps_runner=True,
    ),
    FaultClass(
        "kvsurrogate",
        "hostile output: lone surrogate KV value",
        worker_fault("/kvsurrogate"),
        _NONE,
        keeps_runner=True,
    ),
    FaultClass(
        "deep", "hostile output: kit JSON nested 100k deep", worker_fault("/deep"), _NONE, keeps_runner=True
    ),
    FaultClass(
        "status", "hostile output: 5,000-digit status", worker_fault("/status"), _NONE, keeps_runner=True
    ),
    FaultClass(
        "sleep",
        "stuck in a host call (poll_oneoff)",
        worker_fault("/sleep"),
        "yes: 0 unrelated failures; the runner is killed at its deadline",
    ),
    FaultClass(
        "sleep-sustained",
        "stuck in a host call, one client back to back for {sustain:.0f} s",
        sustained("/sleep"),
        "yes: 0 unrelated failures; deadline kills never feed the crash backoff",
        rounds=1,
    ),
    FaultClass("kill-idle", "runner SIGKILL, idle", signal_runner(signal.SIGKILL), _NONE),
    FaultClass(
        "kill-busy", "runner SIGKILL, mid-request", kill_mid_request, "yes: only the killed request fails"
    ),
    FaultClass(
        "sigstop",
        "runner SIGSTOP",
        signal_runner(signal.SIGSTOP),
        "yes: a stopped runner is found when it is next leased (one waitid call) and replaced;"
        " no request waits on it",
    ),
    FaultClass(
        "garbage",
        "garbage IPC frame (oversized header)",
        garbage(_garbage_bytes()),
        "yes: the runner dies while idle; requests are retried",
    ),
    FaultClass(
        "truncated",
        "garbage IPC frame (truncated frame)",
        garbage(b"\x00\x00\x00\x40garbage"),
        "yes: the runner waits for the rest of the frame (so the pool looks full); its next request "
        "completes the bad frame, the runner stops at it, and that request goes to another runner",
        allowed=1,
    ),
    FaultClass("slow-headers", "slow headers (16 clients, 1 byte / 0.2 s)", slow_clients("headers"), _NONE),
    FaultClass("slow-body", "slow body (8 trickled, 8 huge chunk announced)", slow_clients("body"), _NONE),
    FaultClass("cl-te", "Content-Length + Transfer-Encoding", cl_and_te, _NONE),
    FaultClass(
        "fds",
        "descriptor exhaustion (RLIMIT_NOFILE 1024, 1,100 idle connections, a runner killed)",
        exhaust_descriptors,
        "partly: refusals while exhausted are allowed; the server must survive and recover",
        allowed=None,
        server="nofile",
    ),
    FaultClass(
        "kill-supervisor",
        "supervisor SIGKILL (a runner in a host call, one stopped)",
        kill_supervisor,
        "no: everything fails until the bench restarts it (at once; pool full is timed from there); "
        "its runners must die with it and its scratch folder go at the next start",
        allowed=None,
        server="killed",
    ),
]
