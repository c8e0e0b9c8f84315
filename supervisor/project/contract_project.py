"""Serving WAGI and serverless-wasm workers: a config file given instead of a
project folder, and ``protocol = "wagi"`` workers inside a wws folder.

Both become the same objects a wws folder does (worker files, a route table,
per-worker settings, worker specs), so the pool, the runners and the HTTP
front treat them like any other worker. Modules are checked at startup in a
probe process (``runner/wagi_probe.py``) that also runs WAGI's ``_routes``
exports, so every error names the config line it comes from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipc.messages import HttpPolicy, Mount, WorkerSpec
from supervisor.config import Limits, ServerConfig
from supervisor.project.config_file import ConfigFileError, config_kind, read_toml
from supervisor.project.contract_routes import (
    ContractRoute,
    ContractRoutes,
    join_route,
    parse_routes_output,
    wagi_route,
)
from supervisor.project.discovery import WorkerFile
from supervisor.project.routes import Route, RouteTable, route_path_for
from supervisor.project.serverless_config import load_serverless
from supervisor.project.wagi_config import load_wagi, parse_env
from supervisor.project.worker_config import WorkerConfig

log = logging.getLogger(__name__)

# Every method: WAGI's outbound HTTP allow-list is about hosts only.
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# Compiling can be slow for big modules; the probe gets this much plus each
# module's request timeout.
_PROBE_BASE_TIMEOUT_S = 120.0

Served = tuple[list[WorkerFile], RouteTable, dict[str, WorkerConfig], list[WorkerSpec]]


@dataclasses.dataclass(frozen=True, slots=True)
class Probed:
    routes: str | None  # what _routes printed
    callable: tuple[str, ...]  # exports a sub-route may name


def load_config_file(path: Path, config: ServerConfig) -> Served:
    """The workers, routes, settings and specs of a WAGI ``modules.toml`` or a
    serverless-wasm config.

    Raises:
        ConfigFileError: an unreadable or invalid file, a module that is
            missing or does not fit its contract, a broken ``_routes``.
    """
    document, text = read_toml(path)
    kind = config_kind(document)
    if kind == "wagi":
        return _wagi(path, text, document, config)
    if kind == "serverless":
        return _serverless(path, text, document, config)
    raise ConfigFileError(
        f"{path}: neither a WAGI modules.toml ([[module]] tables) "
        "nor a serverless-wasm config ([[applications]] tables)"
    )


def _unique_ids(names: Sequence[str]) -> list[str]:
    # A module may serve several routes, each with its own settings: one
    # worker per entry, "#n" (its entry number) telling repeats apart.
    seen: set[str] = set()
    ids = []
    for number, name in enumerate(names, 1):
        ids.append(name if name not in seen else f"{name}#{number}")
        seen.add(name)
    return ids


def _wagi(path: Path, text: str, document: dict[str, Any], config: ServerConfig) -> Served:
    modules, warnings = load_wagi(path, text, document)
    for warning in warnings:
        log.warning("%s", warning)
    env = parse_env(config.env, config.env_files)
    probed = probe(
        [(m.module, "wagi", [m.entrypoint]) for m in modules], config.limits, [m.where for m in modules]
    )
    workers, entries, specs, settings = [], [], [], {}
    for module, found, worker_id in zip(
        modules, probed, _unique_ids([m.shown for m in modules]), strict=True
    ):
        worker = WorkerFile(worker_id, module.module, "wagi")
        subroutes = _subroutes(module.where, found, module.route, worker)
        entries += [*subroutes, wagi_route(worker, module.route, module.entrypoint)]
        entrypoints = list(dict.fromkeys([module.entrypoint, *(e.entrypoint for e in subroutes)]))
        specs.append(
            WorkerSpec(
                worker_id,
                str(module.module),
                "wagi",
                env,
                [Mount(str(host), guest, True) for guest, host in module.volumes],
                HttpPolicy(list(module.allowed_hosts), _ALL_METHODS, True),
                entrypoints=entrypoints,
                argv=module.argv,
                max_outbound=module.max_outbound,
            )
        )
        workers.append(worker)
        settings[worker_id] = WorkerConfig(name=worker_id, limits=config.limits)
    return workers, ContractRoutes(entries, healthz=True), settings, specs


def _subroutes(where: str, found: Probed, route: str, worker: WorkerFile) -> list[ContractRoute]:
    """The module's ``_routes`` as routes, in lookup order: WAGI puts them,
    reversed, before the module's own route (the last line printed wins).

    Raises:
        ConfigFileError: unusable output, or an entrypoint that is not an
            export without parameters.
    """
    if found.routes is None:
        return []
    try:
        pairs = parse_routes_output(found.routes)
    except ValueError as exc:
        raise ConfigFileError(f"{where}: module {worker.relative}: {exc}") from None
    for _, entrypoint in pairs:
        if entrypoint not in found.callable:
            raise ConfigFileError(
                f"{where}: module {worker.relative}: _routes names the entrypoint {entrypoint!r}, "
                "which is not an export without parameters and results"
            )
    return [
        wagi_route(worker, join_route(route, pattern), entrypoint) for pattern, entrypoint in reversed(pairs)
    ]


def _serverless(path: Path, text: str, document: dict[str, Any], config: ServerConfig) -> Served:
    applications, warnings = load_serverless(path, text, document)
    for warning in warnings:
        log.warning("%s", warning)
    probe(
        [(app.module, "handle", [app.function]) for app in applications],
        config.limits,
        [app.where for app in applications],
    )
    workers, entries, specs, settings = [], [], [], {}
    names = _unique_ids([f"{app.shown}:{app.function}" for app in applications])
    for app, worker_id in zip(applications, names, strict=True):
        worker = WorkerFile(worker_id, app.module, "handle")
        route = Route.build(app.url_path, worker)
        entries.append(ContractRoute(route, app.url_path, app.function, method=app.method, cgi=False))
        specs.append(
            WorkerSpec(
                worker_id,
                str(app.module),
                "handle",
                dict(app.env),
                [],
                HttpPolicy([], [], False),
                entrypoints=[app.function],
                tcp_allowed=list(app.tcp_allowed),
            )
        )
        workers.append(worker)
        settings[worker_id] = WorkerConfig(name=worker_id, limits=config.limits)
    return workers, ContractRoutes(entries), settings, specs


def wagi_in_folder(
    workers: list[WorkerFile], routes: RouteTable, settings: dict[str, WorkerConfig], config: ServerConfig
) -> tuple[list[WorkerFile], RouteTable]:
    """A wws folder's workers and routes with its ``protocol = "wagi"``
    workers served as WAGI modules on their file routes (exact), their
    ``_routes`` sub-routes under them; unchanged when there are none.

    Raises:
        ConfigFileError: a WAGI worker that is not wasm, whose route has
            ``[param]`` segments, or whose module or ``_routes`` is broken.
    """
    chosen = [w for w in workers if settings[w.relative].protocol == "wagi"]
    if not chosen:
        return workers, routes
    for worker in chosen:
        if worker.kind == "js" or "[" in worker.relative:
            raise ConfigFileError(
                f'{worker.absolute.with_suffix(".toml")}: protocol = "wagi" needs a .wasm or .wat '
                "file whose route has no [param] segments"
            )
    where = [str(w.absolute.with_suffix(".toml")) for w in chosen]
    probed = probe([(w.absolute, "wagi", ["_start"]) for w in chosen], config.limits, where)
    entries: list[ContractRoute] = []
    for worker, found, toml in zip(chosen, probed, where, strict=True):
        wagi = dataclasses.replace(worker, kind="wagi")
        base = route_path_for(worker.relative, config.prefix)
        entries += [*_subroutes(toml, found, base, wagi), wagi_route(wagi, base, "_start")]
    others = [w for w in workers if w not in chosen]
    served = [dataclasses.replace(w, kind="wagi") if w in chosen else w for w in workers]
    return served, ContractRoutes(entries, others, config.prefix, raw_paths=False)


def probe(modules: list[tuple[Path, str, list[str]]], limits: Limits, where: list[str]) -> list[Probed]:
    """Check the modules (and run ``_routes``) in ``python -m runner.wagi_probe``.

    Raises:
        ConfigFileError: a module failed (named by its ``where``), or the
            probe process itself did.
    """
    request = {
        "fuel": limits.fuel,
        "memory_bytes": limits.memory_bytes,
        "timeout_ms": limits.timeout_ms,
        "modules": [{"path": str(p), "kind": kind, "entrypoints": eps} for p, kind, eps in modules],
    }
    timeout = _PROBE_BASE_TIMEOUT_S + len(modules) * limits.timeout_ms / 1000
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-m", "runner.wagi_probe"],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        results = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise ConfigFileError(f"cannot check the modules: {exc}") from None
    if not isinstance(results, list) or len(results) != len(modules):
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigFileError(f"cannot check the modules: {lines[-1] if lines else 'the probe failed'}")
    probed = []
    for (path, _, _), found, place in zip(modules, results, where, strict=True):
        if found["error"]:
            raise ConfigFileError(f"{place}: module {path}: {found['error']}")
        probed.append(Probed(found["routes"], tuple(found["callable"])))
    return probed
