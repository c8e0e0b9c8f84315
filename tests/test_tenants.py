"""Multi-tenant serving (``--tenants``), through the real server: routing by
Host (exact, wildcard, default, unknown, prefix), per-tenant runners and KV,
limits (rate with 429, concurrency, KV quotas, outbound ceiling, worker
limits capped), a broken tenant failing alone, a reload that changes one
tenant under load with zero failed requests for the others, cgroups where
the machine allows them; plus the tenants file's errors."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.pool.cgroups import CgroupsUnavailable, find_cgroup, open_cgroups
from supervisor.project.tenants import Tenant, TenantsError, load_tenants, pick
from tests.helpers import REPO, ServerProcess, http, serving

HERE = Path(__file__).resolve().parent
ALPHA = HERE / "tenants" / "alpha"
BETA = HERE / "tenants" / "beta"


def _admin_port(server: ServerProcess) -> int:
    match = server.wait_for(r"Admin listener at http://127\.0\.0\.1:(\d+)/", stream="stdout")
    return int(match.group(1))


async def _get(server: ServerProcess, host: str, path: str, **headers: str) -> Any:
    return await http(server.port, "GET", path, headers={"Host": host, **headers})


async def _api(port: int, path: str) -> Any:
    response = await http(port, "GET", path)
    assert response.status == 200, response.text
    return json.loads(response.body)


async def _wait_log(server: ServerProcess, pattern: str, start: int = 0) -> str:
    match = await trio.to_thread.run_sync(lambda: server.wait_for(pattern, start=start, timeout=120))
    return match.group(0)


# The tenants file ------------------------------------------------------------


def _file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "site").mkdir(exist_ok=True)
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[[tenant]]\nname = "a"\nroot = "site"\nhosts = ["a.test"]\ncolour = 1\n',
            r":5: unknown key 'colour'",
        ),
        (
            '[[tenant]]\nname = "a"\nroot = "site"\nhosts = ["a.test"]\n\n'
            '[[tenant]]\nname = "b"\nroot = "site"\nhosts = ["a.test"]\n',
            r":9: tenants a and b both answer a\.test",
        ),
        ('[[tenant]]\nname = "a b"\nroot = "site"\nhosts = ["a.test"]\n', r":2: name must be"),
        ('[[tenant]]\nname = "a"\nroot = "nowhere"\nhosts = ["a.test"]\n', r":3: tenant a: there is nothing"),
        (
            '[[tenant]]\nname = "a"\nroot = "site"\nhosts = ["a.test"]\n[tenant.limits]\nburst = -1\n',
            r":6: tenant a: limits\.burst must be a whole number",
        ),
        ('[[tenant]]\nname = "a"\nroot = "site"\nhosts = ["a..test"]\n', r":4: tenant a: 'a\.\.test' is not"),
        ('[[tenant]]\nname = "a"\nroot = "site"\n', r":1: tenant a: give it hosts"),
        ("[[tenant]\n", r"invalid TOML"),
    ],
)
def test_tenants_file_errors_name_the_line(tmp_path: Path, text: str, error: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(TenantsError) as caught:
        load_tenants(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and re.search(error, message), message


def test_pick_exact_over_wildcard_then_prefix_then_default() -> None:
    root = Path("/")
    tenants = [
        Tenant("exact", root, ("shop.example",)),
        Tenant("wild", root, ("*.example",)),
        Tenant("app", root, ("shop.example",), prefix="/app"),
        Tenant("fallback", root, (), default=True),
    ]

    def name(host: str, path: str = "/") -> str | None:
        tenant = pick(tenants, host, path)
        return tenant.name if tenant is not None else None

    assert name("shop.example") == "exact"
    assert name("shop.example", "/app/x") == "app"
    assert name("shop.example", "/apple") == "exact"
    assert name("blog.example") == "wild"
    assert name("example") == "fallback"  # *.example is not example itself
    assert name("other.test") == "fallback"
    assert pick(tenants[:3], "other.test", "/") is None


# Through the real server ---------------------------------------------------------


def _tenants_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(body)
    return path


_MAIN = f"""
[[tenant]]
name = "alpha"
root = "{ALPHA}"
hosts = ["alpha.test", "*.alpha.test"]

