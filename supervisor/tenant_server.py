"""Startup with ``--tenants``: read the tenants file, set up cgroups where
they are delegated, bind the port, load and compile every tenant's project
(a tenant that fails is reported and left down; the others start), then
serve them all from one front-end process (``supervisor/front/tenant_front.py``).

One front end only: the tenants' rate and concurrency quotas are counted in
that process, and splitting them over several would let each be exceeded
N times. ``--frontends`` above 1 is refused with ``--tenants``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TextIO

import trio

from supervisor.config import ServerConfig
from supervisor.front.frontend import ReloadSource
from supervisor.front.kv import KvUnavailable, open_kv
from supervisor.front.tenant_front import TenantFrontEnd, prepare_tenant
from supervisor.ops.admin import open_admin
from supervisor.ops.notify import Notifier
from supervisor.pool.cgroups import CgroupsUnavailable, TenantCgroups, open_cgroups
from supervisor.pool.scratch import remove_stale_scratch
from supervisor.project.project import StartupError
from supervisor.project.tenants import TenantsError, load_tenants

log = logging.getLogger(__name__)


def _cgroups(config: ServerConfig, wanted: bool) -> TenantCgroups | None:
    try:
        return open_cgroups()
    except CgroupsUnavailable as exc:
        extra = " (cpu_weight, cpu_max and memory_max_mb as cgroup limits have no effect)" if wanted else ""
        log.warning(
            "tenants without cgroups: %s; each tenant is held by its own runners, its rate and concurrency "
            "limits and RSS recycling of its runners only%s",
            exc,
            extra,
        )
        return None


async def serve_tenants(config: ServerConfig, out: TextIO, reload_source: ReloadSource) -> None:
    """Serve the tenants of ``config.tenants`` until a signal stops the server.

    Raises:
        StartupError: a broken tenants file, --frontends above 1, an unusable
            port or KV store, or no tenant that can start.
    """
    from supervisor.server import _url_host, bind_sockets

    started = time.perf_counter()
    assert config.tenants is not None
    if config.frontends is not None and config.frontends > 1:
        raise StartupError(
            f"--frontends {config.frontends} cannot be used with --tenants: the tenants' quotas are counted "
            "in one front end (run several servers behind a load balancer instead)"
        )
    try:
        tenants = load_tenants(config.tenants)
    except TenantsError as exc:
        raise StartupError(str(exc)) from None
    print(f"⚙️  Serving {len(tenants)} tenants from: {config.tenants}", file=out)
    wanted = any(t.limits.cpu_weight or t.limits.cpu_max or t.limits.memory_max_mb for t in tenants)
    cgroups = _cgroups(config, wanted)
    with contextlib.ExitStack() as stack:
        (sock,) = bind_sockets(config.host, config.port, 1)
        stack.callback(sock.close)
        port = sock.getsockname()[1]
        remove_stale_scratch()
        admin = stack.enter_context(open_admin(config, 1))
        try:
            open_kv(config.kv_url).close()
        except KvUnavailable as exc:
            raise StartupError(str(exc)) from None
        prepared = []
        for tenant in tenants:
            print(f"⏳ Tenant {tenant.name}: loading {tenant.root}", file=out)
            prepared.append(await prepare_tenant(config, tenant, out))
        scheme = "https" if config.certfile is not None else "http"
        base_url = f"{scheme}://{_url_host(config.host)}:{port}"

        def ready() -> None:
            print(f"✅ Tenants loaded in {time.perf_counter() - started:.3f}s.", file=out)
            for item in prepared:
                hosts = ", ".join(item.tenant.hosts) or "(default)"
                state = f"down: {item.error}" if item.error else f"{len(item.project.routes.routes)} routes"  # type: ignore[union-attr]
                print(f"    - {item.tenant.name} ({hosts}{item.tenant.prefix}): {state}", file=out)
            if admin is not None:
                print(f"📊 {admin.banner}", file=out)
            print(f"🚀 Start serving requests at {base_url}\n", file=out, flush=True)
            notifier.ready(f"serving {len(prepared)} tenants at {base_url}")

        notifier = Notifier()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(notifier.watchdog)
                if admin is not None:
                    await nursery.start(admin.serve)
                front = TenantFrontEnd(config, notifier, reload_source, cgroups)
                await front.serve(prepared, sock, ready)
                nursery.cancel_scope.cancel()
        finally:
            notifier.close()
