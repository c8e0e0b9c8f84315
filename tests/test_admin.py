"""The admin listener through the real server: /metrics parsed with
prometheus_client's own parser and its counters following requests (with one
front end, and summed over two sharing a SQLite KV store), the bearer token,
/healthz and /readyz (503 while draining), and the JSON API."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from supervisor.cli import build_parser, config_from_args
from tests.helpers import TEST_PROJECT, ServerProcess, http, serving

HERE = Path(__file__).resolve().parent
HARD_PROJECT = HERE / "hardproject"
KV_PROJECT = HERE / "kvproject"
JS_PROJECT = HERE / "jsproject"
_ADMIN = ["--admin", "127.0.0.1:0"]
_SMALL = ["-w", "2", "--fuel", "50000000", "--memory-mb", "16", "--timeout-ms", "1500"]


def admin_port(server: ServerProcess) -> int:
    match = server.wait_for(r"Admin listener at http://127\.0\.0\.1:(\d+)/", stream="stdout")
    return int(match.group(1))


async def scrape(port: int, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset[Any]], float]:
    """``/metrics`` parsed by prometheus_client: (sample name, labels) -> value."""
    response = await http(port, "GET", "/metrics", headers=headers)
    assert response.status == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def api(port: int, path: str) -> Any:
    response = await http(port, "GET", path)
    assert response.status == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return json.loads(response.body)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    # The runner state is republished within half a second of a change, from
    # another process: ask until it shows, under a deadline.
    with trio.fail_after(10):
        while not await check():  # noqa: ASYNC110 - nothing to wait on in this process
            await trio.sleep(0.05)


async def test_metrics_follow_requests_failures_and_restarts(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, [*_SMALL, *_ADMIN], cache_dir) as server:
        admin = admin_port(server)
        before = await scrape(admin)
        for _ in range(3):
            assert (await http(server.port, "GET", "/hello")).status == 201
        assert (await http(server.port, "GET", "/trap")).status == 500
        assert (await http(server.port, "GET", "/loop")).headers["x-wws-failure"] == "out-of-fuel"
        assert (await http(server.port, "GET", "/no/such/route")).status == 404
        after = await scrape(admin)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("wws_requests_total", route="/hello", status="201", failure="none") == 3
        assert delta("wws_requests_total", route="/trap", status="500", failure="trap") == 1
        assert delta("wws_requests_total", route="/loop", status="504", failure="out-of-fuel") == 1
        assert delta("wws_requests_total", route="(other)", status="404", failure="none") == 1
        assert delta("wws_request_duration_seconds_count", route="/hello") == 3
        assert delta("wws_request_duration_seconds_bucket", route="/hello", le="+Inf") == 3
        assert delta("wws_request_duration_seconds_sum", route="/loop") > 0
        # The loop burnt its whole budget; hello.wat used some.
        assert delta("wws_fuel_used_total", worker="loop.wat") >= 50_000_000
        assert delta("wws_fuel_used_total", worker="hello.wat") > 0
        assert value(after, "wws_requests_in_flight") == 0
        assert value(after, "wws_queue_depth") == 0

        # A runner killed from outside is replaced, and counted as a crash.
        runners = (await api(admin, "/api/v1/runners"))["runners"]
        assert sorted(r["slot"] for r in runners) == [0, 1]
        victim = runners[0]
        psutil.Process(victim["pid"]).kill()

        async def replaced() -> bool:
            now = (await api(admin, "/api/v1/runners"))["runners"]
            slot = [r for r in now if r["slot"] == victim["slot"]]
            return bool(slot) and slot[0]["pid"] not in (None, victim["pid"]) and slot[0]["state"] == "idle"

        await eventually(replaced)
        assert value(await scrape(admin), "wws_runner_restarts_total", reason="crashed") == 1
        # The ones that failed are on the list the status page shows.
        failures = (await api(admin, "/api/v1/requests"))["recent_failures"]
        assert [(f["route"], f["status"], f["failure"]) for f in failures[:2]] == [
            ("/loop", 504, "out-of-fuel"),
            ("/trap", 500, "trap"),
        ]


async def test_the_json_api_describes_workers_and_runners(cache_dir: Path) -> None:
    async with serving(TEST_PROJECT, [*_SMALL, *_ADMIN], cache_dir) as server:
        admin = admin_port(server)
        workers = await api(admin, "/api/v1/workers")
        by_route = {w["route"]: w for w in workers["workers"]}
        assert by_route["/hello"] == {
            "route": "/hello",
            "file": "hello.wat",
            "kind": "wat",
            "limits": {"fuel": 50_000_000, "memory_mb": 16, "timeout_ms": 1500},
            "max_concurrency": None,
            "kv_namespace": None,
            "load_error": None,
        }
        assert by_route["/api/echo"]["file"] == "api/echo.wasm"
        assert workers["generation"] == (await api(admin, "/api/v1/runners"))["runners"][0]["generation"]
        for _ in range(4):
            assert (await http(server.port, "GET", "/hello")).status == 201
        family = {p.pid for p in psutil.Process(server.proc.pid).children()}

        async def served_four() -> bool:
            runners = (await api(admin, "/api/v1/runners"))["runners"]
            return sum(r["requests_served"] for r in runners) == 4

        await eventually(served_four)
        runners = (await api(admin, "/api/v1/runners"))["runners"]
        assert {r["pid"] for r in runners} == family  # the runners are this process's children
        for runner in runners:
            assert runner["frontend"] == 0 and runner["frontend_pid"] == server.proc.pid
            assert runner["state"] == "idle" and runner["current"] is True
            assert runner["rss_bytes"] > 1 << 20
            assert isinstance(runner["generation"], int)
        assert (await http(admin, "GET", "/api/v1/nothing")).status == 404
        assert (await http(admin, "POST", "/metrics")).status == 405


async def test_load_errors_are_listed(cache_dir: Path) -> None:
    args = ["-w", "1", "--fuel", "200000000", "--memory-mb", "64", *_ADMIN]
    server = ServerProcess(JS_PROJECT, args, cache_dir)
    try:
        await trio.to_thread.run_sync(lambda: server.wait_ready(timeout=180))
        workers = (await api(admin_port(server), "/api/v1/workers"))["workers"]
        broken = [w for w in workers if w["load_error"]]
        assert "broken.js" in [w["file"] for w in broken]  # a syntax error
        assert "basic.js" not in [w["file"] for w in broken]
        assert {w["kind"] for w in workers} == {"js"}
    finally:
        server.stop()


async def test_the_token_is_required(cache_dir: Path) -> None:
    async with serving(HARD_PROJECT, ["-w", "1", *_ADMIN, "--admin-token", "s3cret"], cache_dir) as server:
        admin = admin_port(server)
        for path in ("/metrics", "/healthz", "/readyz", "/api/v1/workers", "/api/v1/runners"):
            missing = await http(admin, "GET", path)
            assert missing.status == 401 and missing.headers["www-authenticate"].startswith("Bearer")
            wrong = await http(admin, "GET", path, headers={"Authorization": "Bearer s3cre"})
            assert wrong.status == 401
            right = await http(admin, "GET", path, headers={"Authorization": "Bearer s3cret"})
            assert right.status == 200, path
        # The page itself holds no data: it asks for the token, then sends it with each call.
        page = await http(admin, "GET", "/")
        assert page.status == 200 and "<table>" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        samples = await scrape(admin, {"Authorization": "Bearer s3cret"})
        assert value(samples, "wws_kv_conflicts_total") == 0


async def test_readyz_says_503_while_draining(cache_dir: Path) -> None:
    args = ["-w", "2", "--timeout-ms", "60000", "--graceful-timeout", "60", "--log-level", "debug", *_ADMIN]
    async with serving(HARD_PROJECT, args, cache_dir) as server:
        admin = admin_port(server)
        ready = await http(admin, "GET", "/readyz")
        assert (ready.status, ready.text) == (200, "ready\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http, server.port, "GET", "/sleep")  # in flight through the drain
            await trio.to_thread.run_sync(lambda: server.wait_for(r"request \d+ dispatched to runner"))
            mark = len(server.stderr_lines)
            server.signal(signal.SIGTERM)
            await trio.to_thread.run_sync(lambda: server.wait_for(r"SIGTERM received", start=mark))

            async def draining() -> bool:
                return (await http(admin, "GET", "/readyz")).status == 503

            await eventually(draining)
            answer = await http(admin, "GET", "/readyz")
            assert answer.text == "front end 0 is draining\n"
            assert (await http(admin, "GET", "/healthz")).status == 200  # alive all the same
            server.signal(signal.SIGTERM)  # the second one hurries the sleeper
        assert await trio.to_thread.run_sync(server.wait_exit) == 0


async def test_two_front_ends_add_up(cache_dir: Path, tmp_path: Path) -> None:
    args = ["-w", "4", "--frontends", "2", "--kv", f"sqlite://{tmp_path / 'kv.db'}", *_ADMIN]
    async with serving(KV_PROJECT, args, cache_dir) as server:
        admin = admin_port(server)
        assert (await http(admin, "GET", "/readyz")).status == 200
        statuses: list[int] = []

        async def client() -> None:
            for _ in range(10):
                statuses.append((await http(server.port, "GET", "/counter")).status)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client)
        assert statuses == [200] * 40
        assert (await http(server.port, "GET", "/fail")).status == 500
        samples = await scrape(admin)
        assert value(samples, "wws_requests_total", route="/counter", status="200", failure="none") == 40
        assert total(samples, "wws_requests_total", route="/fail", status="500") == 1
        commits = value(samples, "wws_kv_operations_total", op="commit", result="ok")
        conflicts = value(samples, "wws_kv_conflicts_total")
        assert commits == 40  # one landed commit per answered request
        assert value(samples, "wws_kv_operations_total", op="commit", result="conflict") == conflicts
        # Every attempt reads a snapshot, then tries to commit (/fail read one and wrote nothing).
        snapshots = value(samples, "wws_kv_operations_total", op="snapshot", result="ok")
        assert snapshots == commits + conflicts + 1

        async def both_served() -> bool:
            runners = (await api(admin, "/api/v1/runners"))["runners"]
            return sum(r["requests_served"] for r in runners) >= 41

        await eventually(both_served)
        runners = (await api(admin, "/api/v1/runners"))["runners"]
        assert len(runners) == 4
        front_ends = {r["frontend"]: r["frontend_pid"] for r in runners}
        assert sorted(front_ends) == [0, 1]
        # The arbiter's children: the two front ends and the admin listener's process.
        children = psutil.Process(server.proc.pid).children()
        assert set(front_ends.values()) == {
            p.pid for p in children if "supervisor.front.frontend" in p.cmdline()
        }
        assert sum("supervisor.ops.admin_main" in p.cmdline() for p in children) == 1
        per_front = {i: sum(r["requests_served"] for r in runners if r["frontend"] == i) for i in (0, 1)}
        assert all(per_front.values()), per_front  # both front ends served, and both were counted

        # A front end killed and replaced: not ready meanwhile, and its counts stay in the totals.
        victim = front_ends[0]
        psutil.Process(victim).kill()

        async def replaced() -> bool:
            now = (await api(admin, "/api/v1/runners"))["runners"]
            pids = {r["frontend_pid"] for r in now if r["frontend"] == 0}
            return bool(pids) and victim not in pids and (await http(admin, "GET", "/readyz")).status == 200

        await eventually(replaced)
        again = await scrape(admin)
        assert value(again, "wws_requests_total", route="/counter", status="200", failure="none") == 40
        assert value(again, "wws_requests_in_flight") == 0


async def test_a_reload_shows_the_new_generation(cache_dir: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "hello.wat").write_bytes((HARD_PROJECT / "hello.wat").read_bytes())
    async with serving(project, ["-w", "1", "--log-level", "debug", *_ADMIN], cache_dir) as server:
        admin = admin_port(server)
        first = await api(admin, "/api/v1/workers")
        assert [w["route"] for w in first["workers"]] == ["/hello"]
        (project / "echo.wat").write_bytes((HARD_PROJECT / "echo.wat").read_bytes())
        mark = len(server.stdout_lines)
        server.signal(signal.SIGHUP)
        await trio.to_thread.run_sync(lambda: server.wait_for(r"reloaded: generation", start=mark))

        async def switched() -> bool:
            runners = (await api(admin, "/api/v1/runners"))["runners"]
            return {r["generation"] for r in runners} == {first["generation"] + 1}

        await eventually(switched)  # the old generation's runners are gone from the list
        workers = await api(admin, "/api/v1/workers")
        assert workers["generation"] == first["generation"] + 1
        assert [w["route"] for w in workers["workers"]] == ["/echo", "/hello"]


def test_enable_panel_means_a_loopback_default() -> None:
    config = config_from_args(build_parser().parse_args(["--enable-panel"]))
    assert (config.enable_panel, config.admin) == (True, None)
    config = config_from_args(build_parser().parse_args(["--admin", "[::1]:9191", "--admin-token", "t"]))
    assert (config.admin, config.admin_token) == (("::1", 9191), "t")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--admin", "9090"])


async def test_enable_panel_serves_on_its_default_port(cache_dir: Path) -> None:
    from supervisor.ops.admin import PANEL_DEFAULT

    with trio.socket.socket() as probe:
        try:
            await probe.bind(PANEL_DEFAULT)
        except OSError:
            pytest.skip(f"{PANEL_DEFAULT[0]}:{PANEL_DEFAULT[1]} is in use on this machine")
    async with serving(HARD_PROJECT, ["-w", "1", "--enable-panel"], cache_dir) as server:
        banner = server.wait_for(r"Admin listener at (\S+) \(--enable-panel's default\)", stream="stdout")
        assert banner.group(1) == f"http://{PANEL_DEFAULT[0]}:{PANEL_DEFAULT[1]}/"
        assert re.search(r"wws_requests", (await http(PANEL_DEFAULT[1], "GET", "/metrics")).text)
