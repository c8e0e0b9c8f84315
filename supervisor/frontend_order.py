"""What the arbiter and a front-end process say to each other, in a module
of its own so the arbiter can import it without the front end's HTTP stack.

The arbiter writes a :class:`FrontendOrder` as JSON on the front end's stdin;
the front end answers with one line each on its status pipe: ready,
draining, or the startup error that stopped it.
"""

from __future__ import annotations

import dataclasses
import json

READY_LINE = b"ready\n"
DRAINING_LINE = b"draining\n"  # no new connection reaches this front end any more
ERROR_PREFIX = b"error: "


@dataclasses.dataclass(frozen=True)
class FrontendOrder:
    """What the arbiter tells a front-end process (as JSON on its stdin)."""

    argv: list[str]  # the wws-supervisor command line, as the user gave it
    index: int
    workers: int  # this front end's share of the runners
    max_connections: int
    broken: list[str]  # workers that failed to load at compile time
    socket_fd: int
    status_fd: int  # where READY_LINE or ERROR_PREFIX lines go (logs go to stdout)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FrontendOrder:
        return cls(**json.loads(data))
