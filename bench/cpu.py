"""CPU per request of the front end and of the runner, pinned, and where it goes.

    .venv/bin/python bench/cpu.py [--route /hello] [--seconds 8] [--rounds 3] [--profile]

Our server with one front end and one runner (``--frontends 1 -w 1``): the
front end alone on CPU 0, the runner and wrk on CPU 1, so neither side's
figure is inflated by the other waiting for a core. The bare hypercorn app
(bench/limit_app.py) is measured the same way, alone on CPU 0. CPU per request
is the process's user+system CPU time over a wrk run divided by the requests
served. With ``--profile``, py-spy (the ``bench`` extra) then samples each
side for one more run and the functions with the most own time are printed,
as a share of the samples.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Load, server, wrk
from bench.run import _bench_project, _supervisor

FRONT_CPU, RUNNER_CPU = 0, 1


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _pinned_wrk(url: str, seconds: int) -> Load:
    # wrk shares the runner's core; the harness runs wrk, so pin this process.
    me = psutil.Process()
    before = me.cpu_affinity()
    me.cpu_affinity([RUNNER_CPU])
    try:
        return wrk(url, seconds)
    finally:
        me.cpu_affinity(before)


def _measure(label: str, url: str, procs: dict[str, psutil.Process], seconds: int) -> dict[str, float]:
    start = {name: _cpu(proc) for name, proc in procs.items()}
    load = _pinned_wrk(url, seconds)
    served = load.rps * seconds
    out = {f"{label} req/s": load.rps}
    for name, proc in procs.items():
        out[f"{name} us/request"] = (_cpu(proc) - start[name]) / served * 1e6 if served else 0.0
    return out


# Leaf frames that mean "waiting": the event loop's poll, the runner's
# blocking read of the next request, threads parked. Not CPU.
_IDLE = ("epoll_wait", "read (libc", "futex", "nanosleep", "select", "poll (libc")


def _top(folded: Path, count: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw (folded) output, busy samples only: the functions
    with the most own time, and the source files with the most inclusive
    time, each as a share of the busy samples."""
    own: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or any(mark in frames[-1] for mark in _IDLE):
            continue
        n = int(samples)
        own[frames[-1]] += n
        for name in {_file(frame) for frame in frames}:
            files[name] += n
        total += n
    if not total:
        return [], []
    return (
        [(frame, n / total) for frame, n in own.most_common(count)],
        [(name, n / total) for name, n in files.most_common(count)],
    )


def _file(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "path/to/file.py"
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.rpartition(":")[0] or where


def _profile(url: str, procs: dict[str, psutil.Process], seconds: int, scratch: Path) -> None:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        print("py-spy not installed (pip install -e '.[bench]'): no profile")
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for name, proc in procs.items():
        out = scratch / f"{name}.folded"
        options = ["--native", "--idle", "-r", "200", "-d", str(seconds + 1), "-f", "raw", "-o", str(out)]
        sampler = subprocess.Popen(
            [spy, "record", *options, "-p", str(proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _pinned_wrk(url, seconds)
        sampler.wait()
        own, files = _top(out, 15)
        print(f"\n{name}: most own time (py-spy --native, share of busy samples)")
        for frame, share in own:
            print(f"  {share:6.1%}  {frame}")
        print(f"{name}: most inclusive time by source file (share of busy samples)")
        for where, share in files:
            print(f"  {share:6.1%}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--route", default="/hello", help="/hello (compiled), /js or /echo")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="then sample each side with py-spy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        project = _bench_project(root)
        # No planned recycling during the measurement: the runner's pid must stay.
        command = _supervisor(
            project, root / "cache", "--frontends", "1", "-w", "1", "--max-requests", "100000000"
        )
        limit_cmd = [sys.executable, str(Path(__file__).parent / "limit_app.py"), "0"]
        with server(limit_cmd, "listening on") as limit, server(command, "Start serving") as ours:
            psutil.Process(limit.process.pid).cpu_affinity([FRONT_CPU])
            roles = dict(ours.roles())
            front, runner = roles["main"], roles["runner0"]
            front.cpu_affinity([FRONT_CPU])
            runner.cpu_affinity([RUNNER_CPU])
            ours_url = f"http://127.0.0.1:{ours.port}{args.route}"
            limit_url = f"http://127.0.0.1:{limit.port}/"
            for url in (ours_url, limit_url):
                wrk(url, 1)  # warm up
            for index in range(args.rounds):
                mine = _measure("ours", ours_url, {"front end": front, "runner": runner}, args.seconds)
                limit_proc = psutil.Process(limit.process.pid)
                bare = _measure("limit", limit_url, {"limit": limit_proc}, args.seconds)
                cells = ", ".join(f"{k} {v:.0f}" for k, v in {**mine, **bare}.items())
                print(f"round {index + 1}, {args.route}: {cells}", flush=True)
            if args.profile:
                _profile(ours_url, {"front end": front, "runner": runner}, args.seconds, root)


if __name__ == "__main__":
    main()
