"""What the arbiter and a front-end process say to each other, in a module
of its own so the arbiter can import it without the front end's HTTP stack.

The arbiter writes a :class:`FrontendOrder` as JSON on the front end's stdin;
the front end answers with one line each on its status pipe: ready,
draining, or the startup error that stopped it.
"""

from __future__ import annotations

import json

READY_LINE = b"ready\n"
DRAINING_LINE = b"draining\n"  # no new connection reaches this front end any more
ERROR_PREFIX = b"error: "


class FrontendOrder:
    """What the arbiter tells a front-end process (as JSON on its stdin).

    A plain class: a dataclass would bring ``inspect`` into the arbiter, and
    a named tuple cannot have a field called ``index``.
    """

    __slots__ = ("argv", "broken", "index", "max_connections", "socket_fd", "status_fd", "workers")

    def __init__(
        self,
        *,
        argv: list[str],  # the wws-supervisor command line, as the user gave it
        index: int,
        workers: int,  # this front end's share of the runners
        max_connections: int,
        broken: list[str],  # workers that failed to load at compile time
        socket_fd: int,
        status_fd: int,  # where READY_LINE or ERROR_PREFIX lines go (logs go to stdout)
    ) -> None:
        self.argv = argv
        self.index = index
        self.workers = workers
        self.max_connections = max_connections
        self.broken = broken
        self.socket_fd = socket_fd
        self.status_fd = status_fd

    def fields(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    def with_status_fd(self, status_fd: int) -> FrontendOrder:
        return FrontendOrder(
            argv=self.argv,
            index=self.index,
            workers=self.workers,
            max_connections=self.max_connections,
            broken=self.broken,
            socket_fd=self.socket_fd,
            status_fd=status_fd,
        )

    def to_json(self) -> bytes:
        return json.dumps(self.fields()).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FrontendOrder:
        return cls(**json.loads(data))
