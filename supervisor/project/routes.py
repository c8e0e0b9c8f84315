"""wws's filesystem routing: file -> route path, route ordering and matching.

* ``api/index.wasm`` -> ``/api``; every component named ``index`` is dropped.
* ``[id]`` is a dynamic segment (one non-empty path component), ``[...slug]`` a
  catch-all (the rest of the path, possibly empty, slashes kept).
* Routes are sorted once: all static, then dynamic, then catch-all; within a
  kind by depth and then segment by segment (see :func:`_sort_key`).
* A request is served by the first route in that order whose pattern matches.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from urllib.parse import unquote

from supervisor.project.discovery import WorkerFile

_PARAM = re.compile(r"^\[(\.{3})?(\w+)\]$")


class RouteKind(enum.IntEnum):
    STATIC = 0
    DYNAMIC = 1
    TAIL = 2


class SegmentKind(enum.IntEnum):
    STATIC = 0
    DYNAMIC = 1
    TAIL = 2


def segment_kind(segment: str) -> SegmentKind:
    if segment.startswith("[..."):
        return SegmentKind.TAIL
    if "[" in segment:
        return SegmentKind.DYNAMIC
    return SegmentKind.STATIC


def format_prefix(prefix: str) -> str:
    """wws's prefix normalisation: ``app``, ``app/``, ``/app/`` -> ``/app``; ``""`` stays ``""``."""
    prefix = prefix.replace("\\", "/")
    if not prefix:
        return ""
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    if prefix.endswith("/"):
        prefix = prefix[:-1]
    return prefix


def route_path_for(relative_file: str, prefix: str = "") -> str:
    """The route a worker file serves, e.g. ``examples/index.wasm`` -> ``/examples``."""
    path = PurePosixPath(relative_file.replace("\\", "/"))
    parts = [p for p in path.with_suffix("").parts if p not in (".", "..", "/", "index")]
    route = "/" + "/".join(parts)
    prefix = format_prefix(prefix)
    if prefix:
        # wws would produce "/app/" for a root index under a prefix, which the
        # trailing-slash trimming of requests makes unreachable; serve "/app".
        return prefix if route == "/" else prefix + route
    return route


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    path: str
    worker: WorkerFile
    kind: RouteKind
    depth: int  # number of "/" in path, as wws counts it
    segments: tuple[str, ...]
    pattern: re.Pattern[str]
    param_names: tuple[str, ...]

    @classmethod
    def build(cls, path: str, worker: WorkerFile) -> Route:
        segments = tuple(s for s in path.split("/") if s)
        kinds = [segment_kind(s) for s in segments]
        kind = (
            RouteKind.TAIL
            if SegmentKind.TAIL in kinds
            else RouteKind.DYNAMIC
            if SegmentKind.DYNAMIC in kinds
            else RouteKind.STATIC
        )
        regex, names = "", []
        for segment in segments:
            match = _PARAM.match(segment)
            if match and match.group(1):
                # A catch-all also takes an empty rest: /[...slug] matches "/".
                regex += "/(.*)"
                names.append(match.group(2))
            elif match:
                regex += "/([^/]+)"
                names.append(match.group(2))
            else:
                regex += "/" + re.escape(segment)
        return cls(
            path, worker, kind, path.count("/"), segments, re.compile((regex or "/") + r"\Z"), tuple(names)
        )

    def match(self, request_path: str) -> dict[str, str] | None:
        """The route params if this route serves ``request_path``, else None."""
        found = self.pattern.match(request_path)
        if found is None:
            return None
        return {name: unquote(value) for name, value in zip(self.param_names, found.groups(), strict=True)}


def _segment_key(segment: str) -> tuple[int, str]:
    return (segment_kind(segment), segment)


def _sort_key(route: Route) -> tuple[int, int, tuple[tuple[int, str], ...]]:
    if route.kind is RouteKind.STATIC:
        # Static routes compare by depth only; the stable sort keeps discovery order.
        return (route.kind, route.depth, ())
    segment_keys = tuple(_segment_key(s) for s in route.segments)
    if route.kind is RouteKind.TAIL:
        # Deeper catch-alls first, so /sub/sub/[...all] wins over /sub/[...all].
        return (route.kind, -route.depth, segment_keys)
    return (route.kind, route.depth, segment_keys)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def decode_unreserved(raw_path: bytes) -> str:
    """Decode the percent-escapes that cannot change a path's meaning (unreserved
    ASCII and non-ASCII bytes), so ``/caf%C3%A9`` reaches ``café.wasm``. Escapes of
    reserved characters (``%2F``, ``%25``, ...) stay encoded, so they can neither
    create path segments nor be decoded twice; params are unquoted once, later."""
    if b"%" not in raw_path:
        return raw_path.decode("utf-8", "replace")
    out = bytearray()
    i, size = 0, len(raw_path)
    while i < size:
        byte = raw_path[i]
        if byte == 0x25 and i + 2 < size and raw_path[i + 1] in _HEX and raw_path[i + 2] in _HEX:
            value = int(raw_path[i + 1 : i + 3], 16)
            if value in _UNRESERVED or value >= 0x80:
                out.append(value)
                i += 3
                continue
        out.append(byte)
        i += 1
    return out.decode("utf-8", "replace")


def normalize_request_path(raw_path: str) -> str:
    """Merge repeated slashes and drop a trailing one, as wws's NormalizePath::trim."""
    path = re.sub("/{2,}", "/", raw_path or "/")
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path if path.startswith("/") else "/" + path


class RouteTable:
    def __init__(self, workers: Iterable[WorkerFile], prefix: str = "") -> None:
        routes = [Route.build(route_path_for(w.relative, prefix), w) for w in workers]
        self.routes: list[Route] = sorted(routes, key=_sort_key)

    def resolve(self, request_path: str) -> tuple[Route, dict[str, str]] | None:
        """The first route (in sorted order) that serves the normalized ``request_path``."""
        for route in self.routes:
            params = route.match(request_path)
            if params is not None:
                return route, params
        return None
