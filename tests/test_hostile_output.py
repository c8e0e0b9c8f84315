"""Hostile worker output through the real server (issue 15, item 1).

Every answer a worker can produce is a typed failure for its own request; the
runner that ran it keeps serving (one runner, ``-w 1``, so its pid is the
proof), and the supervisor logs no lost runner.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ipc.codec import DEFAULT_MAX_FRAME, decode_body
from ipc.messages import Failure, FailureKind, Invoke, Reply
from runner.__main__ import answer
from tests.helpers import ServerProcess, http

HOSTILE_PROJECT = Path(__file__).resolve().parent / "hostileproject"
# Lines the supervisor writes when a runner dies or is killed.
_RUNNER_LOSS = re.compile(r"runner \d+ (lost|exited|failed)|runner-died")


@pytest.fixture(scope="module")
def server(cache_dir: Path) -> Iterator[ServerProcess]:
    # Memory and fuel for a 65 MiB JavaScript string and its JSON copies.
    args = ["-w", "1", "--memory-mb", "400", "--fuel", "40000000000", "--timeout-ms", "20000"]
    server = ServerProcess(HOSTILE_PROJECT, args, cache_dir)
    try:
        server.wait_ready(timeout=180)
        yield server
    finally:
        server.stop()


def runner_pids(server: ServerProcess) -> set[int]:
    children = psutil.Process(server.proc.pid).children()
    return {child.pid for child in children if "runner" in child.cmdline()}


@pytest.mark.parametrize(
    ("target", "kind", "detail"),
    [
        # A lone surrogate: no UTF-8 form, so its reply frame could not be encoded.
        ("/hostile?case=header", "bad-output", "header 'x-a' has a value"),
        ("/hostile?case=kv-value", "bad-output", "KV value of 'k' is not valid Unicode"),
        ("/hostile?case=kv-key", "bad-output", "KV key is not valid Unicode"),
        ("/hostile?case=body", "bad-output", '"data" is not valid Unicode'),
        ("/hostile?case=error", "script-error", r"Error: \ud800"),
        # Kit JSON the parser cannot hold: 100,000 levels, a 5,000-digit status.
        ("/deep", "bad-output", "nested too deeply"),
        ("/digits", "bad-output", "4300 digits"),
        # 80 MiB on stdout: cut at the output cap, far below the frame limit.
        ("/flood", "bad-output", "reached the 16777216-byte limit"),
        # A 65 MiB JavaScript body: over the cap, and over the frame limit.
        ("/hostile?case=big&mb=65", "bad-output", "exceeds the 16777216-byte limit"),
        # Grows 4 MiB at a time until refused, then aborts (issue 15, item 7).
        ("/growmany", "memory-limit", "memory limit of 419430400 bytes reached (wasm trap: unreachable)"),
    ],
)
async def test_hostile_output_is_a_typed_failure_and_the_runner_lives(
    server: ServerProcess, target: str, kind: str, detail: str
) -> None:
    assert (await http(server.port, "GET", "/ok")).status == 200
    before = runner_pids(server)
    log_start = len(server.stderr_lines)
    response = await http(server.port, "GET", target)
    assert response.status == 500
    assert response.headers["x-wws-failure"] == kind
    # The failure is logged with its cause (the detail stays in the log).
    line = server.wait_for(r"failed: " + re.escape(kind), start=log_start).string
    assert detail in line
    # The same runner answers the next request, and none was lost on the way.
    assert (await http(server.port, "GET", "/ok")).text == "ok"
    assert (await http(server.port, "GET", "/hostile")).text == "ok"
    assert runner_pids(server) == before and len(before) == 1
    assert not [x for x in server.stderr_lines[log_start:] if _RUNNER_LOSS.search(x)]


async def test_text_outside_the_response_is_escaped_not_fatal(server: ServerProcess) -> None:
    before = runner_pids(server)
    log_start = len(server.stderr_lines)
    # A lone surrogate in a console line is logged as an escape; a status text
    # is not part of the wws response at all.
    assert (await http(server.port, "GET", "/hostile?case=log")).text == "ok"
    server.wait_for(r"console\.log: \\ud800", start=log_start)
    assert (await http(server.port, "GET", "/hostile?case=status-text")).text == "ok"
    assert runner_pids(server) == before


async def test_a_body_under_the_cap_is_served(server: ServerProcess) -> None:
    response = await http(server.port, "GET", "/hostile?case=big&mb=15")
    assert response.status == 200
    assert len(response.body) == 15 << 20


# The last-resort net, as one function with stand-ins for the sandbox: a reply
# that slipped past every check, or a bug of ours, still answers the request.

INVOKE = Invoke(9, "w", "GET", "http://h/", [], b"", {}, {}, 100, 1 << 20, 1000)


def _decoded(frame: bytes) -> Failure:
    message = decode_body(frame[4:])
    assert isinstance(message, Failure)
    return message


def test_net_turns_an_unframable_reply_into_bad_output() -> None:
    reply = Reply(9, 200, [["x-a", "\ud800"]], b"", {}, [], 5, 6, b"")
    failure = _decoded(answer(lambda _: reply, INVOKE))
    assert (failure.request_id, failure.kind) == (9, FailureKind.BAD_OUTPUT)
    assert (failure.fuel_used, failure.elapsed_us) == (5, 6)
    assert "cannot be framed" in failure.detail


def test_net_turns_an_oversized_reply_into_bad_output() -> None:
    reply = Reply(9, 200, [], b"x" * (DEFAULT_MAX_FRAME + 1), {}, [], 0, 0, b"")
    failure = _decoded(answer(lambda _: reply, INVOKE))
    assert failure.kind == FailureKind.BAD_OUTPUT
    assert "exceeds" in failure.detail


def test_net_keeps_the_kind_of_a_failure_whose_detail_cannot_be_framed() -> None:
    failure = _decoded(answer(lambda _: Failure(9, "script-error", "Error: \ud800", 1, 2, b""), INVOKE))
    assert failure.kind == FailureKind.SCRIPT_ERROR
    assert "\\ud800" in failure.detail


def test_net_turns_an_exception_into_internal() -> None:
    def broken(_: Invoke) -> Reply:
        raise RecursionError("deep")

    failure = _decoded(answer(broken, INVOKE))
    assert failure.kind == FailureKind.INTERNAL
    assert "RecursionError" in failure.detail


def test_net_lets_process_fatal_errors_through() -> None:
    def exhausted(_: Invoke) -> Reply:
        raise MemoryError

    with pytest.raises(MemoryError):
        answer(exhausted, INVOKE)
