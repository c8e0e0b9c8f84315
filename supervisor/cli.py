"""``wws-supervisor``: the command line (wws-compatible flags plus our limits)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supervisor import __version__
from supervisor.config import (
    Limits,
    PoolSettings,
    ServerConfig,
    default_cache_dir,
    default_max_connections,
    default_runtimes_dir,
)
from supervisor.ops.logs import error_line, setup_logging, startup_output
from supervisor.ops.options_file import OptionsFileError, read_options

_DESCRIPTION = """\
Serve a folder of WebAssembly workers over HTTP, like Wasm Workers Server (wws),
but with every worker running in a supervised pool of sandboxed processes under
CPU (fuel), memory and wall-clock limits.

Routes come from file paths: api/hello.wasm -> /api/hello, index.wasm -> /,
users/[id].wasm -> /users/42 (params), docs/[...path].wasm -> any depth.
Files in public/ are served as static files. Names starting with _ are ignored.
"""

_EPILOG = """\
examples:
  wws-supervisor examples/                 serve the bundled examples on :8080
  wws-supervisor . -p 0                    pick a free port (printed at startup)
  wws-supervisor site --prefix /app        mount every route under /app
  wws-supervisor . --timeout-ms 500 --memory-mb 32 --workers 4
  wws-supervisor cache info                what the compiled-module cache holds
  wws-supervisor runtimes install python   enable .py workers (ruby: .rb); also list, uninstall
  wws-supervisor cache prune [--all]       drop entries no worker uses any more

failure statuses: 500 trap, bad output or memory limit; 502 runner died;
503 overloaded (with Retry-After); 504 fuel or time limit; 413 body too large.
The response header x-wws-failure names the failure; details go to the log.
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _non_negative(text: str) -> int:
    if text.strip() == "0":
        return 0
    return _positive(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is outside 0-65535")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9090
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9090)")
    return host, _port(port)


