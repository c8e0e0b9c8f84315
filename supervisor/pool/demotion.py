"""Long requests lose their CPU priority, so a runaway worker (or a tenant's
heavy route) costs the short requests beside it as little as possible.

Fuel and the deadline bound how long one request may burn a core; they do
not stop it from taking that core from everyone else meanwhile. On a small
machine one endless loop holds one of two cores for its whole second, and
every other route's throughput halves. So a request that has used more than
``after_s`` of its runner's CPU has the runner's threads reniced to 19: the
kernel then gives it a core only when nothing else wants one (about 1.5 % of
a contended core), and it still gets every idle cycle.

Linux lets an unprivileged process lower a priority but raise it back only
within RLIMIT_NICE (0 by default, which forbids it; the systemd unit we
write sets ``LimitNICE=20``, which allows nice values down to 0 and no
lower). A demoted runner whose priority cannot be restored is replaced after
its request (see ``Pool.submit``).

The CPU used is read from ``/proc/PID/stat`` by one task per pool, and only
for requests still running at its periodic look: short requests cost
nothing beyond a few dictionary operations. A worker whose request was
demoted is remembered: its next requests start at the lowest priority (so a
flood of runaways never gets a first slice at full priority), until one of
them is short again.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger(__name__)

DEMOTED_NICE = 19
# Workers remembered as heavy, per pool.
_MAX_HEAVY = 1024
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` (every thread), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after its last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def set_nice(pid: int, nice: int) -> bool:
    """Set the nice value of every thread of ``pid`` (nice is per thread on
    Linux). Returns False when the kernel refuses (raising a priority back
    without RLIMIT_NICE); a process that is gone counts as done."""
    try:
        threads = [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return True
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue
        except OSError:  # EPERM, EACCES: not allowed here
            return False
    return True


class _Watched:
    __slots__ = ("baseline", "demoted", "pid", "started", "worker")

    def __init__(self, pid: int, started: float, worker: str) -> None:
        self.pid = pid
        self.started = started
        self.worker = worker
        # CPU the runner had used by the first look, less the request's age
        # then (at most half ``after_s``): as if it had burnt a core from its
        # start, so a request that was waiting instead still needs half
        # ``after_s`` of CPU of its own before it is demoted.
        self.baseline: float | None = None
        self.demoted = False


class Demoter:
    """Watches the requests in flight in one pool and demotes those that
    have used more than ``after_s`` of CPU; ``after_s`` of 0 turns it off."""

    def __init__(self, after_s: float, on_demote: Callable[[int, str], None] | None = None) -> None:
        self.after_s = after_s
        self._on_demote = on_demote
        self._watched: dict[object, _Watched] = {}
        self._busy = trio.Event()
        self._told_why = False
        self.demotions = 0
        # Workers whose last long request was demoted, oldest first (bounded).
        self._heavy: dict[str, None] = {}

    def started(self, key: object, pid: int, worker: str) -> None:
        """A request of ``worker`` is now running in runner ``pid``. A worker
        whose last long request was demoted starts at the lowest priority."""
        if self.after_s <= 0:
            return
        watched = _Watched(pid, trio.current_time(), worker)
        self._watched[key] = watched
        if worker in self._heavy and self._demote(watched):
            log.debug("runner %d: %s ran long before; it starts at the lowest priority", pid, worker)
        if not self._busy.is_set():
            self._busy.set()

    def finished(self, key: object) -> bool:
        """Forget ``key``; returns True when its runner was demoted and could
        not be given its priority back (the caller replaces it)."""
        watched = self._watched.pop(key, None)
        if watched is None:
            return False
        if trio.current_time() - watched.started < self.after_s:
            # Short this time (its CPU was at most its wall time): its next
            # request starts at the normal priority again.
            self._heavy.pop(watched.worker, None)
        if not watched.demoted:
            return False
        if set_nice(watched.pid, 0):
            return False
        if not self._told_why:
            self._told_why = True
            log.warning(
                "runners demoted by a long request are replaced afterwards: this process may not raise a "
                "priority back (RLIMIT_NICE is below 20: systemd's LimitNICE=20, or nice 0 in limits.conf). "
                "Each replacement costs a runner start"
            )
        return True

    async def run(self) -> None:
        """Look at the requests in flight every half ``after_s``, while there are any."""
        if self.after_s <= 0:
            return
        while True:
            if not self._watched:
                self._busy = trio.Event()
                await self._busy.wait()
            await trio.sleep(self.after_s / 2)
            # Requests this young are almost always done before the next
            # look: they cost no /proc read.
            young = trio.current_time() - self.after_s / 4
            for watched in list(self._watched.values()):
                if watched.started < young:
                    self._look(watched)

    def _look(self, watched: _Watched) -> None:
        if watched.demoted:
            return
        used = cpu_seconds(watched.pid)
        if used is None:
            return
        if watched.baseline is None:
            # Reading the CPU at dispatch would cost every request a /proc
            # read; the first look comes up to half ``after_s`` later.
            watched.baseline = used - min(trio.current_time() - watched.started, self.after_s / 2)
        if used - watched.baseline >= self.after_s and self._demote(watched):
            log.info(
                "runner %d: its request has used %.0f ms of CPU; it runs at the lowest priority now",
                watched.pid,
                self.after_s * 1e3,
            )

    def _demote(self, watched: _Watched) -> bool:
        """Lower the runner's priority; remember its worker as heavy (most
        recent last). False when the kernel refuses."""
        watched.demoted = set_nice(watched.pid, DEMOTED_NICE)
        if not watched.demoted:
            # Refused (a seccomp filter without setpriority): it keeps its
            # priority, is not asked again, and its runner is not replaced.
            watched.baseline = math.inf
            return False
        self._heavy.pop(watched.worker, None)
        self._heavy[watched.worker] = None
        while len(self._heavy) > _MAX_HEAVY:
            del self._heavy[next(iter(self._heavy))]
        self.demotions += 1
        if self._on_demote is not None:
            self._on_demote(watched.pid, watched.worker)
        return True
