"""The ceiling of our front end: a bare hello-world ASGI app on hypercorn's trio
worker, embedded the way wws-supervisor embeds it (serve() in a trio program).

    python bench/limit_app.py PORT                 (one process)
    python bench/limit_app.py PORT --processes N   (N serving processes)

Either way it prints "listening on http://127.0.0.1:PORT" once every process
serves. With N processes it is laid out as ``wws-supervisor --frontends N``
is: a parent holds N listening sockets bound to the port with SO_REUSEPORT
(the kernel spreads connections across them) and starts one child per socket
(``--fd``), which serves it; the parent only waits and forwards SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

BODY = b"Hello from a bare ASGI app"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def serve(bind: str) -> None:
    config = hypercorn.config.Config()
    config.bind = [bind]
    config.accesslog = None
    config.include_server_header = False

    async def stop() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                app, config, shutdown_trigger=stop, task_status=task_status
            )
        )  # type: ignore[arg-type]
        print(f"listening on {binds[0]}", flush=True)


def parent(port: int, processes: int) -> None:
    sockets = []
    for _ in range(processes):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]  # port 0: the others join the one picked
        sock.listen(1024)
        sockets.append(sock)
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--fd", str(sock.fileno())],
            pass_fds=[sock.fileno()],
            stdout=subprocess.PIPE,
            text=True,
        )
        for sock in sockets
    ]
    for child in children:
        assert child.stdout is not None
        if "listening on" not in child.stdout.readline():
            sys.exit("a serving process did not start")

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    for child in children:
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--fd", type=int, help="serve this inherited listening socket (a child)")
    args = parser.parse_args()
    if args.fd is not None:
        trio.run(serve, f"fd://{args.fd}")
    elif args.processes > 1:
        parent(args.port, args.processes)
    else:
        trio.run(serve, f"127.0.0.1:{args.port}")


if __name__ == "__main__":
    main()
