"""The access log: one line per request, as wws's logger writes it, through
hypercorn's access logger, without its false "no answer" lines.

hypercorn finishes a response by sending its end, then marking the stream
closed and logging it. A client that closes as soon as it has the whole body
(curl, ``Connection: close`` clients) can close in between; hypercorn then
logs the request once as unanswered (status ``-``) and once more with its
status. Here an unanswered line waits until the request's app has returned:
if the answer was logged meanwhile, the false line is dropped; otherwise the
client really left first, and the line is written then.
"""

from __future__ import annotations

from typing import Any

import hypercorn.config
from hypercorn.logging import Logger
from hypercorn.typing import ResponseSummary, WWWScope


class AccessLog(Logger):
    """hypercorn's logger with the unanswered lines held back (see the module docstring)."""

    def __init__(self, config: hypercorn.config.Config) -> None:
        super().__init__(config)
        self._unanswered: dict[int, tuple[WWWScope, float]] = {}

    async def access(self, request: WWWScope, response: ResponseSummary | None, request_time: float) -> None:
        if response is None:
            self._unanswered[id(request)] = (request, request_time)
            return
        self._unanswered.pop(id(request), None)
        self._write(request, response, request_time)

    def app_returned(self, scope: WWWScope) -> None:
        """The request's app is done: an unanswered line still held is true."""
        held = self._unanswered.pop(id(scope), None)
        if held is not None:
            self._write(held[0], None, held[1])

    def _write(self, request: WWWScope, response: ResponseSummary | None, request_time: float) -> None:
        if self.access_logger is not None:
            self.access_logger.info(self.access_log_format, self.atoms(request, response, request_time))


def releasing_unanswered(app: Any, logger: Logger) -> Any:
    """``app``, telling ``logger`` (when it is an :class:`AccessLog`) when each request's app returns."""
    if not isinstance(logger, AccessLog) or logger.access_logger is None:
        return app

    async def logged(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                logger.app_returned(scope)

    return logged