[tenant.limits]
workers = 1
fuel = 100000000
memory_mb = 32
timeout_ms = 3000
allowed_hosts = ["localhost"]
kv_max_keys = 3
kv_max_bytes = 200

[[tenant]]
name = "beta"
root = "{BETA}"
hosts = ["beta.test"]
default = true

[tenant.limits]
workers = 2

[[tenant]]
name = "under"
root = "{ALPHA}"
hosts = ["beta.test"]
prefix = "/under"

[[tenant]]
name = "broken"
root = "BROKEN"
hosts = ["broken.test"]
"""


async def test_routing_isolation_and_limits(tmp_path: Path, cache_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.wat").write_text("(module (func $oops")
    path = _tenants_file(tmp_path, _MAIN.replace("BROKEN", str(broken)))
    args = ["--tenants", str(path), "--admin", "127.0.0.1:0", "--timeout-ms", "8000"]
    async with serving(tmp_path, args, cache_dir) as server:
        admin = _admin_port(server)
        # Routing: exact, wildcard, default for unknown hosts, prefix, port in Host.
        first = await _get(server, "alpha.test", "/who")
        assert first.text == "alpha", (first, server.lines[-30:])
        assert (await _get(server, "alpha.test", "/who")).text == "alpha"
        assert (await _get(server, "a.b.alpha.test:8080", "/who")).text == "alpha"
        assert (await _get(server, "beta.test", "/who")).text == "beta"
        assert (await _get(server, "nobody.test", "/who")).text == "beta"
        assert (await _get(server, "beta.test", "/under/who")).text == "alpha"
        # A tenant whose project cannot load answers 503; the others serve.
        down = await _get(server, "broken.test", "/bad")
        assert (down.status, down.headers["x-wws-failure"]) == (503, "tenant-unavailable")
        assert any("tenant broken cannot start" in line and "bad.wat" in line for line in server.lines)
        # KV: one namespace name, three tenants, three sets of keys.
        assert [(await _get(server, "alpha.test", "/counter")).text for _ in range(2)] == ["1", "2"]
        assert (await _get(server, "beta.test", "/counter")).text == "1"
        assert (await _get(server, "beta.test", "/under/counter")).text == "1"
        # KV quotas: 3 keys, 200 bytes per namespace.
        for key in ("a", "b", "c"):
            assert (await _get(server, "alpha.test", "/put", **{"x-key": key})).status == 200
        over = await _get(server, "alpha.test", "/put", **{"x-key": "d"})
        assert (over.status, over.headers["x-wws-failure"]) == (500, "kv-limit")
        big = await _get(server, "alpha.test", "/put", **{"x-key": "a", "x-size": "300"})
        assert (big.status, big.headers["x-wws-failure"]) == (500, "kv-limit")
        # Outbound: alpha's ceiling (localhost) removes 127.0.0.1 from its worker's
        # policy; beta has no ceiling.
        target = f"http://127.0.0.1:{server.port}/who"
        refused = await _get(server, "alpha.test", "/proxy", **{"x-target": target})
        assert (refused.status, refused.text) == (
            502,
            "[Not allowed] The host '127.0.0.1' is not allowed for this worker. "
            "Please, update the worker configuration.",
        )
        assert (await _get(server, "beta.test", "/proxy", **{"x-target": target})).text == "status=200 beta"
        # Worker limits capped by the tenant's; runners never shared.
        workers = (await _api(admin, "/api/v1/workers"))["workers"]
        proxy = next(w for w in workers if w["tenant"] == "alpha" and w["route"] == "/proxy")
        assert proxy["limits"] == {"fuel": 100_000_000, "memory_mb": 32, "timeout_ms": 3000}
        runners = (await _api(admin, "/api/v1/runners"))["runners"]
        pids: dict[str, set[int]] = {}
        for runner in runners:
            pids.setdefault(runner["tenant"], set()).add(runner["pid"])
        assert {name: len(found) for name, found in pids.items()} == {"alpha": 1, "beta": 2, "under": 1}
        assert not (pids["alpha"] & pids["beta"]) and not (pids["alpha"] & pids["under"])
        tenants = {t["name"]: t for t in (await _api(admin, "/api/v1/tenants"))["tenants"]}
        assert tenants["broken"]["state"] == "down" and "bad.wat" in tenants["broken"]["error"]
        assert tenants["alpha"]["limits"]["kv_max_keys"] == 3
        # Metrics carry the tenant.
        metrics = (await http(admin, "GET", "/metrics")).text
        assert 'wws_requests_total{failure="none",route="/who",status="200",tenant="alpha"} 3.0' in metrics
        assert 'failure="tenant-unavailable",route="(other)",status="503",tenant="broken"} 1.0' in metrics
        # /readyz: the tenants that are up have runners (the broken one does not hold the node back).
        assert (await http(admin, "GET", "/readyz")).status == 200


_QUOTAS = f"""
[[tenant]]
name = "limited"
root = "{ALPHA}"
hosts = ["limited.test"]

