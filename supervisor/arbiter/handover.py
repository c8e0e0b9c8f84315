"""Handing the started server over to the lean arbiter program.

With several front ends the startup (reading the configuration, loading and
checking the project, compiling every worker, binding the ports) needs most
of the server's modules, but supervising the front ends afterwards needs few.
A Python process never gives back what it imported, so instead of keeping
them for the months the server runs, the startup process replaces itself
(``os.execv``, same pid: systemd's ``MAINPID`` and ``$NOTIFY_SOCKET`` stay
right) with ``python -I -m supervisor.arbiter.main``, which imports only what
supervising needs (``supervisor/arbiter/arbiter.py``).

What crosses the exec:

* the listening sockets (and the admin listener's), as inherited fds;
* an :class:`ArbiterOrder`, as JSON in an anonymous file (a memfd) whose fd
  is named on the new command line: a pipe could fill up before anyone reads
  it, the order holds every route's line;
* stdout, stderr and the environment (the metrics folder, the notify socket);
* the signal mask: SIGTERM, SIGINT and SIGHUP are blocked across the exec,
  so one sent meanwhile waits for the arbiter's handler instead of killing
  the half-started process (``Arbiter`` unblocks them once it listens).

This module imports the standard library only (and not ``dataclasses``,
which brings ``inspect`` and ``ast`` along: 1.4 MiB the arbiter would
carry for months): both sides use it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, NamedTuple, NoReturn

# Blocked across the exec, unblocked by the arbiter once it listens for them.
HANDED_OVER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class AdminOrder(NamedTuple):
    """The admin listener, bound and with its metrics folder set up."""

    socket_fd: int
    folder: str
    frontends: int
    token: str | None
    panel_default: bool


class ArbiterOrder(NamedTuple):
    """Everything the arbiter program needs from the startup process."""

    argv: list[str]  # the command line as given: front ends and reloads parse it again
    socket_fds: list[int]  # one listening socket per front end, all on one port
    broken: list[str]  # workers that failed to load at compile time
    workers: int  # runners in all, split across the front ends
    max_connections: int  # for the whole server
    graceful_timeout_s: float
    log_level: str
    log_format: str
    started: float  # time.monotonic() when startup began (the clock is system-wide)
    ready_lines: list[str]  # printed once every front end is ready, after "Workers loaded in"
    ready_status: str  # the sd_notify STATUS sent with READY=1
    admin: AdminOrder | None = None

    def to_json(self) -> bytes:
        admin = self.admin._asdict() if self.admin is not None else None
        return json.dumps({**self._asdict(), "admin": admin}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ArbiterOrder:
        fields: Any = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        admin = fields.pop("admin", None)
        return cls(**fields, admin=AdminOrder(**admin) if admin is not None else None)


def arbiter_command(order_fd: int) -> list[str]:
    # -I: the current folder and PYTHON* variables must not decide which
    # "supervisor" package starts (the project folder may have one).
    return [sys.executable, "-I", "-m", "supervisor.arbiter.main", "--order-fd", str(order_fd)]


def hand_over(order: ArbiterOrder) -> NoReturn:
    """Replace this process with the arbiter program, passing ``order`` and
    its fds; returns only by raising.

    Raises:
        OSError: the order could not be written or the exec failed (this
            process is unchanged then, and keeps its fds).
    """
    fds = [*order.socket_fds, *([order.admin.socket_fd] if order.admin is not None else [])]
    order_fd = os.memfd_create("wws-arbiter-order", 0)  # no MFD_CLOEXEC: the arbiter reads it
    try:
        os.write(order_fd, order.to_json())
        os.lseek(order_fd, 0, os.SEEK_SET)
        for fd in fds:
            os.set_inheritable(fd, True)
        # What is still buffered would be lost with this process's memory.
        sys.stdout.flush()
        sys.stderr.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDED_OVER_SIGNALS)
        try:
            command = arbiter_command(order_fd)
            os.execv(command[0], command)
        finally:  # only when the exec failed
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDED_OVER_SIGNALS)
    finally:
        for fd in fds:
            os.set_inheritable(fd, False)
        os.close(order_fd)


def read_order(order_fd: int) -> ArbiterOrder:
    """The order the startup process left (closes ``order_fd``); its fds are
    made private to this process again (front ends get theirs explicitly).

    Raises:
        ValueError: the order is not what :func:`hand_over` writes.
        OSError: ``order_fd`` cannot be read.
    """
    with os.fdopen(order_fd, "rb") as stream:
        data = stream.read()
    try:
        order = ArbiterOrder.from_json(data)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not an arbiter order: {exc}") from None
    for fd in [*order.socket_fds, *([order.admin.socket_fd] if order.admin is not None else [])]:
        os.set_inheritable(fd, False)
    return order
