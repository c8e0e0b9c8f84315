"""The routing tables of wws (spec section 3), as unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.project.discovery import WorkerFile, discover, glob_to_regex
from supervisor.project.routes import (
    RouteKind,
    RouteTable,
    decode_unreserved,
    format_prefix,
    normalize_request_path,
    route_path_for,
)


def _worker(relative: str) -> WorkerFile:
    return WorkerFile(relative, Path("/p") / relative, "wasm")


@pytest.mark.parametrize(
    ("file", "route"),
    [
        ("index.wasm", "/"),
        ("examples/index.wasm", "/examples"),
        ("examples/api/handler.wasm", "/examples/api/handler"),
        ("examples/index/index.wasm", "/examples"),
        ("[...slug]/index.wasm", "/[...slug]"),
        ("a.b.wasm", "/a.b"),
        ("./root/page.wasm", "/root/page"),
    ],
)
def test_file_to_route(file: str, route: str) -> None:
    assert route_path_for(file) == route


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", ""),
        ("app", "/app"),
        ("app/", "/app"),
        ("/app/", "/app"),
        ("/app", "/app"),
        ("app/test", "/app/test"),
        ("app\\test\\", "/app/test"),
        ("/", ""),
    ],
)
def test_prefix_format(given: str, expected: str) -> None:
    assert format_prefix(given) == expected


def test_prefix_applies_to_routes() -> None:
    assert route_path_for("api/hello.wasm", "app") == "/app/api/hello"
    # wws would make this "/app/", which trimmed request paths can never reach.
    assert route_path_for("index.wasm", "/app/") == "/app"


PARAMS_PROJECT = [
    "[id].wasm",
    "fixed.wasm",
    "[id]/fixed.wasm",
    "[id]/sub.wasm",
    "sub/[id].wasm",
    "sub/[...all].wasm",
    "sub/sub/[...all].wasm",
]


def test_sort_order_matches_wws() -> None:
    table = RouteTable(_worker(f) for f in PARAMS_PROJECT)
    assert [r.path for r in table.routes] == [
        "/fixed",
        "/[id]",
        "/sub/[id]",
        "/[id]/fixed",
        "/[id]/sub",
        "/sub/sub/[...all]",
        "/sub/[...all]",
    ]
    assert [r.kind for r in table.routes] == [RouteKind.STATIC] + [RouteKind.DYNAMIC] * 4 + [
        RouteKind.TAIL
    ] * 2


@pytest.mark.parametrize(
    ("request_path", "route", "params"),
    [
        ("/any", "/[id]", {"id": "any"}),
        ("/fixed", "/fixed", {}),
        ("/any/fixed", "/[id]/fixed", {"id": "any"}),
        ("/any/sub", "/[id]/sub", {"id": "any"}),
        ("/sub/any", "/sub/[id]", {"id": "any"}),
        ("/sub/any/catch/all/routes", "/sub/[...all]", {"all": "any/catch/all/routes"}),
        ("/sub/sub/any/catch/all/routes", "/sub/sub/[...all]", {"all": "any/catch/all/routes"}),
        ("/donot/exist", None, None),
        ("/caf%C3%A9", "/[id]", {"id": "café"}),
    ],
)
def test_best_route(request_path: str, route: str | None, params: dict[str, str] | None) -> None:
    table = RouteTable(_worker(f) for f in PARAMS_PROJECT)
    found = table.resolve(request_path)
    if route is None:
        assert found is None
    else:
        assert found is not None
        assert (found[0].path, found[1]) == (route, params)


def test_root_catch_all_matches_slash_and_sub_catch_all_needs_a_segment() -> None:
    table = RouteTable([_worker("[...slug].wasm"), _worker("other/[...slug].wasm")])
    root = table.resolve("/")
    assert root is not None and root[0].path == "/[...slug]" and root[1] == {"slug": ""}
    other = table.resolve("/other")
    assert other is not None and other[0].path == "/[...slug]" and other[1] == {"slug": "other"}
    deep = table.resolve("/other/a/b")
    assert deep is not None and deep[0].path == "/other/[...slug]" and deep[1] == {"slug": "a/b"}


def test_dynamic_segment_is_never_empty() -> None:
    table = RouteTable([_worker("[id].wasm")])
    assert table.resolve("/") is None


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("/", "/"), ("", "/"), ("//a///b/", "/a/b"), ("/a/", "/a"), ("/a", "/a")],
)
def test_request_path_normalization(raw: str, normalized: str) -> None:
    assert normalize_request_path(raw) == normalized


# The discovery tree of wws's crates/router/tests/data/files, rebuilt here.
FILES_TREE = [
    "examples.wasm",
    "index.wasm",
    "public.wasm",
    "_index.wasm",
    "home.wat",
    "_home.wat",
    "_internal/index.wasm",
    "public/index.wasm",
    "examples/public.wasm",
    "examples/index/index.wasm",
    "examples/home.wat",
    "examples/index/home.wat",
    "examples/_index/index.wasm",
    "examples/index/public/index.wasm",
    ".wws/workers/index.wasm",
    "notes.txt",
]


@pytest.fixture
def files_tree(tmp_path: Path) -> Path:
    for relative in FILES_TREE:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    return tmp_path


def _found(root: Path, ignore: tuple[str, ...] = ()) -> set[str]:
    return {w.relative for w in discover(root, ignore)}


def test_walk_default(files_tree: Path) -> None:
    assert _found(files_tree) == {
        "examples.wasm",
        "index.wasm",
        "public.wasm",
        "home.wat",
        "examples/public.wasm",
        "examples/index/index.wasm",
        "examples/home.wat",
        "examples/index/home.wat",
    }


def test_walk_subfolder(files_tree: Path) -> None:
    assert _found(files_tree / "examples") == {
        "public.wasm",
        "index/index.wasm",
        "home.wat",
        "index/home.wat",
    }


def test_walk_ignore(files_tree: Path) -> None:
    assert _found(files_tree, ("**/examples/**",)) == {
        "examples.wasm",
        "index.wasm",
        "public.wasm",
        "home.wat",
    }


def test_walk_ignore_multiple_patterns(files_tree: Path) -> None:
    assert _found(files_tree, ("**/index/**", "*/*pub*")) == {
        "examples.wasm",
        "index.wasm",
        "public.wasm",
        "home.wat",
        "examples/home.wat",
    }


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.wasm", "a.wasm", True),
        ("*.wasm", "dir/a.wasm", False),
        ("**/*.wasm", "dir/a.wasm", True),
        ("**/*.wasm", "a.wasm", True),
        ("drafts/**", "drafts/x/y.wasm", True),
        ("a?.wasm", "ab.wasm", True),
        ("[ab].wasm", "c.wasm", False),
    ],
)
def test_glob(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_to_regex(pattern).match(path)) is matches


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b"/plain", "/plain"),
        (b"/caf%C3%A9", "/café"),
        (b"/%61bc", "/abc"),
        (b"/a%2Fb", "/a%2Fb"),  # an encoded slash never becomes a separator
        (b"/a%2525", "/a%2525"),  # and nothing is decoded twice
        (b"/%2e%2e/x", "/../x"),  # dots are unreserved; the static layer refuses ".." itself
        (b"/bad%zz", "/bad%zz"),
        (b"/end%4", "/end%4"),
    ],
)
def test_decode_unreserved(raw: bytes, decoded: str) -> None:
    assert decode_unreserved(raw) == decoded


def test_encoded_slash_stays_inside_one_param() -> None:
    table = RouteTable([_worker("[id].wasm")])
    found = table.resolve(decode_unreserved(b"/a%2Fb"))
    assert found is not None and found[1] == {"id": "a/b"}
