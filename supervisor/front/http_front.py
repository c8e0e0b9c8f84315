"""The HTTP front: our own accept loop around hypercorn's per-connection
protocol handling (``hypercorn.trio.tcp_server.TCPServer``).

Why not ``hypercorn.trio.serve``: it accepts without bound, so enough idle or
slow clients exhaust the process's descriptors, and then nothing works, not
even spawning a replacement runner. Here every connection holds a slot;
beyond ``max_connections`` a client gets a short 503 and is closed at once,
and descriptors stay free for the pool.

Shutdown (:class:`Shutdown`) stops accepting, lets open connections finish
within the grace period (idle keep-alive connections close at once), then
cancels what is left. A second request to stop shortens the grace to zero.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

import hypercorn.config
import trio
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from supervisor.front.access_log import releasing_unanswered

log = logging.getLogger(__name__)

_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 32\r\n"
    b"retry-after: 1\r\nconnection: close\r\n\r\nThe server is busy, retry later\n"
)
# Accept errors that mean "out of a resource right now": wait and retry.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_TRANSIENT_RETRY_S = 0.1
_REFUSAL_LOG_EVERY_S = 10.0
# Refused connections half-closed and drained before closing, at most this
# many at once and for this long (beyond that they are simply closed).
_MAX_LINGERING = 32
_LINGER_S = 1.0
# At shutdown, how long freshly accepted connections get to send their request.
_SETTLE_S = 0.5


class Shutdown:
    """When to stop accepting and how long what is running may go on.

    ``begin(grace)`` may be called more than once; each call can only bring
    the final deadline closer. Scopes registered with :meth:`bind` follow it.
    """

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.deadline = math.inf
        self._scopes: list[trio.CancelScope] = []
        self._listeners: list[Any] = []

    def begin(self, grace_s: float) -> None:
        self.deadline = min(self.deadline, trio.current_time() + grace_s)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self.deadline)
        for listener in self._listeners:
            listener(self.deadline)
        self.requested.set()

    def bind(self, scope: trio.CancelScope) -> None:
        self._scopes.append(scope)
        scope.deadline = min(scope.deadline, self.deadline)

    def on_deadline(self, listener: Any) -> None:
        """Call ``listener(deadline)`` now (if begun) and whenever the deadline moves."""
        self._listeners.append(listener)
        if self.requested.is_set():
            listener(self.deadline)


class HttpFront:
    def __init__(
        self, app: Any, config: hypercorn.config.Config, sock: socket.socket, max_connections: int
    ) -> None:
        self._app = wrap_app(releasing_unanswered(app, config.log), config.wsgi_max_body_size, "asgi")
        # TLS when the config names a certificate; ALPN then offers h2 first.
        self._ssl_context = config.create_ssl_context()
        self._config = config
        self._sock = sock
        self._sock.setblocking(False)
        self._limit = max_connections
        self._context = WorkerContext(None)
        self.active = 0
        self._no_connections = trio.Event()
        self._no_connections.set()
        self.refused = 0
        self._lingering = 0
        self._last_refusal_log = -math.inf

    async def serve(
        self,
        shutdown: Shutdown,
        *,
        stopped_accepting: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until ``shutdown`` begins, then drain within its deadline
        (``stopped_accepting`` is called as soon as no new connection can
        arrive here). The listening socket is closed when this returns."""
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as acceptor:
                    acceptor.start_soon(self._accept_loop, connections)
                    task_status.started()
                    await shutdown.requested.wait()
                    acceptor.cancel_scope.cancel()
                # Our copy of the socket: other processes may still hold it
                # (a reload's new front end); otherwise the kernel now refuses.
                self._sock.close()
                if stopped_accepting is not None:
                    stopped_accepting()
                shutdown.bind(connections.cancel_scope)
                # Connections accepted a moment ago look idle until their
                # request arrives; closing idle ones now would drop those
                # requests. Give them a moment to arrive first.
                with trio.move_on_at(min(shutdown.deadline, trio.current_time() + _SETTLE_S)):
                    await self._no_connections.wait()
                # Idle keep-alive connections close when this is set.
                await self._context.terminated.set()
        finally:
            self._sock.close()

    async def _accept_loop(self, connections: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    raise
                log.warning("cannot accept a connection: %s; retrying", exc.strerror)
                await trio.sleep(_TRANSIENT_RETRY_S)
                continue
            if self.active >= self._limit:
                self._refuse(conn, connections)
                continue
            self.active += 1
            self._no_connections = trio.Event()
            connections.start_soon(self._handle, conn)

    def _refuse(self, conn: socket.socket, connections: trio.Nursery) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(_REFUSAL)
        if self._lingering < _MAX_LINGERING:
            self._lingering += 1
            connections.start_soon(self._linger_then_close, conn)
        else:
            conn.close()
        now = trio.current_time()
        if now - self._last_refusal_log >= _REFUSAL_LOG_EVERY_S:
            self._last_refusal_log = now
            log.warning(
                "%d connections open (the --max-connections limit): new clients get 503 (%d so far)",
                self.active,
                self.refused,
            )

    async def _linger_then_close(self, conn: socket.socket) -> None:
        # Closing a socket with unread request bytes sends a reset, which can
        # destroy the 503 before the client reads it: half-close, read what the
        # client still sends for a moment, then close.
        try:
            with contextlib.suppress(OSError), trio.move_on_after(_LINGER_S):
                conn.shutdown(socket.SHUT_WR)
                while True:
                    await trio.lowlevel.wait_readable(conn)
                    if not conn.recv(65536):
                        break
        finally:
            conn.close()
            self._lingering -= 1

    async def _handle(self, conn: socket.socket) -> None:
        try:
            stream: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            if self._ssl_context is not None:
                # hypercorn does the handshake (bounded by its ssl_handshake_timeout).
                stream = trio.SSLStream(stream, self._ssl_context, server_side=True, https_compatible=True)
            await TCPServer(self._app, self._config, self._context, ConnectionState({}), stream)  # type: ignore[arg-type]
        finally:
            self.active -= 1
            if self.active == 0:
                self._no_connections.set()
