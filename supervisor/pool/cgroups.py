"""Each tenant's runners in a cgroup of their own, where cgroup v2 is
delegated to us (systemd ``Delegate=yes``, or a container that gives us our
own writable cgroup with the ``cpu`` and ``memory`` controllers).

Layout under the server's own cgroup ``G``: cgroup v2 lets only leaves hold
processes once controllers are enabled for children, so the server moves
itself (and whatever else is in ``G``) to ``G/supervisor``, enables
``+cpu +memory`` in ``G/cgroup.subtree_control``, and makes
``G/tenant-<name>`` for each tenant with ``cpu.weight``, ``cpu.max`` and
``memory.max`` from its limits. Each runner is moved into its tenant's cgroup
right after it is spawned, before it has loaded any worker.

Where that is not possible (cgroup v1, controllers not delegated, read-only),
:func:`open_cgroups` says why and the server falls back to what it can hold
without them (runner counts, rate and concurrency limits, RSS recycling).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from supervisor.pool.members import Runner, RunnerFactory
from supervisor.pool.runners import start_runner
from supervisor.project.tenants import TenantLimits

log = logging.getLogger(__name__)

_NEEDED = {"cpu", "memory"}
_PERIOD_US = 100_000


class CgroupsUnavailable(Exception):
    """One line: why the tenants cannot have cgroups here."""


def _own_cgroup(proc_cgroup: Path, mountinfo: Path) -> Path:
    relative = None
    for line in proc_cgroup.read_text().splitlines():
        if line.startswith("0::"):
            relative = line[3:]
    if relative is None:
        raise CgroupsUnavailable("this process is not in a cgroup v2 hierarchy")
    mount = None
    for line in mountinfo.read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            mount = fields[0].split()[4]
    if mount is None:
        raise CgroupsUnavailable("no cgroup v2 file system is mounted")
    return Path(mount) / relative.lstrip("/")


class TenantCgroups:
    def __init__(self, group: Path) -> None:
        self.group = group
        self._warned: set[str] = set()

    def configure(self, name: str, limits: TenantLimits) -> None:
        """Create (or update) the tenant's cgroup with its limits.

        Raises:
            OSError: the cgroup cannot be made or written.
        """
        path = self.group / f"tenant-{name}"
        path.mkdir(exist_ok=True)
        (path / "cpu.weight").write_text(f"{limits.cpu_weight or 100}\n")
        quota = "max" if limits.cpu_max is None else str(max(1000, int(limits.cpu_max * _PERIOD_US)))
        (path / "cpu.max").write_text(f"{quota} {_PERIOD_US}\n")
        memory = "max" if limits.memory_max_mb is None else str(limits.memory_max_mb << 20)
        (path / "memory.max").write_text(f"{memory}\n")

    def add(self, name: str, pid: int) -> None:
        try:
            (self.group / f"tenant-{name}" / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            if name not in self._warned:  # once per tenant, not once per runner
                self._warned.add(name)
                log.warning("tenant %s: runner %d stays out of its cgroup: %s", name, pid, exc)

    def remove(self, name: str) -> None:
        """Remove the tenant's cgroup (once its runners are gone)."""
        try:
            (self.group / f"tenant-{name}").rmdir()
        except OSError as exc:
            log.info("tenant %s: its cgroup is left behind: %s", name, exc.strerror or exc)

    def runner_factory(self, name: str) -> RunnerFactory:
        """Runners for ``name``'s pool, each moved into the tenant's cgroup."""

        async def start(nursery: trio.Nursery) -> Runner:
            handle = await start_runner(nursery)
            self.add(name, handle.pid)
            return handle

        return start


def find_cgroup(
    proc_cgroup: Path = Path("/proc/self/cgroup"), mountinfo: Path = Path("/proc/self/mountinfo")
) -> Path:
    """This process's cgroup v2 folder, if tenants can have cgroups under it
    (nothing is written).

    Raises:
        CgroupsUnavailable: cgroup v2 is not there, not delegated, or lacks
            the cpu and memory controllers.
    """
    try:
        group = _own_cgroup(proc_cgroup, mountinfo)
        controllers = set((group / "cgroup.controllers").read_text().split())
    except OSError as exc:
        raise CgroupsUnavailable(f"cannot read the cgroup v2 hierarchy: {exc.strerror or exc}") from None
    missing = _NEEDED - controllers
    if missing:
        raise CgroupsUnavailable(
            f"the cgroup {group} is not given the {' and '.join(sorted(missing))} controller(s) "
            "(systemd: Delegate=yes)"
        )
    if not os.access(group / "cgroup.subtree_control", os.W_OK) or not os.access(group, os.W_OK):
        raise CgroupsUnavailable(f"the cgroup {group} is not writable by this user (systemd: Delegate=yes)")
    return group


def open_cgroups(
    proc_cgroup: Path = Path("/proc/self/cgroup"), mountinfo: Path = Path("/proc/self/mountinfo")
) -> TenantCgroups:
    """Set up the server's cgroup for tenant children (see the module docstring).

    Raises:
        CgroupsUnavailable: as :func:`find_cgroup`, or the set-up failed.
    """
    group = find_cgroup(proc_cgroup, mountinfo)
    try:
        enabled = set((group / "cgroup.subtree_control").read_text().split())
        if not enabled >= _NEEDED:
            leaf = group / "supervisor"
            leaf.mkdir(exist_ok=True)
            for pid in (group / "cgroup.procs").read_text().split():
                (leaf / "cgroup.procs").write_text(f"{pid}\n")
            (group / "cgroup.subtree_control").write_text("+cpu +memory\n")
    except OSError as exc:
        raise CgroupsUnavailable(f"cannot enable cpu and memory for {group}'s children: {exc}") from None
    return TenantCgroups(group)
