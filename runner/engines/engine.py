"""The wasm engine, and how its linear memories are allocated.

wasmtime reserves address space for every linear memory up front. The fastest
layout, the pooling allocator with 4 GiB slots and a 32 MiB guard, needs no
bounds checks (the guard pages catch every out-of-bounds access) but reserves
about 4 GiB of address space per slot. A hardened host (``ulimit -v``,
systemd's ``LimitAS=``) or a small board cannot give that, and wasmtime's C API
panics when the reservation fails. So the supervisor plans the layout once,
from the per-request memory limit and what the machine allows, and every runner
(the compile step included) builds the very same engine from that plan:

* ``pooled``: pooling allocator, 4 GiB slots, no bounds checks. Chosen when
  at least two slots fit.
* ``pooled-bounded``: pooling allocator with slots the size of the largest
  memory limit (rounded up to 64 MiB): compiled code checks bounds.
* ``on-demand``: each memory mapped when instantiated, with a small
  reservation that grows (and may move) as the guest grows it; bounds-checked.
* nothing fits: :class:`EngineDoesNotFit`, one line naming the limit and the fix.

Planning reads only ``/proc`` and ``getrlimit`` (the supervisor does not import
wasmtime). A runner also checks, just before creating the engine, that the
reservation still fits in its own address space, so a failure is one sentence
instead of a Rust panic.

Compiled modules depend on the layout (bounds checks are compiled in), so
:func:`profile` is part of every cache key.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import resource
from typing import TYPE_CHECKING

from ipc.messages import EngineSettings

if TYPE_CHECKING:
    import wasmtime

MiB = 1 << 20
GiB = 1 << 30
# What wasmtime uses on 64-bit hosts by default: with these, loads and stores
# need no bounds checks.
_FULL_RESERVATION = 4 * GiB
_FULL_GUARD = 32 * MiB
# Bounds-checked layouts keep a small guard: accesses with a constant offset
# below it still need only one check.
_SMALL_GUARD = 2 * MiB
_BOUNDED_STEP = 64 * MiB
# A runner runs one request at a time (one memory), plus one while it
# snapshots a script at load. More slots keep more workers' memories warm.
MIN_SLOTS = 2
MAX_SLOTS = 8
# Core instances and tables are cheap (a few hundred KiB each); a JavaScript
# request uses two instances.
_INSTANCE_SLOTS = 8
# Pages kept mapped between instances: a restored JavaScript snapshot then
# starts without page faults (its first ~1 MiB is reset in place, not unmapped).
_KEEP_RESIDENT = 1 * MiB
# On demand, a memory reserves this much past its size to grow in place.
_GROWTH_RESERVATION = 16 * MiB
# Address space a runner needs besides its linear memories: the interpreter,
# wasmtime's code, compiled modules, thread stacks and malloc arenas, and
# compiling QuickJS in the compile step. Measured at most 271 MiB (VmPeak minus
# the pool) on x86_64 with 2 cores; each core adds threads (wasmtime's compile
# and WASI threads), each with a stack and possibly a 64 MiB malloc arena.
RUNNER_BASELINE = 256 * MiB
_PER_CPU = 64 * MiB


class EngineDoesNotFit(Exception):
    """No memory layout fits the machine's limits; the message is one line
    naming the limit and what to change."""


@dataclasses.dataclass(frozen=True, slots=True)
class MachineLimits:
    """What bounds a runner's memory, as read from the kernel."""

    address_space: int | None  # RLIMIT_AS soft limit in bytes; None when unlimited
    overcommit: int | None  # vm.overcommit_memory: 0 heuristic, 1 always, 2 strict
    commit_limit: int | None  # CommitLimit, what strict overcommit allows in all
    physical: int | None  # MemTotal
    cpus: int

    @classmethod
    def read(cls) -> MachineLimits:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        meminfo = _meminfo()
        try:
            with open("/proc/sys/vm/overcommit_memory") as f:
                overcommit: int | None = int(f.read().strip())
        except (OSError, ValueError):
            overcommit = None
        return cls(
            address_space=None if soft == resource.RLIM_INFINITY else soft,
            overcommit=overcommit,
            commit_limit=meminfo.get("CommitLimit"),
            physical=meminfo.get("MemTotal"),
            cpus=os.cpu_count() or 1,
        )


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