def build_parser() -> argparse.ArgumentParser:
    defaults_limits, defaults_pool = Limits(), PoolSettings()
    parser = argparse.ArgumentParser(
        prog="wws-supervisor",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path",
        nargs="?",
        default=".",
        help="project folder to serve, or a WAGI modules.toml or serverless-wasm config file (default: .)",
    )
    parser.add_argument("-V", "--version", action="version", version=f"wws-supervisor {__version__}")
    http = parser.add_argument_group("server (as in wws)")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    http.add_argument(
        "-p", "--port", type=_port, default=8080, help="port to listen on; 0 picks a free one (default: 8080)"
    )
    http.add_argument("--prefix", default="", help="path prefix for every route and for public/ (e.g. /app)")
    http.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip worker files matching GLOB, relative to PATH (repeatable), e.g. '**/drafts/**'",
    )
    wagi = parser.add_argument_group("WAGI (when PATH is a modules.toml)")
    wagi.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for every WAGI module (repeatable; wins over --env-file)",
    )
    wagi.add_argument(
        "--env-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="file of NAME=VALUE lines for every WAGI module (repeatable)",
    )
    limits = parser.add_argument_group("limits (defaults for every worker)")
    limits.add_argument(
        "--fuel",
        type=_positive,
        default=defaults_limits.fuel,
        help=f"wasm fuel per request, about one unit per instruction (default: {defaults_limits.fuel})",
    )
    limits.add_argument(
        "--memory-mb",
        type=_positive,
        default=defaults_limits.memory_mb,
        help=f"linear memory per request in MiB (default: {defaults_limits.memory_mb})",
    )
    limits.add_argument(
        "--timeout-ms",
        type=_positive,
        default=defaults_limits.timeout_ms,
        help=f"wall-clock limit per request (default: {defaults_limits.timeout_ms})",
    )
    limits.add_argument(
        "--max-body-kb",
        type=_positive,
        default=256,
        help="largest request body accepted, larger gets 413 (default: 256)",
    )
    limits.add_argument(
        "--body-timeout-ms",
        type=_positive,
        default=30_000,
        help="time a client has to send its whole request body, else 408 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=_positive,
        default=None,
        help="open client connections; beyond it new clients get 503 at once "
        "(default: what the descriptor limit leaves room for, at most 4096)",
    )
    pool = parser.add_argument_group("runner pool")
    pool.add_argument(
        "--frontends",
        type=_positive,
        default=None,
        metavar="N",
        help="HTTP front-end processes sharing the port, each with its share of the runners "
        "(default: one per core with at least two runners each, at most 4; 1 with the in-memory KV store)",
    )
    pool.add_argument(
        "-w",
        "--workers",
        type=_positive,
        default=None,
        help=f"runner processes (default: CPU count, here {defaults_pool.workers}, "
        "and at least two per front end)",
    )
    pool.add_argument(
        "--queue-size",
        type=_positive,
        default=defaults_pool.queue_size,
        help=f"requests that may wait for a runner before 503 (default: {defaults_pool.queue_size})",
    )
    pool.add_argument(
        "--queue-timeout-ms",
        type=_positive,
        default=int(defaults_pool.queue_timeout_s * 1000),
        help="longest wait for a free runner before 503 (default: %(default)s)",
    )
    pool.add_argument(
        "--max-requests",
        type=_positive,
        default=defaults_pool.max_requests,
        help="recycle a runner after this many requests, plus jitter (default: %(default)s)",
    )
    pool.add_argument(
        "--demote-after-ms",
        type=_non_negative,
        default=defaults_pool.demote_after_ms,
        help="a request that has used this much CPU runs at the lowest CPU priority from then on, "
        "so it slows down nothing else; 0 never demotes (default: %(default)s)",
    )
    pool.add_argument(
        "--max-runner-rss-mb",
        type=_positive,
        default=defaults_pool.max_runner_rss_mb,
        help="recycle a runner whose RSS passes this (default: %(default)s)",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time allowed for in-flight requests; a second signal cuts it short"
        " (default: 10)",
    )
    ops.add_argument(
        "--cache-dir", type=Path, default=None, help=f"compiled-module cache (default: {default_cache_dir()})"
    )
    ops.add_argument(
        "--runtimes-dir",
        type=Path,
        default=None,
        help=f"where `runtimes install` put the Python and Ruby runtimes (default: {default_runtimes_dir()})",
    )
    ops.add_argument(
        "--cache-max-mb",
        type=_positive,
        default=512,
        help="cache size cap; least recently used entries go first (default: %(default)s)",
    )
    ops.add_argument(
        "--kv",
        default="memory://",
        metavar="URL",
        help="KV store: memory:// (default, lost on restart), sqlite:///path/kv.db, redis://host:port/db",
    )
    ops.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file holding any of these options by long name (memory-mb = 64); flags override it; "
        "re-read on SIGHUP",
    )
    ops.add_argument(
        "--watch", action="store_true", help="reload when a file of the project changes (for development)"
    )
    ops.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="do not log one line per request (logged by default, as wws does)",
    )
    ops.add_argument("--access-log", action="store_true", help=argparse.SUPPRESS)  # the old opt-in, kept
    ops.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    ops.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines on stdout as text, or as one JSON object per line (default: text)",
    )
    http.add_argument(
        "--certfile", type=Path, default=None, help="serve HTTPS (and HTTP/2) with this certificate"
    )
    http.add_argument("--keyfile", type=Path, default=None, help="the certificate's private key")
    http.add_argument(
        "--ca-certs", type=Path, default=None, help="ask clients for certificates signed by these CAs"
    )
    http.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this origin (or *) to call the workers from a browser (repeatable, as wws)",
    )
    admin = parser.add_argument_group("admin listener (metrics, health, JSON API, status page)")
    admin.add_argument(
        "--admin",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz, /api/v1/ and a status page on this address (default: off)",
    )
    admin.add_argument(
        "--admin-token",
        default=None,
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on the admin listener (better in --config than on "
        "the command line, where other users can read it)",
    )
    admin.add_argument(
        "--enable-panel",
        action="store_true",
        help="turn the admin listener on at 127.0.0.1:9090 when --admin is not given (as wws's flag)",
    )
    tenants = parser.add_argument_group("tenants")
    tenants.add_argument(
        "--tenants",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve several projects, one per [[tenant]] of this TOML file, chosen by Host header "
        "(PATH is then unused; re-read on SIGHUP)",
    )
    return parser


def _runner_count(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return int(args.workers)
    # Two runners per front end at least: with one, a slow request holds up
    # every other request of its front end.
    return max(PoolSettings().workers, 2 * (args.frontends or 1))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    workers = _runner_count(args)
    return ServerConfig(
        project=Path(args.path),
        host=args.host,
        port=args.port,
        prefix=args.prefix,
        ignore=tuple(args.ignore),
        limits=Limits(fuel=args.fuel, memory_mb=args.memory_mb, timeout_ms=args.timeout_ms),
        pool=PoolSettings(
            workers=workers,
            queue_size=args.queue_size,
            queue_timeout_s=args.queue_timeout_ms / 1000,
            max_requests=args.max_requests,
            max_runner_rss_mb=args.max_runner_rss_mb,
            demote_after_ms=args.demote_after_ms,
        ),
        max_body_bytes=args.max_body_kb << 10,
        body_timeout_s=args.body_timeout_ms / 1000,
        max_connections=args.max_connections or default_max_connections(workers),
        graceful_timeout_s=args.graceful_timeout,
        frontends=args.frontends,
        cache_dir=args.cache_dir or default_cache_dir(),
        runtimes_dir=args.runtimes_dir or default_runtimes_dir(),
        cache_max_mb=args.cache_max_mb,
        log_level=args.log_level,
        log_format=args.log_format,
        access_log=args.access_log,
        certfile=args.certfile,
        keyfile=args.keyfile,
        ca_certs=args.ca_certs,
        cors_origins=tuple(args.cors),
        watch=args.watch,
        kv_url=args.kv,
        env=tuple(args.env),
        env_files=tuple(args.env_file),
        admin=args.admin,
        admin_token=args.admin_token,
        enable_panel=args.enable_panel,
        tenants=args.tenants,
    )


def load_config(argv: list[str]) -> tuple[argparse.Namespace, ServerConfig]:
    """The command line, over the ``--config`` file when there is one.

    Raises:
        SystemExit: invalid options or an unusable configuration file (the
            reason is printed, as argparse does).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        try:
            parser.set_defaults(**read_options(args.config, parser))
        except OptionsFileError as exc:
            parser.error(str(exc))
        args = parser.parse_args(argv)
    return args, config_from_args(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["systemd-unit"]:
        from supervisor.ops.systemd_unit import main as unit_main

        return unit_main(argv[1:])
    if argv[:1] == ["runtimes"]:  # `wws-supervisor runtimes install|list|uninstall`
        from supervisor.project.runtimes import main as runtimes_main

        return runtimes_main(argv[1:])
    if argv[:1] == ["cache"]:  # `wws-supervisor cache info|prune` (serve a folder named cache as ./cache)
        from supervisor.ops.cache_admin import main as cache_main

        return cache_main(argv[1:])
    args, config = load_config(argv)
    setup_logging(config.log_level, config.log_format)
    from supervisor.project.project import StartupError
    from supervisor.server import run

    try:
        run(config, args.path, startup_output(config.log_format), argv, lambda: load_config(argv)[1])
    except StartupError as exc:
        print(error_line(str(exc), sys.stderr), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
