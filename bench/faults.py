"""The fault table: every fault class, N times, against the real server, while
two clients keep measuring an unrelated route.

    .venv/bin/python bench/faults.py                 # every class, 3 rounds: a few minutes
    .venv/bin/python bench/faults.py --rounds 5
    .venv/bin/python bench/faults.py --quick --classes trap,cl-te   # 1 round of a few classes

Serves bench/faults/ (one worker per fault class plus /hello, the unrelated
route) with two runners. Two paced clients request /hello all the time; each
request counts against the class running when it started. After each round
the bench waits until the pool is full again: exactly two runner children of
the server, none stopped, each seen blocked reading its request pipe (read(2)
in /proc/<pid>/syscall), i.e. booted and idle. The classes are in
bench/fault_classes.py. Writes bench/faults.md and bench/faults.json (or into
--out-dir); the server's log goes to a file named at the end of the run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fault_classes import CLASSES, Ctx, FaultClass
from bench.probe import (
    REPO,
    WORKERS,
    PacedClient,
    Sample,
    command_args,
    lives,
    restart,
    start_server,
    wait_pool_full,
)

_MIN_WATCH_S = 1.0
# A short body timeout (default 30 s) keeps the slow-body rounds short; the
# mechanism measured is the same.
SERVER_ARGS = ("--body-timeout-ms", "5000")
_EXPLAIN = (
    "The server runs `bench/faults/` with `-w {workers} --body-timeout-ms 5000` and default limits "
    "otherwise (the endless loop has a 1.5 s wall clock and far more fuel, the host-call worker 1 s). "
    "Two clients request the unrelated `/hello` route all the time (paced, a fresh connection each); a "
    "request counts against the class running when it started. *Pool full again*: worst round, seconds "
    "from the end of the fault until every runner slot has a live, idle runner."
)
_BACKOFF = re.compile(r"restarting in ([\d.]+) s after (\d+) (?:crash|failure)")


async def run_class(ctx: Ctx, fault: FaultClass, rounds: int) -> dict[str, Any]:
    mark = len(ctx.server.lines)
    started = time.monotonic()
    result: dict[str, Any] = {"rounds": [], "survived": True, "log": []}
    for _ in range(rounds):
        seen = {p.pid for p in ctx.server.runners()}
        round_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_runners, ctx, seen)
            outcome = await fault.action(ctx)
            outcome.fault_end = outcome.fault_end or time.monotonic()
            full = await wait_pool_full(ctx.server, outcome.fault_end, ctx.full_timeout_s)
            nursery.cancel_scope.cancel()
        after = {p.pid for p in ctx.server.runners()}
        # Every round watches the unrelated route for at least a second after its fault.
        await trio.sleep(max(0.0, outcome.fault_end + _MIN_WATCH_S - time.monotonic()))
        for pid in outcome.kill_after:  # a runner nobody else will end
            if lives(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if fault.server != "killed":
                    outcome.problems.append(f"runner {pid} still there after the round (killed by the bench)")
        if not ctx.server.alive():
            result["survived"] = False
            outcome.problems.append(f"the server exited with {ctx.server.proc.returncode}")
            result["log"] += ctx.server.lines[mark:]
            ctx.server = await restart(ctx.server)
            mark = 0
        replaced = len(seen - after) if fault.server != "killed" else None
        result["rounds"].append(
            {**dataclasses.asdict(outcome), "start": round_start, "pool_full_s": full, "replaced": replaced}
        )
    result["window"] = (started, time.monotonic())
    result["log"] += ctx.server.lines[mark:]
    return result


async def _watch_runners(ctx: Ctx, seen: set[int]) -> None:
    # Every runner seen during the round; those gone at its end were replaced.
    while True:
        seen.update(p.pid for p in ctx.server.runners())
        await trio.sleep(0.02)


def _log_facts(log: list[str]) -> dict[str, Any]:
    backoffs = [(float(m.group(1)), int(m.group(2))) for line in log if (m := _BACKOFF.search(line))]
    return {
        "tracebacks": sum("Traceback" in line for line in log),
        "backoff_max_s": max((b[0] for b in backoffs), default=0.0),
        "backoff_max_crashes": max((b[1] for b in backoffs), default=0),
    }


def summarise(fault: FaultClass, raw: dict[str, Any], samples: list[Sample], rounds: int) -> dict[str, Any]:
    begin, end = raw["window"]
    mine = [s for s in samples if begin <= s.start < end]
    failed = [s for s in mine if not s.ok]
    failures = dict(collections.Counter(s.what for s in failed))
    fulls = [r["pool_full_s"] for r in raw["rounds"]]
    replaced = [r["replaced"] for r in raw["rounds"] if r["replaced"] is not None]
    problems = [p for r in raw["rounds"] for p in r["problems"]]
    if not raw["survived"] and fault.server != "killed":
        problems.append("the server died")
    if fault.allowed is not None and len(failed) > fault.allowed * rounds:
        problems.append(f"{len(failed)} unrelated failures ({failures})")
    if fault.keeps_runner and sum(replaced):
        problems.append(f"{sum(replaced)} runner(s) lost")
    if any(f is None for f in fulls):
        problems.append("pool not full again in time")
    log = _log_facts(raw["log"])
    notes = [fault.promise]
    if fault.allowed is None and failed:
        notes.append(f"unrelated failures: {failures}")
        late = _late_failures(raw["rounds"], failed, end)
        notes.append(f"of which {late} started more than {_MIN_WATCH_S:.0f} s after the fault ended")
        if late:
            problems.append(f"{late} unrelated failures after the fault ended")
    if log["backoff_max_crashes"]:
        notes.append(
            f"restart backoff up to {log['backoff_max_s']:.2f} s "
            f"after {log['backoff_max_crashes']} failure(s)"
        )
    if log["tracebacks"]:
        notes.append(f"{log['tracebacks']} traceback(s) in the log")
    notes += _fact_notes([r["facts"] for r in raw["rounds"]])
    return {
        "class": fault.name,
        "key": fault.key,
        "n": rounds,
        "promise": fault.promise,
        "fault_answers": dict(collections.Counter(a for r in raw["rounds"] for a in r["answers"])),
        "runners_replaced": sum(replaced) if replaced else None,
        "unrelated_total": len(mine),
        "unrelated_failed": len(failed),
        "unrelated_failures": failures,
        "worst_unrelated_ms": round(max((s.latency for s in mine), default=0.0) * 1000, 1),
        "pool_full_worst_s": None if any(f is None for f in fulls) else max(fulls, default=0.0),
        "server_survived": raw["survived"],
        "verdict": "ok" if not problems else "FAIL",
        "problems": problems,
        "notes": notes,
        "log": log,
        "rounds": raw["rounds"],
    }


def _late_failures(rounds: list[dict[str, Any]], failed: list[Sample], end: float) -> int:
    # Failures once the fault is over (plus a second to notice) mean no recovery.
    late = 0
    for index, r in enumerate(rounds):
        until = rounds[index + 1]["start"] if index + 1 < len(rounds) else end
        late += sum(r["fault_end"] + _MIN_WATCH_S <= s.start < until for s in failed)
    return late


def _fact_notes(facts: list[dict[str, Any]]) -> list[str]:
    notes = []
    closed = [f for f in facts if "closed_by_server" in f]
    if closed:
        total = sum(f["connections"] for f in closed)
        by_server = sum(f["closed_by_server"] for f in closed)
        last = max((f.get("closed_after_max_s", 0.0) for f in closed), default=0.0)
        statuses: collections.Counter[str] = collections.Counter()
        for f in closed:
            statuses.update(f["statuses"])
        notes.append(f"slow connections closed by the server: {by_server}/{total} (last after {last} s)")
        notes.append(f"their answers: {dict(statuses) or 'none'}")
    if any("opened" in f for f in facts):
        opened = [f["opened"] for f in facts if "opened" in f]
        notes.append(f"idle connections opened: {min(opened)}-{max(opened)}")
    if any("orphans" in f for f in facts):
        orphans = sum(len(f["orphans"]) for f in facts)
        left = sum(len(f["leftover"]) for f in facts)
        notes.append(f"orphaned runners: {orphans}; scratch folders left after restart: {left}")
    return notes


async def run_all(args: argparse.Namespace, selected: list[FaultClass]) -> tuple[list[dict[str, Any]], Path]:
    log = Path(tempfile.mkdtemp(prefix="wws-faults-")) / "server.log"
    ctx = Ctx(
        await start_server(args.cache_dir, log, None, *SERVER_ARGS),
        args.hold,
        args.sustain,
        args.full_timeout,
    )
    rows = []
    async with trio.open_nursery() as nursery:
        clients = [PacedClient(lambda: ctx.server.port, "/hello", b"hello", 0.02) for _ in range(2)]
        for client in clients:
            nursery.start_soon(client.run)
        for fault in selected:
            rounds = fault.rounds or args.rounds
            print(f"{fault.key}: {rounds} round(s)", file=sys.stderr, flush=True)
            shared = ctx.server
            if fault.server == "nofile":
                ctx.server = await start_server(args.cache_dir, log, 1024, *SERVER_ARGS)
            raw = await run_class(ctx, fault, rounds)
            if fault.server == "nofile":
                await trio.to_thread.run_sync(ctx.server.stop)
                ctx.server = shared
            samples = [s for c in clients for s in c.samples]
            rows.append(summarise(fault, raw, samples, rounds))
            rows[-1]["class"] = fault.name.format(sustain=args.sustain)
            print(f"  {rows[-1]['verdict']} {'; '.join(rows[-1]['problems'])}", file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(ctx.server.stop)
    return rows, log


def _answers(counts: dict[str, int]) -> str:
    return ", ".join(f"{what} x{n}" for what, n in sorted(counts.items())) or "-"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [
        f"Command: `{meta['command']}`; commit {meta['commit']}; {meta['machine']}; {meta['date']}.",
        "",
        _EXPLAIN.format(workers=WORKERS),
        "",
        "| fault class | N | fault requests got | runners replaced | unrelated requests (total / failed) "
        "| worst unrelated latency (ms) | pool full again (s) | verdict | isolation promised; notes |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        full = "never" if row["pool_full_worst_s"] is None else f"{row['pool_full_worst_s']:.2f}"
        verdict = "ok" if row["verdict"] == "ok" else "**FAIL**: " + "; ".join(row["problems"])
        replaced = "-" if row["runners_replaced"] is None else str(row["runners_replaced"])
        out.append(
            f"| {row['class']} | {row['n']} | {_answers(row['fault_answers'])} | {replaced} "
            f"| {row['unrelated_total']} / {row['unrelated_failed']} | {row['worst_unrelated_ms']:.0f} "
            f"| {full} | {verdict} | {'; '.join(row['notes'])} |"
        )
    return "\n".join(out) + "\n"


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "supervisor", "runner", "ipc")
    # A copy of the tree without .git (to measure one commit while others edit) names it itself.
    commit = os.environ.get("WWS_BENCH_COMMIT") or git("rev-parse", "--short", "HEAD")
    return {
        "command": " ".join(["python", "bench/faults.py", *command_args(sys.argv[1:])]),
        "commit": commit + (" plus uncommitted changes" if dirty else ""),
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": args.rounds,
        "hold_s": args.hold,
        "sustain_s": args.sustain,
    }


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[FaultClass]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per class (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="one round per class, slow clients held 8 s")
    keys = ",".join(c.key for c in CLASSES)
    parser.add_argument("--classes", default="", help=f"comma-separated subset of: {keys}")
    parser.add_argument(
        "--hold", type=float, default=15.0, help="longest a slow client stays (s, default 15)"
    )
    parser.add_argument(
        "--sustain", type=float, default=45.0, help="how long the back-to-back class runs (s, default 45)"
    )
    parser.add_argument("--full-timeout", type=float, default=30.0, help="longest wait for a full pool (s)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "wws-faults-cache")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.quick:
        args.hold, args.sustain = min(args.hold, 8.0), min(args.sustain, 10.0)
    chosen = [k for k in args.classes.split(",") if k]
    unknown = set(chosen) - {c.key for c in CLASSES}
    if unknown:
        parser.error(f"unknown class(es): {', '.join(sorted(unknown))}")
    return args, [c for c in CLASSES if not chosen or c.key in chosen]


def main(argv: list[str] | None = None) -> int:
    args, selected = _parse(argv)
    rows, log = trio.run(run_all, args, selected)
    meta = _meta(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta)
    (args.out_dir / "faults.md").write_text("# Fault table\n\n" + table)
    (args.out_dir / "faults.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table)
    print(f"server log: {log}", file=sys.stderr)
    failed = [row["key"] for row in rows if row["verdict"] != "ok"]
    if failed:
        print(f"classes that failed: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