[tenant.limits]
requests_per_second = 1
burst = 3

[[tenant]]
name = "narrow"
root = "{ALPHA}"
hosts = ["narrow.test"]

[tenant.limits]
workers = 2
max_concurrency = 1
queue_size = 1
"""


async def test_rate_and_concurrency_quotas(tmp_path: Path, cache_dir: Path) -> None:
    path = _tenants_file(tmp_path, _QUOTAS)
    async with serving(tmp_path, ["--tenants", str(path)], cache_dir) as server:
        # No default tenant: an unknown Host is 404.
        assert (await _get(server, "nobody.test", "/who")).status == 404
        # Rate: a burst of 3, then 429 with Retry-After (1 request a second).
        statuses = [(await _get(server, "limited.test", "/who")).status for _ in range(3)]
        refused = await _get(server, "limited.test", "/who")
        assert statuses == [200, 200, 200]
        assert (refused.status, refused.headers["x-wws-failure"]) == (429, "rate-limited")
        assert refused.headers["retry-after"] in ("0", "1")  # counted from the end of the 1 s hold
        # Concurrency: one in flight, one waiting, the third is refused at once,
        # although the tenant has two runners.
        results: list[int] = []

        async def slow() -> None:
            results.append((await _get(server, "narrow.test", "/slow")).status)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(slow)
        assert sorted(results) == [200, 200, 503]
        # The other tenant was never held by either.
        assert (await _get(server, "narrow.test", "/who")).status == 200


def _runner_pids(server: ServerProcess, tenant: str) -> set[int]:
    import psutil

    found = set()
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "runner" in child.cmdline():
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


async def test_reload_changes_one_tenant_under_load(tmp_path: Path, cache_dir: Path) -> None:
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    for source, target in ((ALPHA, alpha), (BETA, beta)):
        target.mkdir()
        shutil.copy(source / "who.wat", target / "who.wat")
        shutil.copy(ALPHA / "slow.wat", target / "slow.wat")
    entry = '[[tenant]]\nname = "{0}"\nroot = "{0}"\nhosts = ["{0}.test"]\n[tenant.limits]\nworkers = 2\n'
    path = _tenants_file(tmp_path, entry.format("alpha") + entry.format("beta"))
    args = ["--tenants", str(path), "--admin", "127.0.0.1:0"]
    async with serving(tmp_path, args, cache_dir) as server:
        admin = _admin_port(server)

        async def beta_pids() -> set[int]:
            runners = (await _api(admin, "/api/v1/runners"))["runners"]
            return {r["pid"] for r in runners if r["tenant"] == "beta"}

        before = await beta_pids()
        failures: list[str] = []
        served = 0
        stop, enough = trio.Event(), trio.Event()

        async def load() -> None:
            nonlocal served
            while not stop.is_set():
                response = await _get(server, "beta.test", "/slow" if served % 4 == 0 else "/who")
                served += 1
                if served >= 30:
                    enough.set()
                if response.status != 200:
                    failures.append(f"{response.status} {response.headers.get('x-wws-failure')}")

        async def reload(expect: str) -> None:
            mark = len(server.lines)
            server.signal(signal.SIGHUP)
            await _wait_log(server, expect, start=mark)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(load)
            # alpha changes, a tenant is added
            (alpha / "who.wat").write_text(
                (alpha / "who.wat").read_text().replace('\\"alpha\\"', '\\"alpha 2\\"')
            )
            path.write_text(
                path.read_text() + entry.format("gamma").replace('root = "gamma"', f'root = "{alpha}"')
            )
            await reload(r"reloaded: 2 tenant\(s\) started or changed")
            assert (await _get(server, "alpha.test", "/who")).text == "alpha 2"
            assert (await _get(server, "gamma.test", "/who")).text == "alpha 2"
            # alpha broken: it keeps serving its last generation, alone
            (alpha / "who.toml").write_text("[limits\n")
            await reload(r"tenant alpha: reload failed, generation 2 keeps serving: .*who\.toml")
            assert (await _get(server, "alpha.test", "/who")).text == "alpha 2"
            # gamma removed
            path.write_text(entry.format("alpha") + entry.format("beta"))
            await reload(r"reloaded: 1 tenant\(s\) started or changed")
            assert (await _get(server, "gamma.test", "/who")).status == 404
            # a broken tenants file changes nothing
            path.write_text("[[tenant]\n")
            await reload(r"reload failed, every tenant keeps serving: .*invalid TOML")
            await enough.wait()  # the reloads may be quicker than 30 requests
            stop.set()
        assert served > 20
        assert failures == []
        assert await beta_pids() == before  # beta's runners were never touched


async def test_frontends_above_one_are_refused_with_tenants(tmp_path: Path) -> None:
    path = _tenants_file(tmp_path, f'[[tenant]]\nname = "a"\nroot = "{ALPHA}"\nhosts = ["a.test"]\n')
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "supervisor", "--tenants", str(path), "--frontends", "2", "-p", "0"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    )
    assert result.returncode == 1
    assert "--frontends 2 cannot be used with --tenants" in result.stderr


def test_cgroups_unavailable_is_one_reason(tmp_path: Path) -> None:
    # A fake /proc: cgroup v1 only.
    (tmp_path / "cgroup").write_text("4:memory:/x\n1:cpu:/\n")
    (tmp_path / "mountinfo").write_text("30 20 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    with pytest.raises(CgroupsUnavailable, match="not in a cgroup v2 hierarchy"):
        open_cgroups(tmp_path / "cgroup", tmp_path / "mountinfo")


def test_cgroups_layout_on_a_delegated_tree(tmp_path: Path) -> None:
    # A fake cgroup v2 tree (plain files): the layout the server writes.
    group = tmp_path / "fs" / "svc"
    group.mkdir(parents=True)
    (group / "cgroup.controllers").write_text("cpu memory pids\n")
    (group / "cgroup.subtree_control").write_text("\n")
    (group / "cgroup.procs").write_text("101\n")
    (tmp_path / "cgroup").write_text("0::/svc\n")
    (tmp_path / "mountinfo").write_text(f"30 20 0:26 / {tmp_path / 'fs'} rw - cgroup2 cgroup2 rw\n")
    cgroups = open_cgroups(tmp_path / "cgroup", tmp_path / "mountinfo")
    assert (group / "supervisor" / "cgroup.procs").read_text() == "101\n"
    assert (group / "cgroup.subtree_control").read_text() == "+cpu +memory\n"
    from supervisor.project.tenants import TenantLimits

    cgroups.configure("alpha", TenantLimits(cpu_weight=50, cpu_max=0.5, memory_max_mb=256))
    assert (group / "tenant-alpha" / "cpu.weight").read_text() == "50\n"
    assert (group / "tenant-alpha" / "cpu.max").read_text() == "50000 100000\n"
    assert (group / "tenant-alpha" / "memory.max").read_text() == f"{256 << 20}\n"


@pytest.fixture
def delegated_cgroup() -> Path:
    try:
        return find_cgroup()  # looked at only: the server sets it up
    except CgroupsUnavailable as exc:
        pytest.skip(f"cgroup v2 is not delegated on this machine: {exc}")


async def test_runners_in_tenant_cgroups_where_delegated(
    tmp_path: Path, cache_dir: Path, delegated_cgroup: Path
) -> None:
    group = delegated_cgroup
    path = _tenants_file(
        tmp_path,
        f'[[tenant]]\nname = "cg"\nroot = "{ALPHA}"\nhosts = ["cg.test"]\n'
        "[tenant.limits]\ncpu_weight = 50\ncpu_max = 0.5\nmemory_max_mb = 512\n",
    )
    async with serving(tmp_path, ["--tenants", str(path)], cache_dir) as server:
        assert (await _get(server, "cg.test", "/who")).text == "alpha"
        group = group / "tenant-cg"
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        assert _runner_pids(server, "cg") <= {int(p) for p in (group / "cgroup.procs").read_text().split()}
