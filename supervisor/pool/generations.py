"""Generations: what a reload swaps without dropping a request.

A generation is one loaded project (routes, settings, the workers that
failed to load) with its own pool of runners and the ASGI app that serves it.
:class:`Switch` is what the HTTP front serves: each request is handed to the
generation that is current when it arrives and stays with it to the end. A
reload builds the next generation beside the current one, switches, then
waits until the old one has no request left before closing its pool, so no
request ever meets a runner that is going away.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio

from supervisor.front.asgi import WorkerApp
from supervisor.pool.pool import Pool
from supervisor.project.project import Project


@dataclasses.dataclass(eq=False)
class Generation:
    number: int
    project: Project
    app: WorkerApp
    pool: Pool
    active: int = 0
    retiring: bool = False
    idle: trio.Event = dataclasses.field(default_factory=trio.Event)

    async def retire(self) -> None:
        """Wait until no request of this generation is left, then close its pool."""
        self.retiring = True
        if self.active == 0:
            self.idle.set()
        await self.idle.wait()
        self.pool.close()


class Switch:
    """The ASGI app in front of the generations."""

    def __init__(self, current: Generation) -> None:
        self.current = current

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        generation = self.current
        generation.active += 1
        try:
            await generation.app(scope, receive, send)
        finally:
            generation.active -= 1
            if generation.retiring and generation.active == 0:
                generation.idle.set()
