"""Routing for WAGI and serverless-wasm workers, and the per-request facts a
WAGI module's CGI environment is built from.

WAGI: a route is exact (``/foo`` is not ``/foo/``) or a prefix (``/foo/...``
serves ``/foo``, ``/foo/`` and ``/foo/x``, not ``/foobar``), matched on the
raw request path, any method, first match in table order (each module's
``_routes`` sub-routes, last printed first, then the module's own route),
after the built-in ``/healthz``. serverless-wasm: the method and the request
path (without the query string) both match exactly.

:class:`ContractRoutes` is a :class:`RouteTable`: in a wws folder with
``protocol = "wagi"`` workers, its wws routes serve everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ipc.cgi import CgiRequest
from supervisor.project.discovery import WorkerFile
from supervisor.project.routes import Route, RouteTable, decode_unreserved, normalize_request_path

HEALTHZ = "/healthz"


@dataclasses.dataclass(frozen=True, slots=True)
class Builtin:
    """An answer the server gives itself (WAGI's ``/healthz``)."""

    status: int
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ContractRoute:
    route: Route  # the worker, and the path shown at startup and in logs
    pattern: str  # the route's text (X_MATCHED_ROUTE), or serverless url_path
    entrypoint: str
    method: str | None = None  # serverless-wasm: the one method it answers
    cgi: bool = True  # WAGI: the request carries the CGI facts

    @property
    def prefix(self) -> str | None:
        """The base of a ``/...`` route ("" for ``/...``), None for an exact one."""
        return self.pattern[: -len("/...")] if self.pattern.endswith("/...") else None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        base = self.prefix
        if base is None:
            return path == self.pattern
        return path == base or path.startswith(base + "/")

    def script_name(self) -> str:
        base = self.prefix
        return self.pattern if base is None else (base or "/")

    def raw_path_info(self, path: str) -> str:
        base = self.prefix
        return "" if base is None else path[len(base) :]


def wagi_route(worker: WorkerFile, pattern: str, entrypoint: str) -> ContractRoute:
    return ContractRoute(Route.build(pattern, worker), pattern, entrypoint)


def join_route(parent: str, child: str) -> str:
    """A ``_routes`` sub-route under its module's route, with exactly one ``/``
    between them; the parent's ``/...`` is dropped, the child's kept."""
    parent = parent.removesuffix("/...").rstrip("/")
    return parent + "/" + child.lstrip("/")


def parse_routes_output(text: str) -> list[tuple[str, str]]:
    """``_routes`` output: one ``<pattern> <entrypoint>`` per line.

    Raises:
        ValueError: empty output, or a line without exactly two fields.
    """
    found = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"the _routes line {line.strip()[:80]!r} is not '<route> <entrypoint>'")
        found.append((fields[0], fields[1]))
    if not found:
        raise ValueError("the _routes export printed no routes")
    return found


class ContractRoutes(RouteTable):
    def __init__(
        self,
        entries: list[ContractRoute],
        wws_workers: Iterable[WorkerFile] = (),
        prefix: str = "",
        *,
        healthz: bool = False,
        raw_paths: bool = True,
    ) -> None:
        super().__init__(wws_workers, prefix)
        self._wws = self.routes
        self.entries = entries
        self.routes = [entry.route for entry in entries] + self._wws
        self._healthz = healthz
        # Config files match the raw path, as WAGI does; in a wws folder the
        # path is normalised first, like every other route there.
        self._raw_paths = raw_paths

    def resolve(self, request_path: str) -> tuple[Route, dict[str, str]] | None:
        """The wws route (sorted order) for ``request_path``, as RouteTable."""
        for route in self._wws:
            params = route.match(request_path)
            if params is not None:
                return route, params
        return None

    def match(self, scope: dict[str, Any]) -> Builtin | tuple[Route, dict[str, str]] | None:
        """What serves this request among the contract routes, with the
        params the runner needs, or None."""
        raw = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.split(b"?", 1)[0].decode("latin-1")
        path = (
            raw_path if self._raw_paths else normalize_request_path(decode_unreserved(raw.split(b"?", 1)[0]))
        )
        if self._healthz and path == HEALTHZ:
            return Builtin(200, b"OK")
        method = scope["method"]
        for entry in self.entries:
            if entry.matches(method, path):
                if not entry.cgi:
                    return entry.route, {}
                return entry.route, cgi_request(scope, entry, path).to_params()
        return None


def _split_host(host: str) -> tuple[str, str]:
    if host.startswith("["):  # an IPv6 literal keeps its brackets
        end = host.find("]")
        if end > 0:
            rest = host[end + 1 :]
            return host[: end + 1], rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port


def cgi_request(scope: dict[str, Any], entry: ContractRoute, path: str) -> CgiRequest:
    """The facts of this request that its CGI environment is built from.
    SERVER_NAME and SERVER_PORT come from the Host header, piece by piece,
    else from the address the server listens on."""
    listen_host, listen_port = "localhost", "80"
    if scope.get("server"):
        listen_host, listen_port = str(scope["server"][0]), str(scope["server"][1])
    name, port = "", ""
    for header, value in scope["headers"]:
        if header == b"host":
            name, port = _split_host(value.decode("latin-1").strip())
    client = scope.get("client")
    version = scope.get("http_version", "1.1")
    return CgiRequest(
        entrypoint=entry.entrypoint,
        matched_route=entry.pattern,
        script_name=entry.script_name(),
        raw_path_info=entry.raw_path_info(path),
        raw_path=path,
        query=scope.get("query_string", b"").decode("latin-1"),
        remote_addr=str(client[0]) if client else "",
        server_name=name or listen_host,
        server_port=port or listen_port,
        protocol="HTTP/2.0" if version == "2" else f"HTTP/{version}",
        scheme=scope.get("scheme", "http"),
    )
