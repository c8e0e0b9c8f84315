"""``wws-supervisor systemd-unit [the usual options]``: print a systemd service
unit that serves this project with these options.

The unit is ``Type=notify`` (we send READY, RELOADING, STOPPING, STATUS and
watchdog pings: ``supervisor/ops/notify.py``), reloads with SIGHUP, runs as a
dynamic user with the KV database in ``StateDirectory`` and the module cache
in ``CacheDirectory``, and is hardened as far as wasmtime allows (not
``MemoryDenyWriteExecute``: the compiler writes machine code it then runs).
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from supervisor.cli import build_parser

_NAME = "wws-supervisor"
# The watchdog fires if the event loop has not pinged for this long.
_WATCHDOG_S = 30


def _has(argv: list[str], *flags: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in flags)


# Options whose value is a path: the service does not start in this folder.
_PATH_OPTIONS = ("--config", "--cache-dir", "--certfile", "--keyfile", "--ca-certs", "--env-file")


def _absolute_paths(argv: list[str]) -> list[str]:
    result: list[str] = []
    for index, arg in enumerate(argv):
        if index and argv[index - 1] in _PATH_OPTIONS:
            arg = str(Path(arg).resolve())
        elif "=" in arg and arg.split("=", 1)[0] in _PATH_OPTIONS:
            option, value = arg.split("=", 1)
            arg = f"{option}={Path(value).resolve()}"
        result.append(arg)
    return result


def _command() -> list[str]:
    # The installed script next to this Python (a venv's bin/), else on
    # PATH, else the module itself.
    beside = Path(sys.executable).with_name(_NAME)
    if beside.exists():
        return [str(beside)]
    found = shutil.which(_NAME)
    return [found] if found else [sys.executable, "-m", "supervisor"]


def render(argv: list[str], command: list[str]) -> str:
    """The unit for ``wws-supervisor <argv>``, started with ``command``."""
    args = build_parser().parse_args(argv)  # the same checks as a real start
    project = Path(args.path).resolve()
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv  # PATH comes first
    exec_args = [*command, str(project), *_absolute_paths(rest)]
    if not _has(argv, "--kv") and args.config is None:
        exec_args += ["--kv", f"sqlite:///var/lib/{_NAME}/kv.db"]
    if not _has(argv, "--cache-dir"):
        exec_args += ["--cache-dir", f"/var/cache/{_NAME}"]
    grace = int(args.graceful_timeout) + 15
    under_home = str(project).startswith(("/home/", "/root/"))
    privileged_port = 0 < args.port < 1024
    capabilities = "CAP_NET_BIND_SERVICE" if privileged_port else ""
    lines = [
        "[Unit]",
        f"Description=wws-supervisor serving {project}",
        "Documentation=https://github.com/vmware-labs/wasm-workers-server",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={shlex.join(exec_args)}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2",
        f"WatchdogSec={_WATCHDOG_S}",
        # SIGTERM to the main process only: it drains, then stops its runners;
        # whatever is left after the timeout gets SIGKILL.
        "KillMode=mixed",
        f"TimeoutStopSec={grace}",
        "DynamicUser=yes",
        f"StateDirectory={_NAME}",
        f"CacheDirectory={_NAME}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={capabilities}",
        f"AmbientCapabilities={capabilities}",
        "ProtectSystem=strict",
        # The project is read, never written; under /home it must stay visible.
        f"ProtectHome={'read-only' if under_home else 'yes'}",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateUsers=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        # Back in: a long request lowers its runner's priority, which is
        # raised back afterwards within LimitNICE (supervisor/pool/demotion.py).
        "SystemCallFilter=setpriority",
        "LimitNICE=20",
        "SystemCallArchitectures=native",
        "SystemCallErrorNumber=EPERM",
        "# Not MemoryDenyWriteExecute=yes: wasmtime compiles wasm to machine code at run time.",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    if privileged_port:
        lines.remove("PrivateUsers=yes")  # capabilities do not reach the host's ports from a user namespace
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(
            "usage: wws-supervisor systemd-unit [PATH] [options as for serving]\n\n"
            "Prints a systemd service unit that serves PATH with these options.\n"
            "Install it with:\n"
            "  wws-supervisor systemd-unit /srv/site -p 8080 \\\n"
            "    | sudo tee /etc/systemd/system/wws-supervisor.service\n"
            "  sudo systemctl daemon-reload && sudo systemctl enable --now wws-supervisor"
        )
        return 0
    print(render(argv, _command()), end="")
    return 0
