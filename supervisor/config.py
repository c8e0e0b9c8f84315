"""The supervisor's typed configuration: the single source of truth, built from
the command line, from which hypercorn's and the runners' settings are derived."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ipc.messages import EngineSettings, default_engine_settings


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-request limits applied to every worker."""

    fuel: int = 2_000_000_000  # wasm instructions, roughly; about a second of work
    memory_mb: int = 128
    timeout_ms: int = 5_000

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb << 20


@dataclasses.dataclass(frozen=True, slots=True)
class PoolSettings:
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    # Requests waiting for a free runner before new ones get 503.
    queue_size: int = 256
    queue_timeout_s: float = 10.0
    # Extra time the supervisor gives a runner past the request's own timeout
    # before it concludes the runner is stuck and kills it.
    kill_grace_ms: int = 1_000
    max_requests: int = 10_000
    max_requests_jitter: int = 1_000
    max_runner_rss_mb: int = 256
    boot_timeout_s: float = 60.0
    max_output_bytes: int = 16 << 20
    epoch_tick_ms: int = 10
    # A request that has used this much of its runner's CPU gets the lowest
    # CPU priority (supervisor/pool/demotion.py); 0 turns demotion off.
    demote_after_ms: int = 50
    # The runners' memory layout, planned at startup (runner.engines.engine.plan_engine).
    engine: EngineSettings = dataclasses.field(default_factory=default_engine_settings)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    project: Path
    host: str = "127.0.0.1"
    port: int = 8080
    prefix: str = ""
    ignore: tuple[str, ...] = ()
    limits: Limits = dataclasses.field(default_factory=Limits)
    pool: PoolSettings = dataclasses.field(default_factory=PoolSettings)
    max_body_bytes: int = 256 << 10
    # A client must finish sending its body within this, or get 408.
    body_timeout_s: float = 30.0
    # Open client connections; beyond it new clients get a short 503.
    max_connections: int = dataclasses.field(default_factory=lambda: default_max_connections())
    graceful_timeout_s: float = 10.0
    # Front-end processes; None: one per core, each with two runners or more,
    # and one when workers use the in-memory KV store.
    frontends: int | None = None
    cache_dir: Path = dataclasses.field(default_factory=lambda: default_cache_dir())
    # Where `runtimes install` keeps the Python and Ruby interpreters.
    runtimes_dir: Path = dataclasses.field(default_factory=lambda: default_runtimes_dir())
    # Least recently used cache entries go past this (runner.engines.cache_hygiene).
    cache_max_mb: int = 512
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = True
    # TLS (and HTTP/2 by ALPN) when a certificate is given.
    certfile: Path | None = None
    keyfile: Path | None = None
    ca_certs: Path | None = None
    # --cors: origins allowed to call workers from a browser.
    cors_origins: tuple[str, ...] = ()
    watch: bool = False
    kv_url: str = "memory://"
    # WAGI's guest environment: --env NAME=VALUE pairs over --env-file files.
    env: tuple[str, ...] = ()
    env_files: tuple[Path, ...] = ()
    # The admin listener (supervisor/ops/admin.py): --admin HOST:PORT, or --enable-panel's default.
    admin: tuple[str, int] | None = None
    admin_token: str | None = None
    enable_panel: bool = False
    # --tenants FILE: several projects, each a tenant (supervisor/project/tenants.py); PATH is then unused.
    tenants: Path | None = None


def default_runtimes_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "wws-supervisor" / "runtimes"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wws-supervisor"


# Descriptors kept back from connections: runner pipes (three per runner, plus
# a pidfd), the KV store, the module cache, log files.
_RESERVED_FDS = 64
_FDS_PER_RUNNER = 4
_MAX_DEFAULT_CONNECTIONS = 4096


def default_max_connections(workers: int | None = None) -> int:
    """As many connections as the descriptor limit leaves room for."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    runners = workers if workers is not None else (os.cpu_count() or 1)
    room = soft - _RESERVED_FDS - _FDS_PER_RUNNER * (runners + 1)
    return max(8, min(_MAX_DEFAULT_CONNECTIONS, room))
