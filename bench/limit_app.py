"""The ceiling of our front end: a bare hello-world ASGI app on hypercorn's trio
worker, embedded the way wws-supervisor embeds it (one process, serve()).

    python bench/limit_app.py PORT     (prints "listening on http://127.0.0.1:PORT")
"""

from __future__ import annotations

import signal
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


async def main(port: int) -> None:
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
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


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