@dataclasses.dataclass(frozen=True, slots=True)
class EnginePlan:
    settings: EngineSettings
    summary: str  # the startup line, without its icon
    warnings: tuple[str, ...]


def size(n: int) -> str:
    """``n`` bytes for people: 128 MiB, 3.8 GiB."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB".replace(".0 ", " ")
    return f"{n // MiB} MiB" if n >= MiB else f"{n} bytes"


def pool_reservation(settings: EngineSettings) -> int:
    """Address space the pooling allocator reserves for memories (one guard
    before each slot and one after the last)."""
    if settings.pool_slots == 0:
        return 0
    per_slot = settings.memory_reservation + settings.memory_guard_size
    return settings.pool_slots * per_slot + settings.memory_guard_size


def _on_demand_need(max_memory: int) -> int:
    # A memory that outgrows its reservation moves: old and new both mapped.
    return 2 * (max_memory + _GROWTH_RESERVATION + _SMALL_GUARD)


def plan_engine(
    max_memory_bytes: int,
    runners: int,
    machine: MachineLimits | None = None,
    *,
    reserve_fits: bool = True,
) -> EnginePlan:
    """Choose the memory layout for every runner.

    Args:
        max_memory_bytes: the largest per-request memory limit of any worker.
        runners: how many runners will run at once (for the memory warnings).
        machine: the limits to plan for; read from this process when None.
        reserve_fits: also try to reserve a pool in this process (it catches
            address-space limits other than RLIMIT_AS); off in unit tests.

    Raises:
        EngineDoesNotFit: even on-demand memories cannot fit.
    """
    machine = machine or MachineLimits.read()
    baseline = RUNNER_BASELINE + _PER_CPU * machine.cpus
    room = None if machine.address_space is None else machine.address_space - baseline
    bounded = -(-max_memory_bytes // _BOUNDED_STEP) * _BOUNDED_STEP
    warnings = _memory_warnings(max_memory_bytes, runners, machine)
    limit_text = (
        "address space unlimited" if room is None else f"RLIMIT_AS {size(machine.address_space or 0)}"
    )

    if max_memory_bytes <= _FULL_RESERVATION:
        settings = _pooled(room, _FULL_RESERVATION, _FULL_GUARD, "pooled", reserve_fits)
        if settings is not None:
            slots = f"{settings.pool_slots} slots of {size(_FULL_RESERVATION)}"
            summary = f"pooled, {slots}, no bounds checks ({limit_text})"
            return EnginePlan(settings, summary, warnings)
    settings = _pooled(room, bounded, _SMALL_GUARD, "pooled-bounded", reserve_fits)
    if settings is not None:
        summary = (
            f"pooled, bounds-checked, {settings.pool_slots} slots of {size(bounded)} "
            f"({limit_text} has no room for 4 GiB slots)"
        )
        return EnginePlan(settings, summary, warnings)
    need = _on_demand_need(max_memory_bytes)
    if room is None or need <= room:
        settings = EngineSettings("on-demand", 0, _SMALL_GUARD, 0, max_memory_bytes)
        summary = f"on demand, bounds-checked ({limit_text} has no room for a pool of {size(bounded)} slots)"
        return EnginePlan(settings, summary, warnings)
    assert machine.address_space is not None
    largest = max(0, (machine.address_space - baseline) // 2 - _GROWTH_RESERVATION - _SMALL_GUARD) // MiB
    fix = f"lower --memory-mb to {largest} or less" if largest > 0 else "raise the limit"
    raise EngineDoesNotFit(
        f"the address-space limit (RLIMIT_AS: ulimit -v, systemd LimitAS=) is {size(machine.address_space)}, "
        f"but a runner needs about {size(baseline + need)} for {size(max_memory_bytes)} of wasm memory: "
        f"raise it to at least {(baseline + need + MiB - 1) // 1024} KiB (ulimit -v), or {fix}"
    )


def _pooled(
    room: int | None, reservation: int, guard: int, mode: str, reserve_fits: bool
) -> EngineSettings | None:
    per_slot = reservation + guard
    slots = MAX_SLOTS if room is None else min(MAX_SLOTS, (room - guard) // per_slot)
    settings = EngineSettings(mode, reservation, guard, slots, reservation)
    while slots >= MIN_SLOTS:
        settings = EngineSettings(mode, reservation, guard, slots, reservation)
        if not reserve_fits or can_reserve(pool_reservation(settings)):
            return settings
        slots //= 2
    return None


def _memory_warnings(max_memory: int, runners: int, machine: MachineLimits) -> tuple[str, ...]:
    # Linear memory is committed only as guests touch it, so these are
    # warnings: most requests use a small part of their limit.
    worst = runners * max_memory
    warnings = []
    if machine.overcommit == 2 and machine.commit_limit is not None and worst > machine.commit_limit // 2:
        warnings.append(
            f"strict overcommit (vm.overcommit_memory=2, CommitLimit {size(machine.commit_limit)}): "
            f"{runners} runners at --memory-mb {max_memory // MiB} could exhaust it; "
            "requests would then fail with memory-limit. Lower --memory-mb or --workers."
        )
    elif machine.physical is not None and worst > machine.physical // 2:
        warnings.append(
            f"{runners} runners at --memory-mb {max_memory // MiB} could use {size(worst)} "
            f"of {size(machine.physical)} RAM; lower --memory-mb or --workers on a small machine."
        )
    return tuple(warnings)


def can_reserve(nbytes: int) -> bool:
    """Whether ``nbytes`` of address space can be reserved right now (mapped
    inaccessible, charged to nothing, then released)."""
    if nbytes <= 0:
        return True
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    try:
        probe = mmap.mmap(-1, nbytes, flags=flags, prot=0)
    except (OSError, OverflowError, ValueError):
        return False
    probe.close()
    return True


def profile(settings: EngineSettings) -> str:
    """The part of a cache key that depends on the layout: what compiled
    code assumes about memories (the slot count does not matter)."""
    bounds = "unchecked" if settings.mode == "pooled" else "checked"
    return f"{bounds}/r{settings.memory_reservation}/g{settings.memory_guard_size}"


# Address space a runner needs beyond the pool for its first instances, when
# checking the pool still fits just before the engine is created.
_CHECK_MARGIN = 128 * MiB


def make_engine(settings: EngineSettings) -> wasmtime.Engine:
    """The engine every runner uses: fuel, epochs, and the planned layout.

    Raises:
        EngineDoesNotFit: the pool cannot be reserved in this process (checked
            first: wasmtime would panic instead).
    """
    import wasmtime

    need = pool_reservation(settings)
    if need and not can_reserve(need + _CHECK_MARGIN):
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else size(soft)
        raise EngineDoesNotFit(
            f"cannot reserve {size(need)} of address space for {settings.pool_slots} memory slots "
            f"(RLIMIT_AS: {limit}; ulimit -v, systemd LimitAS=): raise the limit or lower --memory-mb"
        )
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    config.memory_guard_size = settings.memory_guard_size
    if settings.mode == "on-demand":
        config.memory_reservation = settings.memory_reservation
        config.memory_reservation_for_growth = _GROWTH_RESERVATION
        config.memory_may_move = True
    else:
        config.memory_reservation = settings.memory_reservation
        _use_pooling_allocator(config, settings)
    return wasmtime.Engine(config)


def _use_pooling_allocator(config: wasmtime.Config, settings: EngineSettings) -> None:
    # Config has no pooling setter, but the C API does.
    from wasmtime import _ffi as ffi

    pooling = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pooling, settings.pool_slots)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pooling, _INSTANCE_SLOTS)
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pooling, _INSTANCE_SLOTS)
        # No async stacks are ever used; wasmtime's default pool of 1000 of
        # them would reserve 2 GiB for nothing.
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pooling, 0)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pooling, settings.max_memory_bytes)
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pooling, _KEEP_RESIDENT)
        ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pooling, 64 << 10)
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pooling)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pooling)
