"""The scale-out recipe, for real on loopback: redis-server, two supervisors
with the same tenants file and ``--kv redis://``, and HAProxy in front with
health checks on each node's ``/readyz`` (admin listener).

KV writes made through one node are read through the other; a node killed
(SIGKILL) under load loses no acknowledged write, and HAProxy stops sending
it requests once its health check fails."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.helpers import ServerProcess, http
from tests.redis_server import redis_server

HERE = Path(__file__).resolve().parent
ALPHA = HERE / "tenants" / "alpha"
CLIENTS = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _haproxy_config(folder: Path, port: int, nodes: list[tuple[int, int]]) -> Path:
    servers = "\n".join(
        # Health: the node's admin /readyz, every 200 ms; 2 failures mark it down.
        f"    server n{index} 127.0.0.1:{web} check port {admin} inter 200ms fall 2 rise 1"
        for index, (web, admin) in enumerate(nodes, start=1)
    )
    path = folder / "haproxy.cfg"
    path.write_text(
        f"""global
    maxconn 256
    stats socket {folder / "haproxy.sock"} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    # A connection refused by a dead node is tried again on the other one.
    retries 3
    option redispatch 1

frontend web
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    http-response set-header x-node %s
{servers}
"""
    )
    return path


def _server_states(sock_path: Path) -> dict[str, str]:
    """HAProxy's view of each server (``show stat``: name -> UP/DOWN/...)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {row["svname"]: row["status"] for row in rows if row.get("pxname") == "nodes"}


@contextlib.contextmanager
def _haproxy(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    # Debian puts it in /usr/sbin, which a non-root PATH may not hold.
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.fail(
            "haproxy is not installed: run `bash tests/run` (it installs it) or apt-get install haproxy"
        )
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


async def _until(check: Callable[[], bool]) -> None:
    # HAProxy's checks run on its own clock, in another process: ask its
    # stats socket until the state shows, under a deadline.
    with trio.fail_after(30):
        while True:
            with contextlib.suppress(OSError):  # the stats socket is not there yet
                if check():
                    return
            await trio.sleep(0.05)


def _admin_port(server: ServerProcess) -> int:
    match = server.wait_for(r"Admin listener at http://127\.0\.0\.1:(\d+)/", stream="stdout")
    return int(match.group(1))


async def test_two_nodes_behind_haproxy_share_kv_and_survive_a_kill(tmp_path: Path, cache_dir: Path) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[[tenant]]\nname = "shop"\nroot = "{ALPHA}"\nhosts = ["shop.test"]\n[tenant.limits]\nworkers = 2\n'
    )
    with redis_server(tmp_path) as url:
        args = ["--tenants", str(tenants), "--kv", url, "--admin", "127.0.0.1:0"]
        nodes = [ServerProcess(tmp_path, args, cache_dir) for _ in range(2)]
        try:
            for node in nodes:
                await trio.to_thread.run_sync(node.wait_ready)
            one, two = nodes
            host = {"Host": "shop.test"}
            # A write through one node is read through the other.
            assert (await http(one.port, "GET", "/counter", headers=host)).text == "1"
            assert (await http(one.port, "GET", "/counter", headers=host)).text == "2"
            assert (await http(two.port, "GET", "/counter", headers=host)).text == "3"

            port = _free_port()
            config = _haproxy_config(tmp_path, port, [(n.port, _admin_port(n)) for n in nodes])
            stats = tmp_path / "haproxy.sock"
            with _haproxy(config):
                await _until(lambda: set(_server_states(stats).values()) == {"UP"})
                acked: list[int] = []
                errors: list[str] = []
                after_down: list[tuple[int, str]] = []
                killed = trio.Event()
                down = trio.Event()
                stop = trio.Event()
                served_before, served_after = trio.Event(), trio.Event()

                async def client() -> None:
                    while not stop.is_set():
                        marked_down = down.is_set()
                        try:
                            response = await http(port, "GET", "/counter", headers=host)
                        except OSError as exc:
                            errors.append(repr(exc))
                            continue
                        if response.status == 200:
                            acked.append(int(response.text))
                            if len(acked) >= 40:  # both nodes have served
                                served_before.set()
                        else:
                            errors.append(
                                f"{response.status} after kill={killed.is_set()} {response.text[:60]!r}"
                            )
                        if marked_down:
                            after_down.append((response.status, response.headers.get("x-node", "")))
                            if len(after_down) >= 40:
                                served_after.set()

                async with trio.open_nursery() as nursery:
                    for _ in range(CLIENTS):
                        nursery.start_soon(client)
                    with trio.fail_after(60):
                        await served_before.wait()
                    one.proc.send_signal(signal.SIGKILL)
                    killed.set()
                    await _until(lambda: _server_states(stats).get("n1") == "DOWN")
                    down.set()
                    with trio.fail_after(60):
                        await served_after.wait()
                    stop.set()
            final = int((await http(two.port, "GET", "/counter", headers=host)).text) - 1
            # No acknowledged write lost: every acknowledged count is distinct
            # (no update overwrote another) and the store holds at least the highest.
            assert len(set(acked)) == len(acked)
            assert final >= max(acked) and final >= len(acked) + 3
            # Once HAProxy marked the dead node down, every request went to the live one.
            assert after_down and all(entry == (200, "n2") for entry in after_down), after_down[:5]
            # Only requests in flight on the killed node at that moment may fail.
            assert len(errors) <= CLIENTS and not any("after kill=False" in e for e in errors), errors
        finally:
            for node in nodes:
                node.stop()
