"""``--watch``: reload when a file of the project changes (for development).

watchfiles (Rust ``notify`` underneath: inotify on Linux) batches the changes
of one save, so an editor writing several files triggers one reload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


async def reload_on_change(path: Path, reload: Callable[[], Awaitable[None]]) -> None:
    """Watch ``path`` (a project folder, or a config file's folder) forever."""
    # Imported here: watchfiles (and anyio under it) costs every front end
    # about 5 MB, and only --watch needs it.
    import watchfiles

    # A WAGI/serverless config file: its folder holds the modules too.
    folder = path.parent if path.suffix == ".toml" else path
    log.info("watching %s: a change reloads the project", folder)
    async for changes in watchfiles.awatch(folder, debounce=300, step=50, recursive=True):
        names = sorted({Path(name).name for _, name in changes})
        log.info("changed: %s; reloading", ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        await reload()
